"""Every shipped template, as shipped and as rendered, against ComfyUI 0.33.0's node schemas.

tests/fixtures/comfyui-0.33.0/object_info.json is what GET /object_info returns on ComfyUI
0.33.0 for every node class the FLUX.2 templates use (model-file lists emptied). A template edit
that breaks the graph (a node class renamed, a required input dropped, a value out of range or
not among the choices, a link to a missing node or of the wrong type) fails here.
"""

import copy

import pytest

from api.graphs.check import check_graph, summary
from api.graphs.library import WorkflowLibrary
from api.graphs.loras import LoraSpec
from tests.conftest import SHIPPED_WORKFLOWS
from tests.support.object_info import exported, object_info_0330

FLUX2 = ("flux2_turbo_default", "flux2_turbo_edit", "flux2_turbo_upscale", "flux2_dev")
LIBRARY = WorkflowLibrary(SHIPPED_WORKFLOWS)
SHIPPED = sorted(p.stem for p in SHIPPED_WORKFLOWS.glob("*.json") if ".manifest" not in p.name)


def problems(graph: dict, info: dict | None = None) -> list[str]:
    found = check_graph(graph, info or object_info_0330(), files_known=info is not None)
    return [p.message for p in found]


def test_the_flux2_family_is_shipped_and_loads():
    assert set(FLUX2) <= set(LIBRARY.names())
    assert LIBRARY.invalid() == {}
    assert set(SHIPPED) == set(LIBRARY.names())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_template_fits_comfyuis_node_schemas(name):
    assert problems(LIBRARY.get(name).graph) == []


def rendered(name: str, **request) -> dict:
    workflow = LIBRARY.get(name)
    values, _ = workflow.validate({"prompt": "a fox", **request})
    loras = values.pop("loras", [])
    if "images" in values:
        values["images"] = [f"ref_{i}.png" for i in range(len(values["images"]))]
    return workflow.render(values, loras)


@pytest.mark.parametrize("name", FLUX2)
def test_rendered_variants_still_fit(name):
    request = {
        "loras": ["detail.safetensors:0.6", {"name": "style.safetensors", "strength": 1.2}],
        "scheduler": "beta",
        "width": 768,
        "height": 1280,
        "steps": 12,
        "seed": 2**64 - 1,
    }
    if name == "flux2_turbo_edit":
        request = {k: v for k, v in request.items() if k not in ("width", "height")}
        request["images"] = ["a.png", "b.png", "c.png", "d.png"]
    assert problems(rendered(name, **request)) == []
    assert problems(rendered(name, **({"images": ["a.png"]} if "edit" in name else {}))) == []


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda g: g["48"].update(class_type="Flux2Schedulr"), "does not have the node types"),
        (lambda g: g["12"]["inputs"].pop("weight_dtype"), "needs input weight_dtype"),
        (lambda g: g["38"]["inputs"].update(type="flux"), "'flux' is not one of"),
        (lambda g: g["47"]["inputs"].update(width=8), "below the minimum 16"),
        (lambda g: g["48"]["inputs"].update(steps="8"), "must be INT"),
        (lambda g: g["26"]["inputs"].update(guidance=101.0), "above the maximum 100"),
        (lambda g: g["22"]["inputs"].update(model=["38", 0]), "wants MODEL but node 38"),
        (lambda g: g["13"]["inputs"].update(sigmas=["99", 0]), "node 99, which does not exist"),
        (lambda g: g["13"]["inputs"].update(latent_image=["47", 1]), "which has 1 outputs"),
        (lambda g: g["8"]["inputs"].update(vae="full_encoder.safetensors"), "takes a VAE link"),
        (lambda g: g.pop("9"), "no output node"),
    ],
)
def test_a_broken_template_edit_is_caught(break_it, message):
    graph = copy.deepcopy(LIBRARY.get("flux2_turbo_default").graph)
    break_it(graph)
    assert any(message in p for p in problems(graph)), problems(graph)


