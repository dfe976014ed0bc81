"""`make comfyui`: a CPU-only ComfyUI without models, for trying the sidecar on any machine.

It listens on COMFYUI_PORT and writes into the sidecar's COMFYUI_OUTPUT_DIR, so `make run` in
another terminal serves its images. FLUX.2 cannot run on it; the pipeline_check workflow can.
"""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from api.config import Config
from tests.support.comfyui import ComfyUIProcess, comfyui_env


def main() -> int:
    config = Config.from_env()
    python, comfy_dir = comfyui_env()
    base = Path(tempfile.mkdtemp(prefix="sidecar-comfyui-"))
    config.comfyui_output_dir.mkdir(parents=True, exist_ok=True)
    (base / "output").symlink_to(config.comfyui_output_dir)
    process = ComfyUIProcess(python, comfy_dir, base, port=config.comfyui_port)
    print(f"starting ComfyUI (CPU) on {process.url}, output in {config.comfyui_output_dir}")
    process.start()
    # Held until sigwait below takes them: unblocked, SIGTERM would end this process at once,
    # without stopping ComfyUI (its own process group) or removing its folder. Blocked only
    # now: ComfyUI would inherit the mask and ignore its own SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print(f"ComfyUI is up ({process.startup_seconds:.0f}s); log: {process.log_path}. Ctrl-C stops")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        process.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
