"""What an output folder full of images costs a real ComfyUI per job, and OUTPUT_SUBFOLDER.

ComfyUI numbers each new image by listing the whole folder it saves into
(`folder_paths.get_save_image_path`, in every version since 2023), so the cost of a save grows with
the images kept there, and the sidecar keeps them (PURGE_FILES is off by default). This fills a
CPU ComfyUI's output folder with `files` empty files named as the shipped pipeline_check template
names its images, starts two sidecars on that ComfyUI, one saving where the template says (the
folder that holds the files) and one with OUTPUT_SUBFOLDER=%Y-%m-%d (a folder a day, empty at
first), and sends `jobs` jobs with `?wait=` to each, blocks of each taking turns over `rounds`.
It prints, for each: the median time from the request to the finished job and the image in
hand, and ComfyUI's CPU time per job. Run with `python -m bench.comfyui_saves` (part of `make
bench`); the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.clients import SidecarClient
from bench.load import cpu_seconds
from bench.stack import bench_env
from tests.integration.conftest import start_sidecar
from tests.support.comfyui import ComfyUIProcess, comfyui_env

PREFIX = "PipelineCheck"  # the shipped pipeline_check template's filename_prefix
SUBFOLDER = "%Y-%m-%d"


def fill(folder: Path, files: int) -> None:
    """`files` empty files named as ComfyUI names the template's images."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, files + 1):
        os.close(os.open(folder / f"{PREFIX}_{n:05d}_.png", os.O_CREAT | os.O_WRONLY, 0o644))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000, help="images already kept")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks of each sidecar")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="comfyui-saves-"))
    python, comfyui_dir = comfyui_env()
    comfy = ComfyUIProcess(python, comfyui_dir, root / "comfyui")
    started = time.perf_counter()
    fill(comfy.output_dir, args.files)
    print(f"{args.files} images in ComfyUI's output folder ({time.perf_counter() - started:.1f}s)")
    comfy.start()
    sidecars = {}
    try:
        for name, folder in (
            ("as the template says", ""),
            (f"OUTPUT_SUBFOLDER={SUBFOLDER}", SUBFOLDER),
        ):
            env = {**bench_env(), "OUTPUT_SUBFOLDER": folder}
            sidecars[name] = start_sidecar(
                root / f"sidecar{len(sidecars)}", comfy, comfy.port, **env
            )
        clients = {name: SidecarClient(car.url, waits=True) for name, car in sidecars.items()}
        for client in clients.values():  # warm-up: connections, first graph, caches
            for _ in range(3):
                client.run_one()
        times: dict[str, list[float]] = {name: [] for name in clients}
        cpu: dict[str, list[float]] = {name: [] for name in clients}
        for turn in range(args.rounds):
            order = list(clients) if turn % 2 == 0 else list(reversed(clients))
            for name in order:
                before = cpu_seconds([comfy.pid])
                for _ in range(args.jobs):
                    begun = time.perf_counter()
                    clients[name].run_one()
                    times[name].append((time.perf_counter() - begun) * 1000)
                cpu[name].append((cpu_seconds([comfy.pid]) - before) / args.jobs * 1000)
        print(f"{'images saved':<36}{'end-to-end p50 ms':>20}{'ComfyUI CPU ms/job':>20}")
        for name in clients:
            print(f"{name:<36}{statistics.median(times[name]):>20.1f}"
                  f"{statistics.median(cpu[name]):>20.1f}")  # fmt: skip
        kept = sum(1 for _ in os.scandir(comfy.output_dir))
        print(f"(the output folder's top level held {kept} entries at the end)")
    finally:
        for car in sidecars.values():
            car.stop()
        comfy.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
