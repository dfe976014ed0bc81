"""ComfyUI 0.33.0's recorded /object_info, and copies of it with model files "installed"."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

from api.graphs.models import MODEL_FOLDERS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OBJECT_INFO_0330 = FIXTURES / "comfyui-0.33.0" / "object_info.json"
EXPORTED = FIXTURES / "exported"

# Which combo input lists the files of each folder: the catalog's table, plus the input folder.
FILE_INPUTS = {**MODEL_FOLDERS, "input": (("LoadImage", "image"),)}


@cache
def _recorded() -> dict:
    info = json.loads(OBJECT_INFO_0330.read_text())
    info.pop("_source", None)
    return info


def object_info_0330(**files: list[str]) -> dict:
    """The recorded schemas, with the given files listed (e.g. loras=["a.safetensors"])."""
    info = copy.deepcopy(_recorded())
    for folder, names in files.items():
        for class_type, input_name in FILE_INPUTS[folder]:
            spec = info[class_type]["input"]["required"][input_name]
            if spec[0] == "COMBO":
                spec[1]["options"] = list(names)
            else:
                spec[0] = list(names)
    return info


def exported(name: str) -> dict:
    return json.loads((EXPORTED / f"{name}.json").read_text())
