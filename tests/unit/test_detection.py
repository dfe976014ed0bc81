"""Parameters detected in exported workflows, and what a manifest beside them changes."""

import json

import pytest

from api.exceptions import WorkflowError
from api.graphs.library import WorkflowLibrary
from api.graphs.manifest import build
from tests.conftest import SHIPPED_WORKFLOWS
from tests.support.object_info import exported


def sets(workflow) -> dict[str, list[str]]:
    return {name: [f"{n}.{i}" for n, i in p.targets] for name, p in workflow.params.items()}


def test_sd15_ksampler_graph():
    workflow = build("sd15", exported("sd15_basic"), None)
    assert workflow.detected
    assert sets(workflow) == {
        "prompt": ["6.text"],
        "negative_prompt": ["7.text"],
        "seed": ["3.seed"],
        "width": ["5.width"],
        "height": ["5.height"],
        "batch_size": ["5.batch_size"],
        "steps": ["3.steps"],
        "cfg": ["3.cfg"],
        "sampler": ["3.sampler_name"],
        "scheduler": ["3.scheduler"],
    }
    params = workflow.params
    assert params["prompt"].required and not params["negative_prompt"].required
    assert params["negative_prompt"].default == "text, watermark"
    assert params["seed"].random
    assert (params["width"].default, params["width"].schema["multipleOf"]) == (512, 8)
    assert (params["steps"].default, params["cfg"].default) == (20, 8)
    assert workflow.lora_anchor == ("4", 0)
    assert [(m["folder"], m["file"]) for m in workflow.models] == [
        ("checkpoints", "v1-5-pruned-emaonly.safetensors")
    ]


def test_sdxl_base_and_refiner_share_prompt_seed_and_steps():
    workflow = build("sdxl", exported("sdxl_base_refiner"), None)
    found = sets(workflow)
    assert found["prompt"] == ["6.text", "15.text"]
    assert found["negative_prompt"] == ["7.text", "16.text"]
    assert found["seed"] == ["10.noise_seed", "11.noise_seed"]
    assert found["steps"] == ["10.steps", "11.steps"]
    assert found["cfg"] == ["10.cfg", "11.cfg"]
    assert found["width"] == ["5.width"]
    # LoRAs go in front of the base sampler only: the refiner keeps its own model.
    assert workflow.lora_anchor == ("4", 0)
    assert {m["file"] for m in workflow.models} == {
        "sd_xl_base_1.0.safetensors",
        "sd_xl_refiner_1.0.safetensors",
    }
    values, _ = workflow.validate({"prompt": "a lighthouse", "steps": 30, "seed": 7})
    graph = workflow.render(values)
    assert graph["6"]["inputs"]["text"] == graph["15"]["inputs"]["text"] == "a lighthouse"
    assert graph["10"]["inputs"]["noise_seed"] == graph["11"]["inputs"]["noise_seed"] == 7
    assert graph["7"]["inputs"]["text"] == "text, watermark"


def test_flux2_graph_follows_the_guider_through_fluxguidance():
    workflow = build("flux2", exported("flux2_turbo_t2i"), None)
    found = sets(workflow)
    assert found["prompt"] == ["6.text"]
    assert "negative_prompt" not in found  # BasicGuider has no negative
    assert found["seed"] == ["25.noise_seed"]
    assert found["width"] == ["47.width", "48.width"]
    assert found["height"] == ["47.height", "48.height"]
    assert workflow.params["width"].schema["multipleOf"] == 16
    assert found["steps"] == ["48.steps"]
    assert found["cfg"] == ["26.guidance"]  # no classic cfg: FluxGuidance takes the name
    assert found["sampler"] == ["16.sampler_name"]
    assert found["lora_strength"] == ["101.strength_model"]
    assert "scheduler" not in found  # Flux2Scheduler has no scheduler name
    assert workflow.lora_anchor == ("101", 0)
    assert {m["folder"] for m in workflow.models} == {
        "diffusion_models",
        "text_encoders",
        "vae",
        "loras",
    }


def test_edit_graph_prompt_is_found_through_reference_latent():
    graph = json.loads((SHIPPED_WORKFLOWS / "flux2_turbo_edit.json").read_text())
    workflow = build("edit", graph, None)
    assert sets(workflow)["prompt"] == ["6.text"]
    assert "width" not in sets(workflow)  # the size comes from the image, by links


def test_a_negative_made_by_conditioningzeroout_is_not_a_text():
    graph = exported("sd15_basic")
    graph["10"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}
    graph["3"]["inputs"]["negative"] = ["10", 0]
    del graph["7"]
    found = sets(build("x", graph, None))
    assert found["prompt"] == ["6.text"] and "negative_prompt" not in found


