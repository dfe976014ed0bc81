"""Reading and editing API-format graphs: links, samplers, LoRA chains, node swaps, copies.

An API-format graph is ``{node_id: {"class_type", "inputs": {name: value | [src_id, index]}}}``.
Every edit here works on a graph the caller already copied; nothing is built from strings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from api.graphs.loras import LoraSpec

# Nodes that turn a model, conditioning and a latent into a latent, and where each takes them.
SAMPLERS = {
    "KSampler": {"model": "model", "positive": ("positive",), "negative": ("negative",)},
    "KSamplerAdvanced": {"model": "model", "positive": ("positive",), "negative": ("negative",)},
    "SamplerCustom": {"model": "model", "positive": ("positive",), "negative": ("negative",)},
    "SamplerCustomAdvanced": {"guider": "guider"},
}
# Guiders (SamplerCustomAdvanced's `guider` input) and where their conditioning comes from.
GUIDERS = {
    "BasicGuider": {"model": "model", "positive": ("conditioning",), "negative": ()},
    "CFGGuider": {"model": "model", "positive": ("positive",), "negative": ("negative",)},
    "DualCFGGuider": {
        "model": "model",
        "positive": ("cond1", "cond2"),
        "negative": ("negative",),
    },
}
LORA_LOADERS = ("LoraLoaderModelOnly", "LoraLoader")
Link = tuple[str, int]


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def link_of(value: Any) -> Link | None:
    return (str(value[0]), value[1]) if is_link(value) else None


def node_order(node_id: str) -> tuple:
    head = node_id.split(":")[0]
    return (0, int(head), node_id) if head.isdigit() else (1, 0, node_id)


def ordered(graph: dict) -> list[str]:
    return sorted(graph, key=node_order)


def consumers(graph: dict, source: str, index: int | None = None) -> list[tuple[str, str]]:
    """(node_id, input) pairs linked to an output of `source` (any output when index is None)."""
    found = []
    for node_id in ordered(graph):
        for name, value in graph[node_id].get("inputs", {}).items():
            link = link_of(value)
            if link and link[0] == source and (index is None or link[1] == index):
                found.append((node_id, name))
    return found


def upstream(graph: dict, start: str) -> set[str]:
    """`start` and every node it depends on through links."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        for value in graph[node_id].get("inputs", {}).values():
            link = link_of(value)
            if link:
                stack.append(link[0])
    return seen


def downstream(graph: dict, start: str) -> set[str]:
    """`start` and every node that depends on it."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        stack.extend(consumer for consumer, _ in consumers(graph, node_id))
    return seen


def new_ids(graph: dict) -> Iterator[str]:
    """Fresh numeric node ids above every numeric id in the graph (ComfyUI's own style)."""
    numbers = [int(n.split(":")[0]) for n in graph if n.split(":")[0].isdigit()]
    current = max(numbers, default=0)
    while True:
        current += 1
        if str(current) not in graph:
            yield str(current)


def samplers(graph: dict) -> list[str]:
    return [n for n in ordered(graph) if graph[n].get("class_type") in SAMPLERS]


def primary_sampler(graph: dict) -> str | None:
    """The sampler that starts from a fresh latent: not fed (even indirectly) by another sampler.

    In an SDXL base + refiner graph that is the base sampler; ties go to the lowest node id.
    """
    found = samplers(graph)
    for node_id in found:
        before = upstream(graph, node_id) - {node_id}
        if not any(other in before for other in found):
            return node_id
    return found[0] if found else None


def _guider(graph: dict, sampler_id: str) -> tuple[str, dict] | None:
    node = graph[sampler_id]
    spec = SAMPLERS.get(node.get("class_type"))
    if spec is None:
        return None
    if "guider" in spec:
        link = link_of(node["inputs"].get("guider"))
        if link and graph.get(link[0], {}).get("class_type") in GUIDERS:
            return link[0], GUIDERS[graph[link[0]]["class_type"]]
        return None
    return sampler_id, spec


def conditioning_inputs(graph: dict, sampler_id: str, side: str) -> list[tuple[str, str]]:
    """(node_id, input) of a sampler (or its guider) carrying `side` ("positive"/"negative")."""
    found = _guider(graph, sampler_id)
    if found is None:
        return []
    node_id, spec = found
    return [(node_id, name) for name in spec[side] if name in graph[node_id]["inputs"]]


def model_input(graph: dict, sampler_id: str) -> tuple[str, str] | None:
    """(node_id, input) where the sampler, or its guider, takes the MODEL."""
    found = _guider(graph, sampler_id)
    if found is None:
        return None
    node_id, spec = found
    return (node_id, spec["model"]) if spec["model"] in graph[node_id]["inputs"] else None


def model_anchor(graph: dict) -> Link | None:
    """The MODEL output feeding the primary sampler: where extra LoRAs are chained in."""
    sampler = primary_sampler(graph)
    if sampler is None:
        return None
    where = model_input(graph, sampler)
    if where is None:
        return None
    return link_of(graph[where[0]]["inputs"][where[1]])


def insert_loras(graph: dict, anchor: Link, loras: Iterable[LoraSpec]) -> list[str]:
    """Chain one LoraLoaderModelOnly per LoRA after `anchor`; its consumers use the last one.

    Every input that was linked to `anchor` (guider, sampler, a swapped-in BasicScheduler...) is
    moved to the end of the chain, so the LoRAs patch the model wherever it is used.
    """
    loras = list(loras)
    if not loras:
        return []
    source, index = anchor
    users = consumers(graph, source, index)
    ids = new_ids(graph)
    previous: list = [source, index]
    added = []
    for spec in loras:
        node_id = next(ids)
        graph[node_id] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": previous, "lora_name": spec.name, "strength_model": spec.strength},
            "_meta": {"title": f"LoRA {spec.name}"},
        }
        previous = [node_id, 0]
        added.append(node_id)
    for node_id, name in users:
        graph[node_id]["inputs"][name] = list(previous)
    return added


