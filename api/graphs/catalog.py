"""What the running ComfyUI has: node classes, model files, LoRAs, samplers and schedulers.

Everything is read from one cached GET /object_info (the ComfyUI client keeps it for
CATALOG_MAX_AGE seconds; the node-class check before each submit uses the same copy). Model and
LoRA lists come from the loaders' combo inputs, which list the files of their models/ folder on
every ComfyUI version, old (2024, no /models/<folder> route) and new. A value missing from a
cached list is looked up once more in a fresh copy, so a file copied in a moment ago is found.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from api.comfyui import ComfyUIClient
from api.exceptions import UnknownChoice
from api.graphs import check as graphcheck
from api.graphs.models import MODEL_FOLDERS, folder_of

log = logging.getLogger(__name__)

SHOWN_IN_MESSAGE = 15
# How a combo input is named in an error: "sampler", "scheduler", "LoRA"...
LABELS = {"sampler_name": "sampler", "scheduler": "scheduler", "lora_name": "LoRA"}


class Catalog:
    """Look-ups against the ComfyUI's /object_info, through the client's shared cache."""

    def __init__(self, client: ComfyUIClient) -> None:
        self.client = client

    def info(self, fresh: bool = False) -> dict:
        return self.client.cached_object_info(0 if fresh else None)

    def options(self, class_type: str, input_name: str, info: dict | None = None) -> list | None:
        """The choices of a combo input, or None when the class or input is not a combo here."""
        info = self.info() if info is None else info
        node = info.get(class_type)
        if not isinstance(node, dict):
            return None
        required, optional = graphcheck.input_specs(node)
        spec = required.get(input_name, optional.get(input_name))
        if not isinstance(spec, list | tuple):
            return None
        return graphcheck.combo_options(list(spec))

    def files(self, folder: str, info: dict | None = None) -> list[str] | None:
        """Model files ComfyUI sees in models/<folder>, from a loader's combo input."""
        for class_type, input_name in MODEL_FOLDERS.get(folder, ()):
            found = self.options(class_type, input_name, info)
            if found is not None:
                return [str(f) for f in found]
        return None

    def require(
        self, value: Any, class_type: str, input_name: str, field: str, what: str | None = None
    ) -> None:
        """Raise UnknownChoice listing what is available when `value` is not a choice of it.

        Inputs that are not combos on this server (or classes it lacks, reported separately)
        are not checked here.
        """
        choices = self.options(class_type, input_name)
        if choices is None or value in choices:
            return
        choices = self.options(class_type, input_name, self.info(fresh=True))
        if choices is None or value in choices:
            return
        raise unknown_choice(value, field, input_name, [str(c) for c in choices], what)


def unknown_choice(
    value: Any, field: str, input_name: str, available: list[str], what: str | None = None
) -> UnknownChoice:
    """The error naming the value, what kind of name it is, and (the start of) what there is."""
    folder = folder_of(input_name)
    label = what or LABELS.get(input_name) or ("model file" if folder else input_name)
    where = f" in models/{folder}/" if folder else ""
    if available:
        shown = ", ".join(available[:SHOWN_IN_MESSAGE])
        more = len(available) - SHOWN_IN_MESSAGE
        if more > 0:
            shown += f" ... and {more} more (all in details.available)"
        listing = f"available{where}: {shown}"
    else:
        listing = f"this ComfyUI has none{where}"
    code = {"LoRA": "unknown_lora", "sampler": "unknown_sampler", "scheduler": "unknown_scheduler"}
    return UnknownChoice(
        f"Unknown {label} '{value}' ({field}); {listing}",
        {"field": field, "received": value, "available": available, "folder": folder},
        code=code.get(label, "unknown_model" if folder else "unknown_choice"),
    )


def runnable(
    graph: dict, info: dict, skip: Iterable[tuple[str, str]] = ()
) -> list[graphcheck.Problem]:
    """Blocking problems of a workflow's graph on this server (empty: it can run)."""
    return graphcheck.blocking(graphcheck.check_graph(graph, info, skip=skip))


def report(library, info: dict) -> dict[str, list[graphcheck.Problem]]:
    """For every valid workflow: what stops it from running on this ComfyUI."""
    out = {}
    for name in library.names():
        workflow = library.get(name)
        if workflow is not None:
            out[name] = runnable(workflow.graph, info, workflow.per_request_inputs())
    return out


def log_report(library, info: dict) -> None:
    """Tell the operator at startup which workflows their ComfyUI can run, and why not."""
    for name, problems in report(library, info).items():
        if problems:
            log.warning(
                "workflow %s cannot run on this ComfyUI: %s", name, graphcheck.summary(problems)
            )
        else:
            log.info("workflow %s can run on this ComfyUI", name)
