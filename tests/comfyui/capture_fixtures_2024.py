"""Record real responses of the March-2024 ComfyUI as fixtures for fake-ComfyUI unit tests.

Run from the repository root (needs requests + websocket-client, i.e. requirements.txt)::

    python -m tests.comfyui.capture_fixtures_2024 [--out tests/fixtures/comfyui-2024]

It starts the ComfyUI given by ``scripts/comfyui-test-env.sh`` (COMFYUI_DIR unset = the 2024
copy) with ``tests.support.comfyui.ComfyUIProcess``, drives it over HTTP and WebSocket, and
writes the files listed in the fixture folder's README.md. Bodies are stored byte-for-byte as
the server sent them; every request body that was sent is kept under ``requests/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import websocket

from tests.support.comfyui import REPO_ROOT, ComfyUIProcess, comfyui_env

DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "comfyui-2024"
DEFAULT_FLUX = Path("/work/shared/comfyui/flux2_turbo_lora_t2i.api.json")
WAIT = 60.0  # upper bound for any single wait on the server


def sleep_graph(color: int, seed: int, steps=5, seconds_per_step=0.2, fail_at_step=-1) -> dict:
    """EmptyImage -> SidecarSleepProgress -> SaveImage.

    A distinct ``color`` per capture keeps EmptyImage out of ComfyUI's cache, so each
    recording starts from ``execution_cached: {"nodes": []}`` like a fresh server would.
    """
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color},
        },
        "2": {
            "class_type": "SidecarSleepProgress",
            "inputs": {
                "image": ["1", 0],
                "steps": steps,
                "seconds_per_step": seconds_per_step,
                "fail_at_step": fail_at_step,
                "seed": seed,
            },
        },
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "sidecar/sleep"},
        },
    }


# Same graphs as /work/shared/comfyui/cpu-test-workflows/07, 08 and 09 (inlined so that the
# capture does not depend on that folder).
WORKFLOW_07_MIN = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "sidecar/bad"},
    },
}
WORKFLOW_08_UNKNOWN = {
    "1": {"class_type": "NoSuchNode", "inputs": {}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}
WORKFLOW_09_NO_OUTPUTS = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    }
}
SD15_MISSING_CHECKPOINT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1},
    },
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "model": ["4", 0],
            "seed": 42,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
            "denoise": 1.0,
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd15"}},
}


class WsRecorder:
    """Keeps every text frame one WebSocket client receives, verbatim."""

    def __init__(self, comfy: ComfyUIProcess, client_id: str) -> None:
        self.client_id = client_id
        self.frames: list[str] = []
        self.binary_frames = 0
        self.ws = websocket.create_connection(f"{comfy.ws_url}?clientId={client_id}", timeout=5)

    def _recv(self, timeout: float) -> dict | None:
        self.ws.settimeout(timeout)
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            text = data.decode("utf-8")
            assert "\n" not in text  # one frame per JSONL line
            self.frames.append(text)
            return json.loads(text)
        self.binary_frames += 1
        return {}

    def until(self, predicate, timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._recv(left)
            if msg and predicate(msg):
                return msg
        raise TimeoutError(f"{self.client_id}: expected frame not received; got {self.frames}")

    def drain(self, quiet: float = 0.5) -> None:
        """Keep reading until the server has been silent for ``quiet`` seconds (after done)."""
        while self._recv(quiet) is not None:
            pass

    def close(self) -> None:
        self.ws.close()

    def save(self, path: Path) -> None:
        path.write_text("".join(f + "\n" for f in self.frames), encoding="utf-8")


def is_done(prompt_id: str):
    def check(msg: dict) -> bool:
        data = msg.get("data", {})
        return (
            msg.get("type") == "executing"
            and data.get("node") is None
            and data.get("prompt_id") == prompt_id
        )

    return check


def is_progress(prompt_id: str):
    def check(msg: dict) -> bool:
        return msg.get("type") == "progress" and msg["data"].get("prompt_id") == prompt_id

    return check


class Capturer:
    def __init__(self, comfy: ComfyUIProcess, out: Path) -> None:
        self.comfy = comfy
        self.out = out
        self.http = requests.Session()
        self.http.trust_env = False  # never send loopback traffic through a proxy
        self.observations: dict[str, object] = {}

    # -- storage -------------------------------------------------------------------------------

    def save_body(self, name: str, resp: requests.Response) -> None:
        """The response body exactly as received (all of these are JSON)."""
        resp.raise_for_status()
        (self.out / name).write_bytes(resp.content)

    def save_exchange(self, name: str, resp: requests.Response) -> None:
        """Status + content type + body, for non-2xx answers.

        A JSON body is stored parsed (aiohttp serialises with plain json.dumps, so
        ``json.dumps(body)`` gives back the exact bytes); anything else as the raw text.
        """
        try:
            body = resp.json()
            assert json.dumps(body).encode() == resp.content
        except ValueError:
            body = resp.text
        record = {
            "request": f"{resp.request.method} {resp.request.path_url}",
            "status": resp.status_code,
            "content_type": resp.headers.get("Content-Type"),
            "body": body,
        }
        (self.out / name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    def save_request(self, name: str, body: dict) -> None:
        path = self.out / "requests" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")

    # -- HTTP helpers --------------------------------------------------------------------------

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.comfy.url + path, timeout=10)

    def post(self, path: str, body: dict | None = None, **kwargs) -> requests.Response:
        return self.http.post(self.comfy.url + path, json=body, timeout=10, **kwargs)

    def submit(self, request_name: str, graph: dict, client_id: str) -> requests.Response:
        # The sidecar sends its own prompt_id (as new servers accept); recording whether the
        # server honours it is part of the point.
        body = {"prompt": graph, "client_id": client_id, "prompt_id": str(uuid.uuid4())}
        self.save_request(request_name, body)
        resp = self.post("/prompt", body)
        if resp.ok:
            self.observations.setdefault("prompt_id_honoured", [])
            self.observations["prompt_id_honoured"].append(
                resp.json()["prompt_id"] == body["prompt_id"]
            )
        return resp

    def wait_idle(self) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            queue = self.get("/queue").json()
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            time.sleep(0.1)  # polling interval
        raise TimeoutError("ComfyUI queue did not drain")

    # -- scenarios -----------------------------------------------------------------------------

    def idle_state(self) -> None:
        self.save_body("system_stats.json", self.get("/system_stats"))
        self.save_body("queue_idle.json", self.get("/queue"))
        self.save_body("history_not_found.json", self.get(f"/history/{uuid.uuid4()}"))

    def run_sleep(self, kind: str, graph: dict, interrupt: bool = False) -> str:
        """Submit with a WS client connected first; record frames until the done signal."""
        client_id = f"fixture-{kind}"
        rec = WsRecorder(self.comfy, client_id)
        try:
            resp = self.submit(f"prompt_{kind}.request.json", graph, client_id)
            resp.raise_for_status()
            if kind == "success":
                self.save_body("prompt_ok.json", resp)
            prompt_id = resp.json()["prompt_id"]
            if interrupt:
                # Interrupt only once the node is really running (first progress event).
                rec.until(is_progress(prompt_id))
                body = {"prompt_id": prompt_id}
                self.save_request("interrupt.request.json", body)
                self.observations["interrupt_status"] = self.post("/interrupt", body).status_code
            rec.until(is_done(prompt_id))
            rec.drain()
        finally:
            rec.close()
        rec.save(self.out / f"ws_events_{kind}.jsonl")
        self.observations[f"binary_frames_{kind}"] = rec.binary_frames
        self.save_body(f"history_{kind}.json", self.get(f"/history/{prompt_id}"))
        return prompt_id

    def reconnect_mid_run(self) -> None:
        """Frames a client gets when it reconnects (same clientId) while its prompt runs."""
        first = WsRecorder(self.comfy, "fixture-reconnect")
        try:
            graph = sleep_graph(0x000044, 4, seconds_per_step=0.5)
            resp = self.submit("prompt_reconnect.request.json", graph, first.client_id)
            prompt_id = resp.json()["prompt_id"]
            first.until(is_progress(prompt_id))
        finally:
            first.close()
        second = WsRecorder(self.comfy, "fixture-reconnect")
        try:
            second.until(is_done(prompt_id))
            second.drain()
        finally:
            second.close()
        second.save(self.out / "ws_events_reconnect.jsonl")

    def queue_running(self) -> None:
        running = self.submit(
            "queue_running_a.request.json", sleep_graph(0x0000AA, 31, 5, 1.0), "fixture-queue"
        )
        pending = self.submit(
            "queue_running_b.request.json", sleep_graph(0x0000BB, 32, 5, 1.0), "fixture-queue"
        )
        running_id, pending_id = running.json()["prompt_id"], pending.json()["prompt_id"]
        deadline = time.monotonic() + WAIT
        while True:
            resp = self.get("/queue")
            queue = resp.json()
            if len(queue["queue_running"]) == 1 and len(queue["queue_pending"]) == 1:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"never saw 1 running + 1 pending: {queue}")
            time.sleep(0.05)  # polling interval
        self.save_body("queue_running.json", resp)
        self.save_body("history_while_running.json", self.get(f"/history/{running_id}"))
        self.save_body("prompt_get_busy.json", self.get("/prompt"))
        self.post("/queue", {"delete": [pending_id]}).raise_for_status()
        self.post("/interrupt").raise_for_status()
        self.wait_idle()

    def interrupt_ignores_prompt_id(self) -> None:
        """Does /interrupt with someone else's prompt_id still stop the running prompt?"""
        rec = WsRecorder(self.comfy, "fixture-foreign-interrupt")
        try:
            graph = sleep_graph(0x0000CC, 41, 5, 1.0)
            resp = self.submit("foreign_interrupt.request.json", graph, rec.client_id)
            prompt_id = resp.json()["prompt_id"]
            rec.until(is_progress(prompt_id))
            self.post("/interrupt", {"prompt_id": str(uuid.uuid4())}).raise_for_status()
            rec.until(is_done(prompt_id))
        finally:
            rec.close()
        entry = self.get(f"/history/{prompt_id}").json()[prompt_id]
        events = [m[0] for m in entry["status"]["messages"]]
        self.observations["interrupt_with_foreign_prompt_id_interrupts"] = (
            "execution_interrupted" in events
        )
        # Body that is not JSON at all.
        self.observations["interrupt_non_json_body_status"] = self.http.post(
            self.comfy.url + "/interrupt", data=b"not json", timeout=10
        ).status_code

    def validation_errors(self, flux_graph: dict) -> None:
        cases = [
            ("prompt_missing_models.json", flux_graph),
            ("prompt_sd15_missing_model.json", SD15_MISSING_CHECKPOINT),
            ("prompt_unknown_node.json", WORKFLOW_08_UNKNOWN),
            ("prompt_validation_min.json", WORKFLOW_07_MIN),
            ("prompt_no_outputs.json", WORKFLOW_09_NO_OUTPUTS),
        ]
        for name, graph in cases:
            resp = self.submit(name.replace(".json", ".request.json"), graph, "fixture-validation")
            self.save_exchange(name, resp)
        body = {"client_id": "fixture-validation"}
        self.save_request("prompt_no_prompt.request.json", body)
        self.save_exchange("prompt_no_prompt.json", self.post("/prompt", body))
        # No /api prefix aliases on this server.
        body = {"prompt": sleep_graph(0x0000DD, 51), "client_id": "fixture-validation"}
        self.save_request("api_prefix_prompt.request.json", body)
        self.save_exchange("api_prefix_prompt.json", self.post("/api/prompt", body))
        self.save_exchange("api_prefix_system_stats.json", self.get("/api/system_stats"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--flux", type=Path, default=DEFAULT_FLUX, help="FLUX.2 API graph")
    args = parser.parse_args()
    flux_graph = json.loads(args.flux.read_text())
    args.out.mkdir(parents=True, exist_ok=True)

    python, comfy_dir = comfyui_env()
    base = Path(tempfile.mkdtemp(prefix="comfy-capture-"))
    comfy = ComfyUIProcess(python, comfy_dir, base)
    try:
        comfy.start()
        print(f"ComfyUI ready in {comfy.startup_seconds:.1f}s at {comfy.url}", file=sys.stderr)
        cap = Capturer(comfy, args.out)
        cap.idle_state()
        cap.run_sleep("success", sleep_graph(0x000011, 1))
        cap.run_sleep("error", sleep_graph(0x000022, 2, fail_at_step=2))
        cap.run_sleep("interrupted", sleep_graph(0x000033, 3, seconds_per_step=1.0), interrupt=True)
        cap.reconnect_mid_run()
        cap.queue_running()
        cap.interrupt_ignores_prompt_id()
        cap.validation_errors(flux_graph)
        meta = {
            "comfyui_dir": str(comfy_dir),
            "argv": comfy.command()[1:],
            "startup_seconds": round(comfy.startup_seconds, 2),
            "observations": cap.observations,
        }
        (args.out / "capture_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta, indent=2))
    except BaseException:
        print(f"capture failed; ComfyUI log kept at {comfy.log_path}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(base, ignore_errors=True)
    finally:
        comfy.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
