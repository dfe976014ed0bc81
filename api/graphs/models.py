"""The one table of model folders: which loader inputs name the files of each models/ folder.

Everything about model files derives from it: the folder a missing file belongs in (ComfyUI's
errors, detection, the graph check), and where the file lists of /api/system and the catalog
are read (the first loader input the server has wins).
"""

from __future__ import annotations

# models/<folder> -> (node class, input) pairs whose choices are that folder's files.
MODEL_FOLDERS: dict[str, tuple[tuple[str, str], ...]] = {
    "diffusion_models": (("UNETLoader", "unet_name"),),
    "text_encoders": (
        ("CLIPLoader", "clip_name"),
        ("DualCLIPLoader", "clip_name1"),
        ("DualCLIPLoader", "clip_name2"),
    ),
    "vae": (("VAELoader", "vae_name"),),
    "loras": (("LoraLoaderModelOnly", "lora_name"), ("LoraLoader", "lora_name")),
    "upscale_models": (("UpscaleModelLoader", "model_name"),),
    "checkpoints": (("CheckpointLoaderSimple", "ckpt_name"),),
    "controlnet": (("ControlNetLoader", "control_net_name"),),
}

# Loader input name -> the models/ folder its value is a file of.
INPUT_FOLDERS: dict[str, str] = {
    input_name: folder for folder, sources in MODEL_FOLDERS.items() for _, input_name in sources
}


def folder_of(input_name: str | None) -> str | None:
    """The models/ folder a loader input's value belongs in, or None for other inputs."""
    return INPUT_FOLDERS.get(input_name) if input_name else None
