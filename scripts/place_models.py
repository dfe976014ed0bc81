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
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_model_table():
    """api/graphs/models.py, the one table of model folders, loaded by its path: importing it
    as api.graphs.models would import the whole app, and this script needs nothing but Python."""
    path = REPO_ROOT / "api" / "graphs" / "models.py"
    spec = importlib.util.spec_from_file_location("sidecar_model_folders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loader inputs whose values are model files, and the models/ folder each one reads.
MODEL_INPUT_FOLDERS = _load_model_table().INPUT_FOLDERS


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
