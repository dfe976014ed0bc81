"""What the GPU host looks like through ComfyUI: devices, versions, RAM, model files."""

from __future__ import annotations

from api import comfyui
from api.graphs.catalog import Catalog
from api.graphs.models import MODEL_FOLDERS

MB = 1024 * 1024
# Names VAELoader offers that are not files.
NOT_FILES = {"pixel_space"}


def _mb(value) -> float | None:
    return None if value is None else round(value / MB, 1)


def devices(stats: dict) -> list[dict]:
    out = []
    for device in stats.get("devices") or []:
        out.append(
            {
                "name": device.get("name"),
                "type": device.get("type"),
                "index": device.get("index"),
                "vram": _mb(device.get("vram_total")),
                "vram_free": _mb(device.get("vram_free")),
                "vram_used": _mb((device.get("vram_total") or 0) - (device.get("vram_free") or 0)),
                "vram_bytes": device.get("vram_total"),
                "vram_free_bytes": device.get("vram_free"),
                "torch_vram_bytes": device.get("torch_vram_total"),
                "torch_vram_free_bytes": device.get("torch_vram_free"),
            }
        )
    return out


def models(client: comfyui.ComfyUIClient) -> dict[str, list[str] | None]:
    """Files per models/ folder, from the loaders' choices in the shared cached /object_info;
    None for a folder this ComfyUI has no loader for."""
    catalog = Catalog(client)
    info = catalog.info()
    found: dict[str, list[str] | None] = {}
    for folder in MODEL_FOLDERS:
        files = catalog.files(folder, info)
        found[folder] = None if files is None else sorted(set(files) - NOT_FILES)
    return found


def template_readiness(workflows, found: dict[str, list[str] | None]) -> dict:
    """For each workflow: are the model files its manifest lists present?"""
    report = {}
    for name in workflows.names():
        needs = workflows.get(name).models
        missing = [
            m
            for m in needs
            if found.get(m.get("folder")) is not None and m.get("file") not in found[m["folder"]]
        ]
        unknown = [m for m in needs if found.get(m.get("folder")) is None]
        report[name] = {
            "ready": not missing and not unknown,
            "missing": missing,
            "unverifiable": unknown,
        }
    return report


def ram(stats: dict) -> dict:
    system = stats.get("system") or {}
    total, free = system.get("ram_total"), system.get("ram_free")
    return {"total": _mb(total), "free": _mb(free), "total_bytes": total, "free_bytes": free}


def versions(stats: dict) -> dict:
    system = stats.get("system") or {}
    return {
        "comfyui": system.get("comfyui_version"),
        "python": system.get("python_version"),
        "pytorch": system.get("pytorch_version"),
        "os": system.get("os"),
    }


def system_block(stats: dict, server_paths: bool = True) -> dict:
    """ComfyUI's /system_stats `system` block. Its command line (`argv`) names folders on the
    server: the operator's to read, not a tenant's."""
    block = dict(stats.get("system") or {})
    if not server_paths:
        block.pop("argv", None)
    return block
