"""Processes the integration tests start beside the sidecar: a webhook receiver and an
S3-compatible server (moto's standalone server, installed from PyPI by requirements-dev.txt).
Each is a real process on 127.0.0.1, started and stopped by the tests like ComfyUI is."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.comfyui import REPO_ROOT, free_port
from tests.support.sidecar import wait_for

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Process:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def _answers(self, path: str) -> bool:
        if self._proc.poll() is not None:
            raise AssertionError(f"{type(self).__name__} exited")
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{self.port}{path}", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answers, whatever it thinks of the path
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


class WebhookReceiver(_Process):
    """tests/support/webhook_receiver.py as a process; `requests()` reads its log."""

    def __init__(self, root: Path, secret: str, fail_first: int = 0) -> None:
        super().__init__(root)
        self.secret = secret
        self.fail_first = fail_first
        self.log_path = root / "requests.jsonl"

    def url(self, path: str = "/hook", host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        self._spawn(
            [
                sys.executable,
                "-m",
                "tests.support.webhook_receiver",
                "--port",
                str(self.port),
                "--secret",
                self.secret,
                "--fail-first",
                str(self.fail_first),
                "--log",
                str(self.log_path),
            ],
            "receiver",
        )
        # A GET is answered 501 by the receiver: it listens.
        wait_for(lambda: self._answers("/"), 20, 0.05, "the webhook receiver")
        return self

    def requests(self) -> list[dict]:
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


class S3Server(_Process):
    """moto's standalone S3 server (`moto_server`), with one bucket made for the sidecar."""

    def __init__(self, root: Path, bucket: str = "sidecar-test") -> None:
        super().__init__(root)
        self.bucket = bucket

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        server = Path(sys.executable).with_name("moto_server")
        self._spawn([str(server), "-H", "127.0.0.1", "-p", str(self.port)], "moto")
        wait_for(lambda: self._answers("/"), 60, 0.1, "moto_server")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        )

    def sidecar_env(self) -> dict[str, str]:
        """Settings for a sidecar that uploads here; any credentials work with moto, and the
        sidecar gets them the usual AWS way (the environment)."""
        return {
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.url,
            "S3_REGION": "us-east-1",
            "S3_PREFIX": "outputs/",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
