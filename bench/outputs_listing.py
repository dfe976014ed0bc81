"""GET /api/outputs?limit=50 with 100,000 files in the output tree, under a real gunicorn.

Prints the median and p99 latency of: the first request (cold index), steady requests, and
requests right after a new image appears (the common case while jobs complete). Run with
`make bench-outputs` (or `python -m bench.outputs_listing --files 100000`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from tests.support.sidecar import SidecarProcess

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def make_tree(root: Path, files: int, per_dir: int) -> None:
    """Most files in the root (as ComfyUI writes them), the rest in subfolders."""
    now = time.time()
    for i in range(files):
        folder = root if i % 4 else root / f"sub{i % 50:02d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"Flux2_Turbo_{i:06d}_.png"
        path.write_bytes(PNG)
        os.utime(path, (now - files + i, now - files + i))


def timed(session: requests.Session, url: str) -> float:
    start = time.perf_counter()
    response = session.get(url, timeout=60)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    assert len(response.json()["images"]) == 50
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "output"
        out.mkdir()
        started = time.perf_counter()
        make_tree(out, args.files, 2000)
        print(f"created {args.files} files in {time.perf_counter() - started:.1f}s")
        sidecar = SidecarProcess(
            {
                "WORKSPACE_PATH": str(root / "ws"),
                "COMFYUI_OUTPUT_DIR": str(out),
                "COMFYUI_PORT": "9",  # nothing listens: outputs never need ComfyUI
                "TRACKER_ENABLED": "false",
                "GUNICORN_WORKERS": "1",
                "LOG_LEVEL": "warning",
            },
            root / "gunicorn.log",
        ).start()
        try:
            session = requests.Session()
            session.trust_env = False
            url = f"{sidecar.url}/api/outputs?limit=50"
            cold = timed(session, url)
            steady = [timed(session, url) for _ in range(args.requests)]
            after_new = []
            for i in range(20):
                (out / f"new_{i:03d}.png").write_bytes(PNG)
                time.sleep(0.6)  # let the index's 0.5 s re-check interval pass (not a sync)
                after_new.append(timed(session, url))
            quantile = statistics.quantiles
            print(f"{'measure':<32}{'p50 ms':>10}{'p99 ms':>10}")
            print(f"{'cold (first request)':<32}{cold:>10.1f}{'':>10}")
            print(
                f"{'steady':<32}{statistics.median(steady):>10.1f}"
                f"{quantile(steady, n=100)[98]:>10.1f}"
            )
            print(
                f"{'right after a new image':<32}{statistics.median(after_new):>10.1f}"
                f"{max(after_new):>10.1f}"
            )
        finally:
            sidecar.stop()


if __name__ == "__main__":
    main()
