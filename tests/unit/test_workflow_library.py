"""The workflows directory: loading, checking, and picking up changes without a restart."""

import json
import os

import pytest

from api.exceptions import WorkflowError
from api.graphs.library import WorkflowLibrary
from api.graphs.manifest import build


def test_shipped_templates_load(workflows_dir):
    library = WorkflowLibrary(workflows_dir)
    assert "flux2_turbo_default" in library.names()
    assert library.invalid() == {}
    described = library.get("flux2_turbo_default").describe()
    steps = described["parameters"]["steps"]
    assert (steps["default"], steps["minimum"], steps["maximum"]) == (8, 1, 200)
    assert described["parameters"]["cfg"]["default"] == 4.0
    assert described["parameters"]["width"]["default"] == 1024
    assert described["parameters"]["seed"]["random_when_missing"] is True


def test_the_users_folder_is_read_beside_the_shipped_one_and_wins_on_a_name(
    workflows_dir, tmp_path
):
    mine = tmp_path / "user-workflows"
    library = WorkflowLibrary(workflows_dir, mine)  # a folder that does not exist yet: none
    shipped = library.names()
    mine.mkdir()
    graph = json.loads((workflows_dir / "pipeline_check.json").read_text())
    (mine / "pipeline_check.json").write_text(json.dumps(graph))
    (mine / "pipeline_check.manifest.json").write_text(
        json.dumps({"description": "mine", "parameters": {}})
    )
    (mine / "dropped.json").write_text(json.dumps(graph))
    assert library.names() == sorted([*shipped, "dropped"])  # no restart
    assert library.get("pipeline_check").description == "mine"
    assert library.get("flux2_turbo_default") is not None  # the shipped ones stay
    os.remove(mine / "pipeline_check.json")
    assert library.get("pipeline_check").description != "mine"  # the shipped one is back


def test_a_new_workflow_is_picked_up_and_a_broken_one_reported(workflows_dir):
    library = WorkflowLibrary(workflows_dir)
    before = library.names()
    (workflows_dir / "mine.json").write_text(
        (workflows_dir / "sidecar_test_sleep.json").read_text()
    )
    (workflows_dir / "mine.manifest.json").write_text(
        json.dumps({"parameters": {"prompt": {"type": "string", "required": True}}})
    )
    (workflows_dir / "broken.json").write_text("{not json")
    assert library.names() == sorted([*before, "mine"])
    assert "not valid JSON" in library.invalid()["broken"]
    os.remove(workflows_dir / "mine.json")
    assert "mine" not in library.names()


def test_a_file_edited_in_place_is_seen_at_the_next_full_scan(workflows_dir, monkeypatch):
    from api.graphs import library as module

    library = WorkflowLibrary(workflows_dir)
    assert "broken" not in library.invalid()
    target = workflows_dir / "sidecar_test_sleep.json"
    folder_mtime = os.stat(workflows_dir).st_mtime_ns
    with open(target, "w") as f:  # in place: the folder's mtime stays
        f.write("{not json")
    assert os.stat(workflows_dir).st_mtime_ns == folder_mtime
    assert library.get("sidecar_test_sleep") is not None  # within FULL_SCAN_SECONDS: not yet
    monkeypatch.setattr(module, "FULL_SCAN_SECONDS", 0.0)
    assert library.get("sidecar_test_sleep") is None
    assert "not valid JSON" in library.invalid()["sidecar_test_sleep"]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"parameters": {"p": {"type": "string", "targets": ["99.text"]}}}, "not in the graph"),
        ({"parameters": {"p": {"type": "string", "targets": ["1.nope"]}}}, "has no input"),
        ({"parameters": {"p": {"type": "list"}}}, "needs a type"),
        (
            {"parameters": {"p": {"type": "integer", "maximum": 3, "targets": ["1.width"]}}},
            "default 64",
        ),
        ({"fixed": {"1.nope": 3}}, "has no input"),
    ],
)
def test_bad_manifests_are_explained(manifest, message):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}
    with pytest.raises(WorkflowError, match=message):
        build("x", graph, manifest)


def test_a_ui_format_workflow_is_explained():
    with pytest.raises(WorkflowError, match="Save \\(API Format\\)"):
        build("x", {"nodes": [], "links": []}, {})


def test_rendering_never_changes_the_template(workflows_dir):
    workflow = WorkflowLibrary(workflows_dir).get("flux2_turbo_default")
    values, _ = workflow.validate({"prompt": "one", "seed": 5})
    graph = workflow.render(values)
    assert graph["6"]["inputs"]["text"] == "one"
    assert workflow.graph["6"]["inputs"]["text"] != "one"
    again, _ = workflow.validate({"prompt": "two"})
    assert again["seed"] != 5 and 0 <= again["seed"] < 2**53