def test_unknown_inputs_are_warnings_and_steps_are_checked():
    graph = copy.deepcopy(LIBRARY.get("flux2_turbo_default").graph)
    graph["47"]["inputs"]["width"] = 1000  # EmptyFlux2LatentImage steps by 16
    graph["16"]["inputs"]["sampler"] = "euler"  # a typo: the input is sampler_name
    found = check_graph(graph, object_info_0330(), files_known=False)
    assert {(p.kind, p.blocking) for p in found} == {("step", False), ("unknown_input", False)}


@pytest.mark.parametrize(
    "name", ["sd15_basic", "sdxl_base_refiner", "flux2_turbo_t2i"], ids=str.lower
)
def test_the_exported_test_graphs_are_valid_comfyui_graphs(name):
    assert problems(exported(name)) == []


def test_against_a_live_server_missing_files_are_named_with_their_folder():
    info = object_info_0330(
        diffusion_models=["flux2_dev_fp8mixed.safetensors"],
        text_encoders=["mistral_3_small_flux2_bf16.safetensors"],
        vae=["pixel_space"],
        loras=[],
    )
    found = check_graph(LIBRARY.get("flux2_turbo_default").graph, info)
    assert [p.missing_model for p in found] == [
        {"file": "full_encoder_small_decoder.safetensors", "folder": "vae"},
        {"file": "Flux_2-Turbo-LoRA_comfyui.safetensors", "folder": "loras"},
    ]
    assert summary(found) == (
        "missing model file 'full_encoder_small_decoder.safetensors' for VAELoader (node 10,"
        " input vae_name): put it in models/vae/; missing model file "
        "'Flux_2-Turbo-LoRA_comfyui.safetensors' for LoraLoaderModelOnly (node 101, input"
        " lora_name): put it in models/loras/"
    )


def test_on_an_old_server_the_missing_node_types_are_listed():
    info = {k: v for k, v in object_info_0330().items() if "Flux" not in k and "Guider" not in k}
    message = summary(check_graph(LIBRARY.get("flux2_dev").graph, info, files_known=False))
    assert message.startswith("this ComfyUI does not have the node types BasicGuider (node 22)")
    for name in ("FluxGuidance (node 26)", "Flux2Scheduler (node 48)", "EmptyFlux2LatentImage"):
        assert name in message


def test_each_template_lists_every_model_file_with_its_folder():
    for name in FLUX2:
        workflow = LIBRARY.get(name)
        listed = {(m["folder"], m["file"]) for m in workflow.models}
        loaded = {
            (folder, node["inputs"][key])
            for node in workflow.graph.values()
            for key, folder in {
                "unet_name": "diffusion_models",
                "clip_name": "text_encoders",
                "vae_name": "vae",
                "lora_name": "loras",
                "model_name": "upscale_models",
            }.items()
            if key in node["inputs"]
        }
        assert listed == loaded, name


def test_turbo_defaults_are_the_recommended_settings():
    for name in ("flux2_turbo_default", "flux2_turbo_edit", "flux2_turbo_upscale"):
        params = LIBRARY.get(name).params
        assert params["steps"].default == 8
        assert params["cfg"].default == 4.0
        assert params["sampler"].default == "euler"
        assert params["lora_strength"].default == 1.0
    dev = LIBRARY.get("flux2_dev")
    assert dev.params["steps"].default == 20 and "101" not in dev.graph
    assert "lora_strength" in dev.ignored


def test_loras_chain_after_the_turbo_lora_in_every_turbo_template():
    for name in ("flux2_turbo_default", "flux2_turbo_edit", "flux2_turbo_upscale"):
        graph = rendered(
            name, loras=["a.safetensors"], **({"images": ["x"]} if "edit" in name else {})
        )
        added = [
            n for n, node in graph.items() if node["inputs"].get("lora_name") == "a.safetensors"
        ]
        assert len(added) == 1
        assert graph[added[0]]["inputs"]["model"] == ["101", 0]
        assert graph["22"]["inputs"]["model"] == [added[0], 0]
    spec = LoraSpec("a.safetensors", 0.5)
    dev = LIBRARY.get("flux2_dev")
    values, _ = dev.validate({"prompt": "x"})
    graph = dev.render(values, [spec])
    assert graph["22"]["inputs"]["model"][0] != "12"
