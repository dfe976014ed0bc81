"""LoRAs: the startup syntax, a request's `loras`, the chain they become, and the checks."""

import json

import pytest

from api import create_app
from api.config import Config, ConfigError
from api.exceptions import LoraSpecError
from api.graphs.edit import insert_loras
from api.graphs.loras import LoraSpec, combine, from_request, parse, parse_list
from api.graphs.manifest import build
from tests.support.object_info import exported, object_info_0330
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config, never_asked

LORAS = ["detail.safetensors", "style/ink.safetensors", "Flux_2-Turbo-LoRA_comfyui.safetensors"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.safetensors", LoraSpec("a.safetensors", 1.0, None)),
        ("a.safetensors:0.8", LoraSpec("a.safetensors", 0.8, None)),
        ("a.safetensors:0.8:0.5", LoraSpec("a.safetensors", 0.8, 0.5)),
        (" sub/b.safetensors : -1 ", LoraSpec("sub/b.safetensors", -1.0, None)),
        ("odd:name.safetensors:0.7", LoraSpec("odd:name.safetensors", 0.7, None)),
    ],
)
def test_startup_syntax(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [(":0.5", "empty"), ("a:50", "outside -10..10"), ("a:nan", "outside"), ("", "empty")],
)
def test_bad_entries_are_explained(text, message):
    with pytest.raises(LoraSpecError, match=message):
        parse(text)


def test_default_loras_setting_is_repeatable_and_checked():
    config = Config.from_env({"DEFAULT_LORAS": "a.safetensors:0.6, b.safetensors\nc:1:0.5"})
    assert [(s.name, s.strength, s.strength_clip) for s in config.default_loras] == [
        ("a.safetensors", 0.6, None),
        ("b.safetensors", 1.0, None),
        ("c", 1.0, 0.5),
    ]
    assert Config.from_env({}).default_loras == ()
    with pytest.raises(ConfigError, match="DEFAULT_LORAS"):
        Config.from_env({"DEFAULT_LORAS": "a:0.5,a:1"})


def test_request_forms_and_combining_with_defaults():
    requested = from_request(["a:0.5", {"name": "b", "strength": 0.7}, {"name": "c"}])
    assert [(s.name, s.strength) for s in requested] == [("a", 0.5), ("b", 0.7), ("c", 1.0)]
    defaults = parse_list("a:1.0, z:0.3")
    chain = combine(defaults, requested)
    assert [(s.name, s.strength, s.source) for s in chain] == [
        ("z", 0.3, "default"),
        ("a", 0.5, "request"),
        ("b", 0.7, "request"),
        ("c", 1.0, "request"),
    ]
    with pytest.raises(LoraSpecError, match="listed twice"):
        from_request(["a", "a:0.3"])


def test_chain_shape_in_an_sd15_graph():
    graph = exported("sd15_basic")
    added = insert_loras(graph, ("4", 0), [LoraSpec("a", 0.5), LoraSpec("b", 0.8)])
    assert added == ["10", "11"]
    assert graph["10"] == {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["4", 0], "lora_name": "a", "strength_model": 0.5},
        "_meta": {"title": "LoRA a"},
    }
    assert graph["11"]["inputs"]["model"] == ["10", 0]
    assert graph["3"]["inputs"]["model"] == ["11", 0]
    # Only the MODEL output moved: CLIP and VAE still come from the checkpoint.
    assert graph["6"]["inputs"]["clip"] == graph["7"]["inputs"]["clip"] == ["4", 1]
    assert graph["8"]["inputs"]["vae"] == ["4", 2]


def test_chain_shape_in_an_sdxl_graph_leaves_the_refiner_alone():
    workflow = build("sdxl", exported("sdxl_base_refiner"), None)
    values, _ = workflow.validate({"prompt": "x"})
    graph = workflow.render(values, [LoraSpec("a", 1.0)])
    (added,) = [n for n, node in graph.items() if node["class_type"] == "LoraLoaderModelOnly"]
    assert graph[added]["inputs"]["model"] == ["4", 0]
    assert graph["10"]["inputs"]["model"] == [added, 0]
    assert graph["11"]["inputs"]["model"] == ["12", 0]


def test_every_consumer_of_the_anchor_moves_to_the_end_of_the_chain():
    graph = exported("flux2_turbo_t2i")
    graph["48"] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": ["101", 0], "scheduler": "simple", "steps": 8, "denoise": 1.0},
    }
    insert_loras(graph, ("101", 0), [LoraSpec("a")])
    assert graph["22"]["inputs"]["model"] == graph["48"]["inputs"]["model"] == ["102", 0]


# --- through the API ----------------------------------------------------------------------


@pytest.fixture
def lora_comfy(fake_comfy):
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330(loras=LORAS))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-1", "number": 1, "node_errors": {}})
    return fake_comfy


def sent_graph(mock) -> dict:
    (call,) = [c for c in mock.calls if c.request.url.endswith("/prompt")]
    return json.loads(call.request.body)["prompt"]


