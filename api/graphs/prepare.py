"""From a generate request to the graph that is sent: validate, resolve, render, check.

1. the request is validated against the workflow's parameters (InvalidRequest naming the
   field and its range);
2. defaults that come from settings (UPSCALE_MODEL) are filled in;
3. image references become LoadImage values (uploads, or earlier jobs' outputs);
4. DEFAULT_LORAS and the request's `loras` are combined;
5. the graph is rendered (values, images chained, scheduler swapped, LoRAs chained);
6. against the running ComfyUI (one cached /object_info): every node class must exist
   (ComfyUIRejected naming each missing one), and every name the request chose (sampler,
   scheduler, model file, LoRA) must be one ComfyUI has (UnknownChoice listing what it has).
Names that come from the template or the configuration are left to ComfyUI's own validation,
which names the missing file and its models/ folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from api.comfyui import ComfyUIClient
from api.graphs import images
from api.graphs import loras as lora_specs
from api.graphs.catalog import Catalog
from api.graphs.params import ImagesParam, SchedulerParam, ValueParam
from api.graphs.workflow import Workflow
from api.jobstore import JobStore

if TYPE_CHECKING:
    from api.tenancy import Caller


def prepare(
    body: dict,
    workflow: Workflow,
    store: JobStore,
    client: ComfyUIClient,
    default_loras: tuple[lora_specs.LoraSpec, ...] = (),
    settings: Mapping[str, Any] | None = None,
    caller: Caller | None = None,
    check: bool = True,
) -> tuple[dict, dict, dict]:
    """(parameter values as stored with the job, notes for ignored_fields, graph to send);
    image references are resolved as `caller` may use them (None: the operator).

    check=False leaves out step 6: in a cluster, when this node's ComfyUI cannot run the
    workflow, the node that claims the job is the one whose ComfyUI validates it.
    """
    values, notes = workflow.validate(body)
    settings = settings or {}
    for name, param in workflow.params.items():
        if param.setting and name not in body and settings.get(param.setting):
            values[name] = settings[param.setting]
    for name, param in workflow.params.items():
        if isinstance(param, ImagesParam) and values.get(name):
            values[name] = [
                images.resolve(ref, store, f"{name}[{i}]", caller)
                for i, ref in enumerate(values[name])
            ]

    requested: list[lora_specs.LoraSpec] = values.pop("loras", None) or []
    chain: list[lora_specs.LoraSpec] = []
    if workflow.lora_anchor is not None:
        chain = lora_specs.combine(default_loras, requested)
        values["loras"] = [spec.as_dict() for spec in chain]
        with_clip = [spec.name for spec in chain if spec.strength_clip]
        if with_clip:
            notes["loras"] = (
                f"strength_clip of {', '.join(with_clip)} is not applied: LoRAs are chained with"
                " LoraLoaderModelOnly, which patches the diffusion model only"
            )
    elif default_loras:
        notes["default_loras"] = f"DEFAULT_LORAS not applied: {workflow.lora_note}"

    graph = workflow.render(values, chain)
    if check:
        client.check_node_classes(graph)
        _check_choices(body, values, workflow, graph, requested, Catalog(client))
    return values, notes, graph


def _check_choices(body, values, workflow, graph, requested, catalog: Catalog) -> None:
    """UnknownChoice for a sampler, scheduler, model file or LoRA named by the request that
    ComfyUI lacks."""
    for name, param in workflow.params.items():
        value = values.get(name)
        if name not in body or not isinstance(value, str):
            continue
        if isinstance(param, SchedulerParam):
            catalog.require(value, "BasicScheduler", "scheduler", name, "scheduler")
            continue
        if not isinstance(param, ValueParam):
            continue
        seen = set()
        for node_id, input_name in param.targets:
            key = (graph[node_id]["class_type"], input_name)
            if key not in seen:
                seen.add(key)
                catalog.require(value, key[0], input_name, name)
    for spec in requested:
        catalog.require(spec.name, "LoraLoaderModelOnly", "lora_name", "loras", "LoRA")
