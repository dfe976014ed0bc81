"""Finding a workflow's parameters in a graph exported with ComfyUI's "Save (API Format)".

The result is a manifest (the same format a hand-written <name>.manifest.json uses), so an
optional manifest beside the graph can rename, change or fix what was found. What is found:

- prompt / negative_prompt: the text of the encoders reached by following each sampler's (or its
  guider's) positive and negative conditioning links back, through FluxGuidance,
  ReferenceLatent and similar nodes, to a node with a literal text input. ConditioningZeroOut
  ends a path (an empty negative).
- seed: every literal `seed` / `noise_seed` input (drawn at random per job when not given).
- width / height / batch_size: the Empty*Latent* nodes, plus the nodes that must agree with them
  (Flux2Scheduler, ModelSamplingFlux).
- steps, cfg (or FluxGuidance's guidance when the graph has no cfg), sampler, scheduler: on the
  samplers, KSamplerSelect and the sigma schedulers.
- lora_strength: the strength of the graph's own LoRA loader (lora_strength_<node> when several).
- models: every loader input naming a model file, with the models/ folder it belongs in.
"""

from __future__ import annotations

from typing import Any

from api.graphs import edit as g
from api.graphs.models import folder_of

TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl", "prompt", "value")
TEXT_NODES_STOP = {"ConditioningZeroOut"}
# Inputs through which conditioning flows back towards the text encoder.
CONDITIONING_INPUTS = (
    "conditioning",
    "conditioning_1",
    "conditioning_2",
    "conditioning_to",
    "conditioning_from",
    "positive",
    "cond",
)
SEED_INPUTS = ("seed", "noise_seed")
SIZE_FOLLOWERS = ("Flux2Scheduler", "ModelSamplingFlux")
STEP_NODES = (*g.SAMPLERS, "BasicScheduler", "Flux2Scheduler", "KarrasScheduler", "BetaScheduler")
CFG_NODES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "CFGGuider", "DualCFGGuider")
GUIDANCE_NODES = ("FluxGuidance", "CLIPTextEncodeFlux")
SAMPLER_NAME_NODES = ("KSampler", "KSamplerAdvanced", "KSamplerSelect")
SCHEDULER_NODES = ("KSampler", "KSamplerAdvanced", "BasicScheduler")
LATENT_WITH_16 = ("EmptyFlux2LatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo")
# How much one request may ask of the GPU when no manifest says otherwise: a side of 8192 or a
# batch of 16 holds the GPU for minutes or runs it out of memory. A manifest widens these
# ("maximum"), and a graph's own value is always allowed.
SAFE_MAX_SIDE = 2048
SAFE_MAX_BATCH = 4
SAFE_MAX_STEPS = 100


def _is_latent(class_type: str) -> bool:
    return class_type.startswith("Empty") and "Latent" in class_type


def _literal(node: dict, name: str, kinds: tuple) -> bool:
    value = node.get("inputs", {}).get(name)
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _text_targets(graph: dict, start: g.Link | None, seen: set[str]) -> list[str]:
    """Text inputs reached by walking conditioning links back from one link."""
    if start is None or start[0] in seen or start[0] not in graph:
        return []
    node_id = start[0]
    seen.add(node_id)
    node = graph[node_id]
    if node.get("class_type") in TEXT_NODES_STOP:
        return []
    inputs = node.get("inputs", {})
    found = []
    for name in TEXT_INPUTS:
        value = inputs.get(name)
        if isinstance(value, str):
            found.append(f"{node_id}.{name}")
        elif name != "value" and g.is_link(value):
            # Text fed by a primitive (PrimitiveString...): set the primitive's value.
            source = graph.get(str(value[0]), {})
            if isinstance(source.get("inputs", {}).get("value"), str):
                found.append(f"{value[0]}.value")
    if found:
        return found
    for name in CONDITIONING_INPUTS:
        found += _text_targets(graph, g.link_of(inputs.get(name)), seen)
    return found


def _side(graph: dict, side: str) -> list[str]:
    targets: list[str] = []
    for sampler in g.samplers(graph):
        for node_id, name in g.conditioning_inputs(graph, sampler, side):
            link = g.link_of(graph[node_id]["inputs"][name])
            for target in _text_targets(graph, link, set()):
                if target not in targets:
                    targets.append(target)
    return targets


def _inputs(graph: dict, classes, names, kinds) -> list[str]:
    found = []
    for node_id in g.ordered(graph):
        node = graph[node_id]
        if classes is not None and node.get("class_type") not in classes:
            continue
        for name in names:
            if _literal(node, name, kinds):
                found.append(f"{node_id}.{name}")
    return found


def _value(graph: dict, target: str) -> Any:
    node_id, _, name = target.rpartition(".")
    return graph[node_id]["inputs"][name]


def _safe_max(graph: dict, targets: list[str], limit: int) -> int:
    """The safe limit, or the graph's own value where that is larger (the author chose it)."""
    values = [_value(graph, t) for t in targets]
    return max([limit, *(v for v in values if isinstance(v, int))])


def _where(graph: dict, targets: list[str]) -> str:
    return ", ".join(
        f"{graph[t.rpartition('.')[0]]['class_type']} {t.rpartition('.')[0]}.{t.rpartition('.')[2]}"
        for t in targets
    )