def test_requested_loras_are_chained_after_the_turbo_lora(client, lora_comfy):
    response = client.post(
        "/api/generate",
        json={
            "prompt": "x",
            "loras": ["detail.safetensors:0.8", {"name": "style/ink.safetensors"}],
        },
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["parameters"]["loras"] == [
        {"name": "detail.safetensors", "strength": 0.8, "source": "request"},
        {"name": "style/ink.safetensors", "strength": 1.0, "source": "request"},
    ]
    graph = sent_graph(lora_comfy)
    assert graph["102"]["inputs"] == {
        "model": ["101", 0],
        "lora_name": "detail.safetensors",
        "strength_model": 0.8,
    }
    assert graph["103"]["inputs"]["model"] == ["102", 0]
    assert graph["22"]["inputs"]["model"] == ["103", 0]
    assert graph["101"]["inputs"]["strength_model"] == 1.0  # the Turbo LoRA: lora_strength


def test_an_unknown_lora_is_a_400_listing_what_comfyui_has(client, lora_comfy, app):
    response = client.post("/api/generate", json={"prompt": "x", "loras": ["nope.safetensors"]})
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "unknown_lora"
    assert body["error"] == (
        "Unknown LoRA 'nope.safetensors' (loras); available in models/loras/: "
        "detail.safetensors, style/ink.safetensors, Flux_2-Turbo-LoRA_comfyui.safetensors"
    )
    assert body["details"]["available"] == LORAS
    never_asked(lora_comfy, "POST /prompt")
    assert app.extensions["sidecar"].store.count() == 0


def test_a_long_list_is_cut_in_the_message_and_whole_in_details(client, fake_comfy):
    many = [f"lora_{i:02}.safetensors" for i in range(40)]
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330(loras=many))
    body = client.post("/api/generate", json={"prompt": "x", "loras": ["x"]}).get_json()
    assert "lora_14.safetensors ... and 25 more (all in details.available)" in body["error"]
    assert "lora_15" not in body["error"] and len(body["details"]["available"]) == 40


def test_a_lora_copied_in_a_moment_ago_is_found(tmp_path, workflows_dir, fake_comfy):
    # With no CATALOG_REFRESH_INTERVAL, a name missing from the cached copy fetches a new one.
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    client = create_app(
        make_config(tmp_path, workflows_dir, catalog_refresh_interval=0)
    ).test_client()
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330(loras=[]))
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330(loras=["new.safetensors"]))
    fake_comfy.post(f"{COMFY}/prompt", json={"prompt_id": "p-2", "number": 1, "node_errors": {}})
    response = client.post("/api/generate", json={"prompt": "x", "loras": ["new.safetensors"]})
    assert response.status_code == 202, response.get_json()


def test_made_up_names_do_not_fetch_the_catalog_again_and_again(client, fake_comfy):
    """Within CATALOG_REFRESH_INTERVAL (10 s) of the last fetch a missing name is answered
    from the cached copy: twenty made-up LoRAs cost one /object_info, not twenty."""
    fake_comfy.get(f"{COMFY}/object_info", json=object_info_0330(loras=["real.safetensors"]))
    for i in range(20):
        body = client.post(
            "/api/generate", json={"prompt": "x", "loras": [f"made-up-{i}.safetensors"]}
        ).get_json()
        assert body["code"] == "unknown_lora", body
    fetched = [
        c
        for c in fake_comfy.calls
        if c.request.url.endswith("/object_info") and not isinstance(c.response, Exception)
    ]
    assert len(fetched) == 1


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        (["a:99"], "loras[0]: strength 99 is outside -10..10"),
        ([5], "loras[0]: a LoRA as 'name:strength'"),
        ("a.safetensors", "loras must be of type array"),
        ([{"name": "a", "weight": 1}], "loras[0]: a LoRA as 'name:strength'"),
    ],
)
def test_malformed_loras_are_a_400(client, lora_comfy, loras, message):
    body = client.post("/api/generate", json={"prompt": "x", "loras": loras}).get_json()
    assert body["error"].startswith(message), body
    never_asked(lora_comfy, "GET /object_info", "POST /prompt")


def test_a_workflow_without_a_model_does_not_take_loras(client, lora_comfy):
    body = client.post(
        "/api/generate", json={"prompt": "x", "workflow": "pipeline_check", "loras": ["a"]}
    ).get_json()
    assert body["error"].startswith("Unknown field: loras")
    never_asked(lora_comfy, "GET /object_info", "POST /prompt")


def test_default_loras_apply_to_every_job_and_a_request_overrides_one(
    tmp_path, workflows_dir, lora_comfy
):
    lora_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    config = make_config(
        tmp_path,
        workflows_dir,
        default_loras=parse_list("detail.safetensors:0.4, style/ink.safetensors:0.9:0.5"),
    )
    client = create_app(config).test_client()
    body = client.post(
        "/api/generate", json={"prompt": "x", "loras": ["detail.safetensors:1.5"]}
    ).get_json()
    assert [(x["name"], x["strength"], x["source"]) for x in body["parameters"]["loras"]] == [
        ("style/ink.safetensors", 0.9, "default"),
        ("detail.safetensors", 1.5, "request"),
    ]
    assert (
        "strength_clip of style/ink.safetensors is not applied" in body["ignored_fields"]["loras"]
    )
    graph = sent_graph(lora_comfy)
    chained = [graph["22"]["inputs"]["model"][0]]
    while graph[chained[-1]]["class_type"] == "LoraLoaderModelOnly":
        chained.append(graph[chained[-1]]["inputs"]["model"][0])
    assert [graph[n]["inputs"]["lora_name"] for n in chained[:-1]][::-1] == [
        "Flux_2-Turbo-LoRA_comfyui.safetensors",
        "style/ink.safetensors",
        "detail.safetensors",
    ]
    # A workflow that cannot take LoRAs still runs, and says the defaults were not applied.
    lora_comfy.replace("POST", f"{COMFY}/prompt", json={"prompt_id": "p-3", "number": 1})
    check = client.post("/api/generate", json={"prompt": "x", "workflow": "pipeline_check"})
    assert check.status_code == 202
    assert "DEFAULT_LORAS not applied" in check.get_json()["ignored_fields"]["default_loras"]
