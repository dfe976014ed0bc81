"""`make run` (stack/run.py) for a newcomer: any user, a fresh machine, no ComfyUI of theirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stack.run import choose_workspace, read_dotenv, with_dotenv
from tests.support import containers
from tests.support.comfyui import free_port
from tests.support.compose import REPO
from tests.support.containers import Container
from tests.support.sidecar import wait_for

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(url: str) -> int | None:
    try:
        with _NO_PROXY.open(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class MakeRun:
    """`python -m stack.run` as `make run` starts it, in `cwd` (the user's checkout)."""

    def __init__(self, cwd: Path, env: dict[str, str], launcher: list[str] = ()) -> None:
        self.log = cwd / "make-run.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*launcher, sys.executable, "-m", "stack.run"],
                cwd=cwd,
                env={
                    "PATH": os.environ["PATH"],
                    "HOME": os.environ.get("HOME", "/"),
                    "PYTHONPATH": str(REPO),
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)


def test_settings_come_from_the_environment_then_dotenv(tmp_path):
    (tmp_path / ".env").write_text(
        "# comment\nLOG_LEVEL=debug\nAPI_KEYS='quoted-key-0123456789'\nHTTP_PORT=80\n"
    )
    env = with_dotenv({"LOG_LEVEL": "warning"}, read_dotenv(tmp_path / ".env"))
    assert env == {"LOG_LEVEL": "warning", "API_KEYS": "quoted-key-0123456789"}
    assert choose_workspace({"WORKSPACE_PATH": "/data"}, tmp_path) == (
        Path("/data"),
        "WORKSPACE_PATH",
    )


@pytest.mark.skipif(containers.available() is not None, reason=str(containers.available()))
def test_any_user_gets_a_workspace_in_the_checkout_when_workspace_is_not_writable():
    """The sidecar's uid stands for a user without root: /workspace cannot be made."""
    if Path("/workspace").exists() and os.access("/workspace", os.W_OK):
        pytest.skip("/workspace exists and is writable here")
    checkout = Path(tempfile.mkdtemp(prefix="newcomer-"))
    os.chown(checkout, 10001, 10001)
    checkout.chmod(0o755)
    port = free_port()
    user = Container("newcomer", {}, "127.0.0.1", {}, checkout / ".container")
    run = MakeRun(
        checkout,
        # COMFYUI_PORT set (to nothing that answers): no CPU ComfyUI is started.
        {"API_PORT": str(port), "COMFYUI_PORT": str(free_port()), "HOME": str(checkout)},
        user.launcher("10001:10001"),
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health") == 200, 60, 0.2, "gunicorn")
        first = run.text().splitlines()[0]
        assert str(checkout / ".workspace") in first and "not writable" in first, first
        database = checkout / ".workspace" / "sidecar" / "jobs.sqlite3"
        assert database.stat().st_uid == 10001
        assert "CPU ComfyUI" not in run.text()
    finally:
        assert run.stop() == 0, run.text()
        subprocess.run(["rm", "-rf", str(checkout)], check=True)


@pytest.mark.integration
def test_with_no_comfyui_configured_make_run_starts_and_stops_its_own(tmp_path):
    if answers("http://127.0.0.1:8188/system_stats") is not None:
        pytest.skip("something answers on localhost:8188 already")
    port = free_port()
    run = MakeRun(tmp_path, {"API_PORT": str(port), "WORKSPACE_PATH": str(tmp_path / "ws")})
    try:
        head = wait_for(
            lambda: len(run.text().splitlines()) >= 2 and run.text().splitlines()[:2],
            30,
            0.1,
            "the first lines",
        )
        assert "starting the project's CPU ComfyUI" in head[1], head
        # The page's Generate works: the sidecar sees a ComfyUI, and runs the model-free job.
        wait_for(
            lambda: answers(f"http://127.0.0.1:{port}/api/health") == 200,
            120,
            0.5,
            "the sidecar to see the CPU ComfyUI",
        )
    finally:
        assert run.stop() == 0, run.text()
    assert answers("http://127.0.0.1:8188/system_stats") is None  # stopped with it
    assert "stopping the CPU ComfyUI" in run.text()


def final_status(api: str, job_id: str) -> dict | None:
    """The job's status once it is final (a long poll: it answers when the job changes)."""
    with _NO_PROXY.open(f"{api}/api/status/{job_id}?wait=10", timeout=30) as response:
        status = json.load(response)
    return status if status["status"] in ("completed", "failed", "cancelled") else None


@pytest.mark.integration
def test_make_stack_cluster_runs_two_nodes_behind_one_api_and_stops_on_ctrl_c(tmp_path):
    http, comfy_ui = free_port(), free_port()
    log = tmp_path / "stack-cluster.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.cluster"],
            cwd=REPO,
            env={
                "PATH": os.environ["PATH"],
                "HOME": os.environ.get("HOME", "/"),
                "STACK_HTTP_PORT": str(http),
                "STACK_COMFYUI_UI_PORT": str(comfy_ui),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "Ctrl-C stops" in log.read_text(), 240, 0.2, "the cluster to start")
        api = f"http://127.0.0.1:{http}"
        nodes = {line.split(":")[1].strip(): line.split()[3].rstrip(",") for line in log.read_text()
                 .splitlines() if line.startswith("stack-cluster: node-")}  # fmt: skip
        assert set(nodes) == {"node-1", "node-2"}, log.read_text()
        ran = set()
        # Submitted one after another, so that nginx's round robin sends them to both nodes
        # (polls in between would make which node gets the next one a matter of timing).
        job_ids = []
        for color in range(4):
            body = {"prompt": "p", "workflow": "pipeline_check", "width": 64, "height": 64,
                    "color": color}  # fmt: skip
            request = urllib.request.Request(
                f"{api}/api/generate",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with _NO_PROXY.open(request, timeout=30) as response:
                job_ids.append(json.load(response)["job_id"])
        for job_id in job_ids:
            final = wait_for(lambda j=job_id: final_status(api, j), 90, 0.05, "the job to end")
            assert final["status"] == "completed", final
            assert final["output_image"].startswith(f"{final['node']}/")
            assert answers(f"{api}{final['image_url']}") == 200
            ran.add(final["node"])
        assert ran == {"node-1", "node-2"}  # nginx balances, and each node claims what it took
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        code = proc.wait(60)
    assert code == 0, log.read_text()
    for url in nodes.values():
        assert answers(f"{url}/health") is None  # every node stopped with it
    assert answers(f"{api}/api/health") is None