def swap_scheduler(graph: dict, node_id: str, model_from: tuple[str, str], name: str) -> None:
    """Replace a sigma node (e.g. Flux2Scheduler) by BasicScheduler with a named scheduler.

    The node keeps its id, so the sampler's `sigmas` link and any `steps` target stay valid.
    BasicScheduler needs the MODEL (it reads the model's own sigma range), taken from the same
    input the guider or sampler uses.
    """
    old = graph[node_id]
    model = graph[model_from[0]]["inputs"][model_from[1]]
    graph[node_id] = {
        "class_type": "BasicScheduler",
        "inputs": {
            "model": copy.deepcopy(model),
            "scheduler": name,
            "steps": old["inputs"].get("steps", 20),
            "denoise": 1.0,
        },
        "_meta": {"title": f"BasicScheduler ({name}) in place of {old.get('class_type')}"},
    }


def chain_copies(graph: dict, start: str, end: str, chain_input: str, count: int) -> list[str]:
    """Copy the path start → end `count` times, each copy's `end` fed by the previous one.

    Used for reference images: LoadImage (start) → scale → VAEEncode → ReferenceLatent (end),
    where each extra ReferenceLatent takes the previous one's conditioning. Nodes off the path
    (the VAE, the text encoder) are shared. Returns the id of `start` in each copy.
    """
    path = downstream(graph, start) & upstream(graph, end)
    if start not in path or end not in path:
        raise ValueError(f"node {end} does not depend on node {start}")
    users = [(n, i) for n, i in consumers(graph, end) if n not in path]
    ids = new_ids(graph)
    previous_end = end
    starts = []
    for _ in range(count):
        mapping = {old: next(ids) for old in sorted(path, key=node_order)}
        for old, new in mapping.items():
            node = copy.deepcopy(graph[old])
            for name, value in node["inputs"].items():
                link = link_of(value)
                if link and link[0] in mapping:
                    node["inputs"][name] = [mapping[link[0]], link[1]]
            graph[new] = node
        graph[mapping[end]]["inputs"][chain_input] = [previous_end, 0]
        previous_end = mapping[end]
        starts.append(mapping[start])
    for node_id, name in users:
        link = link_of(graph[node_id]["inputs"][name])
        graph[node_id]["inputs"][name] = [previous_end, link[1] if link else 0]
    return starts


def in_output_folder(graph: dict, folder: str) -> dict:
    """The graph with every file it saves put in `folder` of ComfyUI's output folder: each
    string `filename_prefix` (SaveImage and its kin) gets the folder in front; ComfyUI creates
    it. The graph given is not changed (nodes that change are copied)."""
    if not folder:
        return graph
    moved = dict(graph)
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        value = inputs.get("filename_prefix") if isinstance(inputs, dict) else None
        if isinstance(value, str) and not value.startswith(f"{folder}/"):
            moved[node_id] = {**node, "inputs": {**inputs, "filename_prefix": f"{folder}/{value}"}}
    return moved