def test_text_from_a_primitive_node_is_set_on_the_primitive():
    graph = exported("sd15_basic")
    graph["20"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a cat"}}
    graph["6"]["inputs"]["text"] = ["20", 0]
    assert sets(build("x", graph, None))["prompt"] == ["20.value"]


def test_a_graph_without_sampler_records_the_prompt_and_takes_no_loras():
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    workflow = build("plain", graph, None)
    assert sets(workflow) == {"prompt": []}
    assert not workflow.params["prompt"].required
    assert workflow.lora_anchor is None
    assert workflow.describe()["loras"]["supported"] is False
    values, _ = workflow.validate({})
    assert values["prompt"] is None


# --- manifests beside an exported graph -----------------------------------------------------


def test_manifest_renames_changes_fixes_and_drops():
    manifest = {
        "description": "My SD1.5",
        "detect": True,  # with "parameters" listed, detection is on only when asked for
        "rename": {"negative_prompt": "avoid"},
        "parameters": {
            "steps": {"maximum": 50, "default": 30},
            "cfg": None,
            "denoise": {"type": "number", "minimum": 0, "maximum": 1, "targets": ["3.denoise"]},
        },
        "fixed": {"scheduler": "karras", "9.filename_prefix": "Mine"},
    }
    workflow = build("mine", exported("sd15_basic"), manifest)
    params = workflow.params
    assert "avoid" in params and "negative_prompt" not in params
    assert (params["steps"].default, params["steps"].schema["maximum"]) == (30, 50)
    assert params["steps"].source == "detected+manifest"
    assert "cfg" not in params and "scheduler" not in params
    assert params["denoise"].source == "manifest"
    values, _ = workflow.validate({"prompt": "x", "avoid": "blur", "denoise": 0.5})
    graph = workflow.render(values)
    assert graph["7"]["inputs"]["text"] == "blur"
    assert graph["3"]["inputs"]["scheduler"] == "karras"
    assert graph["3"]["inputs"]["steps"] == 30
    assert graph["3"]["inputs"]["denoise"] == 0.5
    assert graph["9"]["inputs"]["filename_prefix"] == "Mine"
    described = workflow.describe()
    assert described["detected"] is True
    assert described["fixed"] == {"3.scheduler": "karras", "9.filename_prefix": "Mine"}
    assert described["parameters"]["steps"]["source"] == "detected+manifest"


def test_manifest_adds_a_switch_to_the_shipped_flux2_template():
    manifest = {
        "parameters": {
            "turbo": {
                "type": "boolean",
                "targets": ["104.value"],
                "description": "Enable Turbo LoRA (8 steps) or not (20 steps)",
            }
        }
    }
    workflow = build("flux2", exported("flux2_dev_switchable"), {**manifest, "detect": True})
    assert workflow.params["turbo"].default is True
    values, _ = workflow.validate({"prompt": "x", "turbo": False})
    assert workflow.render(values)["104"]["inputs"]["value"] is False
    # The switch's output feeds the guider: extra LoRAs go after it.
    assert workflow.lora_anchor == ("102", 0)


def test_a_manifest_with_parameters_and_no_detect_is_taken_as_written():
    workflow = build(
        "x", exported("sd15_basic"), {"parameters": {"prompt": {"type": "string", "targets": []}}}
    )
    assert not workflow.detected and list(workflow.params) == ["prompt"]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"rename": {"nope": "x"}}, "rename 'nope': no such detected parameter"),
        ({"fixed": {"nope": 1}}, "neither a parameter nor"),
        ({"parameters": {"steps": 5}}, "must be an object or null"),
        ({"loras": "yes"}, "'loras' must be false"),
        ({"loras": {"after": "77"}}, "loras.after names node '77'"),
        ({"parameters": {"loras": {"type": "string", "targets": []}}}, "reserved"),
    ],
)
def test_bad_overrides_are_explained(manifest, message):
    with pytest.raises(WorkflowError, match=message):
        build("x", exported("sd15_basic"), {**manifest, "detect": True})


def test_loras_can_be_turned_off_or_moved():
    off = build("x", exported("sd15_basic"), {"loras": False})
    assert off.lora_anchor is None and "turns LoRAs off" in off.describe()["loras"]["reason"]
    moved = build("x", exported("sdxl_base_refiner"), {"loras": {"after": "12"}})
    assert moved.lora_anchor == ("12", 0)


# --- the directory -----------------------------------------------------------------------


def test_dropped_files_are_detected_without_restart_and_bad_ones_listed(tmp_path):
    library = WorkflowLibrary(tmp_path)
    assert library.names() == []
    (tmp_path / "sd15.json").write_text(json.dumps(exported("sd15_basic")))
    (tmp_path / "ui_export.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    (tmp_path / "half.json").write_text('{"3": {"class_type": "KSampler", "inputs": ')
    (tmp_path / "odd.json").write_text(json.dumps({"1": {"class_type": "KSampler", "inputs": 5}}))
    (tmp_path / "linkless.json").write_text(
        json.dumps({"1": {"class_type": "KSampler", "inputs": {"model": ["9", 0, 1]}}})
    )
    assert library.names() == ["linkless", "sd15"]
    invalid = library.invalid()
    assert "Save (API Format)" in invalid["ui_export"]
    assert "not valid JSON" in invalid["half"]
    assert "inputs is not an object" in invalid["odd"]
    assert library.get("sd15").detected


def test_the_complete_example_in_the_docs_does_what_the_docs_say():
    text = (SHIPPED_WORKFLOWS.parent / "docs" / "workflows.md").read_text()
    section = text.split("### A complete example", 1)[1]
    manifest = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    workflow = build("sdxl", exported("sdxl_base_refiner"), manifest)
    assert set(workflow.params) == {
        "prompt",
        "avoid",
        "seed",
        "width",
        "height",
        "steps",
        "cfg",
        "sampler",
        "refiner_start",
    }
    assert workflow.params["steps"].default == 30
    assert workflow.params["width"].schema["multipleOf"] == 8
    values, notes = workflow.validate(
        {"prompt": "a", "avoid": "b", "refiner_start": 24, "lora_strength": 1}
    )
    graph = workflow.render(values)
    assert graph["10"]["inputs"]["end_at_step"] == graph["11"]["inputs"]["start_at_step"] == 24
    assert graph["7"]["inputs"]["text"] == graph["16"]["inputs"]["text"] == "b"
    assert graph["10"]["inputs"]["scheduler"] == graph["11"]["inputs"]["scheduler"] == "karras"
    assert graph["19"]["inputs"]["filename_prefix"] == "SDXL"
    assert "no LoRA of its own" in notes["lora_strength"]
    assert workflow.lora_anchor == ("4", 0)
