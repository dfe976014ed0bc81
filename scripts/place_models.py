#!/usr/bin/env python3
"""Put the model files a workflow needs where the compose stack's ComfyUI looks for them.

    python3 scripts/place_models.py DOWNLOADS [--workspace ./workspace] [--workflow NAME]

Reads the workflow's graph (workflows/NAME.json), finds each model file it loads anywhere
under DOWNLOADS, and places it in WORKSPACE/ComfyUI/models/<folder>/: a hard link when both
are on one file system (instant, no extra space), a copy otherwise. Files already in place are
left alone. Exits 1 naming every file it could not find. Standard library only, so it runs
with the host's python3 before anything else is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Loader inputs whose values are model files, and the models/ folder each one reads. The same
# table as api/comfyui.py's MODEL_INPUT_FOLDERS (a unit test keeps them equal); copied so this
# script needs nothing but Python.
MODEL_INPUT_FOLDERS = {
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "vae_name": "vae",
    "lora_name": "loras",
    "ckpt_name": "checkpoints",
    "model_name": "upscale_models",
    "control_net_name": "controlnet",
}


def required_models(graph: dict) -> list[tuple[str, str]]:
    """(folder, file) for every model file the API-format graph loads, in graph order."""
    found: list[tuple[str, str]] = []
    for node in graph.values():
        for name, value in (node.get("inputs") or {}).items():
            folder = MODEL_INPUT_FOLDERS.get(name)
            if folder and isinstance(value, str) and (folder, value) not in found:
                found.append((folder, value))
    return found


def find(source: Path, filename: str) -> Path | None:
    direct = source / filename
    if direct.is_file():
        return direct
    return next((p for p in sorted(source.rglob(filename)) if p.is_file()), None)


def place(source_file: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source_file, target)
        return "linked"
    except OSError:
        shutil.copy2(source_file, target)
        return "copied"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("downloads", type=Path, help="folder with the downloaded model files")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=REPO_ROOT / "workspace",
        help="the compose stack's WORKSPACE_DIR (default: ./workspace)",
    )
    parser.add_argument("--workflow", default="flux2_turbo_default")
    args = parser.parse_args(argv)

    graph = json.loads((REPO_ROOT / "workflows" / f"{args.workflow}.json").read_text())
    models_dir = args.workspace / "ComfyUI" / "models"
    missing = []
    for folder, filename in required_models(graph):
        target = models_dir / folder / filename
        if target.is_file():
            print(f"in place  models/{folder}/{filename}")
            continue
        source_file = find(args.downloads, filename)
        if source_file is None:
            missing.append(f"models/{folder}/{filename}")
            continue
        how = place(source_file, target)
        print(f"{how:<9} models/{folder}/{filename}  (from {source_file})")
    (args.workspace / "ComfyUI" / "output").mkdir(parents=True, exist_ok=True)
    if missing:
        print(f"not found under {args.downloads}: " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"all model files of {args.workflow} are in {models_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