def detect(graph: dict) -> dict:
    """A manifest describing the parameters found in `graph` (see the module docstring)."""
    params: dict[str, dict] = {}

    def add(name: str, targets: list[str], spec: dict, what: str) -> None:
        if targets:
            params[name] = {
                **spec,
                "targets": targets,
                "description": f"{what} (detected: {_where(graph, targets)})",
            }

    positive = _side(graph, "positive")
    negative = [t for t in _side(graph, "negative") if t not in positive]
    if positive:
        add(
            "prompt",
            positive,
            {"type": "string", "required": True, "minLength": 1, "maxLength": 2048},
            "Text of the positive prompt",
        )
    else:
        params["prompt"] = {
            "type": "string",
            "maxLength": 2048,
            "targets": [],
            "description": "Recorded with the job; no text encoder was found on a sampler's "
            "positive conditioning",
        }
    add(
        "negative_prompt",
        negative,
        {"type": "string", "maxLength": 2048},
        "Text of the negative prompt",
    )

    add(
        "seed",
        _inputs(graph, None, SEED_INPUTS, (int,)),
        {"type": "integer", "minimum": 0, "maximum": 2**64 - 1, "random": True},
        "Noise seed; drawn at random when missing and returned with the job",
    )

    latents = [n for n in g.ordered(graph) if _is_latent(graph[n].get("class_type", ""))]
    step = 16 if any(graph[n]["class_type"] in LATENT_WITH_16 for n in latents) else 8
    for dim in ("width", "height"):
        targets = _inputs(graph, None, (dim,), (int,))
        targets = [
            t
            for t in targets
            if t.rpartition(".")[0] in latents
            or graph[t.rpartition(".")[0]]["class_type"] in SIZE_FOLLOWERS
        ]
        if any(t.rpartition(".")[0] in latents for t in targets):
            add(
                dim,
                targets,
                {
                    "type": "integer",
                    "minimum": 64,
                    "maximum": _safe_max(graph, targets, SAFE_MAX_SIDE),
                    "multipleOf": step,
                },
                f"Image {dim} in pixels",
            )
    batch = [
        t for t in _inputs(graph, None, ("batch_size",), (int,)) if t.rpartition(".")[0] in latents
    ]
    add(
        "batch_size",
        batch,
        {"type": "integer", "minimum": 1, "maximum": _safe_max(graph, batch, SAFE_MAX_BATCH)},
        "Images per job",
    )

    step_targets = _inputs(graph, STEP_NODES, ("steps",), (int,))
    add(
        "steps",
        step_targets,
        {
            "type": "integer",
            "minimum": 1,
            "maximum": _safe_max(graph, step_targets, SAFE_MAX_STEPS),
        },
        "Sampling steps",
    )
    cfg = _inputs(graph, CFG_NODES, ("cfg",), (int, float))
    guidance = _inputs(graph, GUIDANCE_NODES, ("guidance",), (int, float))
    add("cfg", cfg, {"type": "number", "minimum": 0, "maximum": 30}, "Classifier-free guidance")
    add(
        "guidance" if cfg else "cfg",
        guidance,
        {"type": "number", "minimum": 0, "maximum": 100},
        "Flux guidance (FluxGuidance)",
    )
    add(
        "sampler",
        _inputs(graph, SAMPLER_NAME_NODES, ("sampler_name",), (str,)),
        {"type": "string", "pattern": "^[A-Za-z0-9_]+$", "maxLength": 64},
        "A ComfyUI sampler name",
    )
    add(
        "scheduler",
        _inputs(graph, SCHEDULER_NODES, ("scheduler",), (str,)),
        {"type": "string", "pattern": "^[A-Za-z0-9_]+$", "maxLength": 64},
        "A ComfyUI scheduler name",
    )

    loaders = [n for n in g.ordered(graph) if graph[n].get("class_type") in g.LORA_LOADERS]
    for node_id in loaders:
        name = "lora_strength" if len(loaders) == 1 else f"lora_strength_{node_id}"
        targets = _inputs({node_id: graph[node_id]}, None, ("strength_model",), (int, float))
        lora_file = graph[node_id]["inputs"].get("lora_name")
        add(
            name,
            targets,
            {"type": "number", "minimum": -10, "maximum": 10},
            f"Strength of the LoRA {lora_file!r}",
        )

    return {"parameters": params, "models": models(graph)}


def models(graph: dict) -> list[dict]:
    """Every literal model file the graph loads, with the models/ folder it belongs in."""
    found = []
    for node_id in g.ordered(graph):
        node = graph[node_id]
        for name, value in node.get("inputs", {}).items():
            folder = folder_of(name)
            if folder and isinstance(value, str):
                found.append(
                    {
                        "folder": folder,
                        "file": value,
                        "node": node_id,
                        "class_type": node.get("class_type"),
                        "input": name,
                    }
                )
    return found


def steps(graph: dict) -> int | None:
    """The sampling steps of a graph, as far as detection finds them (None when none)."""
    targets = _inputs(graph, STEP_NODES, ("steps",), (int,))
    return _value(graph, targets[0]) if targets else None


def prompt_text(graph: dict) -> str:
    """The positive prompt of a graph, as far as detection finds it ("" when none)."""
    for target in _side(graph, "positive"):
        value = _value(graph, target)
        if isinstance(value, str):
            return value
    return ""
