"""What one GET /queue costs a real ComfyUI, by how many prompts wait in it.

ComfyUI answers /queue with every waiting prompt whole, deep-copied under the lock its own runs
take (`PromptQueue.get_current_queue`), so the cost grows with the queue and the size of its
graphs. This fills a CPU ComfyUI with one long run and `depth` waiting prompts the size of the
FLUX.2 template (the model-free test graph padded with nodes that never run; ComfyUI keeps the
prompt whole), then reads /queue `reads` times and prints, per read: the answer's size, the
wall time, ComfyUI's CPU time and the reader's (parsing the answer). Run with
`python -m bench.comfyui_queue` (part of `make bench`); the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import requests

from bench.load import cpu_seconds
from tests.support.comfyui import ComfyUIProcess, comfyui_env

TEMPLATE = Path(__file__).resolve().parent.parent / "workflows" / "flux2_turbo_default.json"
TIMEOUT = 60


def graph(seconds_per_step: float, steps: int, size: int = 0) -> dict:
    """The sleep test graph; padded with unconnected nodes to `size` bytes of JSON."""
    nodes = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                     "color": 1}},
        "2": {"class_type": "SidecarSleepProgress", "inputs": {"image": ["1", 0], "steps": steps,
              "seconds_per_step": seconds_per_step, "fail_at_step": -1, "seed": time.time_ns()}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }  # fmt: skip
    n = 10
    while len(json.dumps(nodes)) < size:
        nodes[str(n)] = {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": n},
            "_meta": {"title": f"padding {n}"},
        }
        n += 1
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", default="10,100,500", help="waiting prompts per measure")
    parser.add_argument("--reads", type=int, default=40, help="GET /queue per measure")
    args = parser.parse_args()
    size = len(json.dumps(json.loads(TEMPLATE.read_text())))
    python, comfyui_dir = comfyui_env()
    root = Path(tempfile.mkdtemp(prefix="comfyui-queue-"))
    comfy = ComfyUIProcess(python, comfyui_dir, root / "comfy")
    comfy.start()
    base, http = f"http://127.0.0.1:{comfy.port}", requests.Session()
    try:
        # One run that outlasts the measures: the others wait behind it.
        http.post(f"{base}/prompt", json={"prompt": graph(0.5, 1000)}, timeout=TIMEOUT)
        print(f"waiting prompts of {size} bytes of JSON (the FLUX.2 template's size)")
        for depth in (int(d) for d in args.depths.split(",")):
            waiting = len(http.get(f"{base}/queue", timeout=TIMEOUT).json()["queue_pending"])
            for _ in range(depth - waiting):
                answer = http.post(
                    f"{base}/prompt", json={"prompt": graph(0, 1, size)}, timeout=TIMEOUT
                )
                answer.raise_for_status()
            answer = http.get(f"{base}/queue", timeout=TIMEOUT)
            ours, theirs = time.thread_time(), cpu_seconds([comfy.pid])
            started = time.perf_counter()
            for _ in range(args.reads):
                http.get(f"{base}/queue", timeout=TIMEOUT).json()
            wall = (time.perf_counter() - started) / args.reads
            theirs = (cpu_seconds([comfy.pid]) - theirs) / args.reads
            ours = (time.thread_time() - ours) / args.reads
            print(
                f"{depth:5d} waiting: {len(answer.content) / 1000:7.0f} KB, {wall * 1000:6.1f} ms"
                f" wall, ComfyUI {theirs * 1000:5.1f} ms CPU, reader {ours * 1000:5.1f} ms CPU"
            )
    finally:
        http.post(f"{base}/queue", json={"clear": True}, timeout=TIMEOUT)
        http.post(f"{base}/interrupt", timeout=TIMEOUT)
        comfy.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
