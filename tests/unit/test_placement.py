"""In a cluster, a job that loads files runs on the node whose ComfyUI has them, and the files a
node saves go to a folder of its own."""

import pytest

from api import outputs, placement
from api.exceptions import InvalidImage
from api.graphs import edit
from api.job import Job


class Store:
    """The two look-ups placement makes of the shared store."""

    def __init__(self, uploads: dict[str, str], images: dict[str, str]) -> None:
        self.uploads, self.images = uploads, images

    def upload_node(self, name: str) -> str | None:
        return self.uploads.get(name)

    def find_by_image(self, name: str) -> Job | None:
        node = self.images.get(name)
        if node is None:
            return None
        return Job(id="j", client_id="c", workflow="w", prompt="", graph={}, node=node)


STORE = Store({"keys/alice/a.png": "a", "b.png": "b"}, {"out/x.png": "a", "y.png": "b"})


@pytest.mark.parametrize(
    ("references", "node"),
    [
        ([], None),
        (["keys/alice/a.png"], "a"),
        (["keys/alice/a.png", "out/x.png [output]"], "a"),
        (["y.png [output]"], "b"),
        (["everywhere.png", "tmp.png [temp]"], None),  # not uploaded through the API
        (["everywhere.png", "b.png"], "b"),
    ],
)
def test_the_node_that_holds_the_inputs(references, node):
    assert placement.pinned_node(references, STORE) == node


def test_inputs_on_two_nodes_are_refused_naming_both():
    with pytest.raises(InvalidImage) as caught:
        placement.pinned_node(["keys/alice/a.png", "y.png [output]"], STORE)
    assert "keys/alice/a.png on node a" in caught.value.message
    assert "y.png on node b" in caught.value.message
    assert caught.value.details == {"field": "images"}


def test_a_nodes_files_are_saved_in_its_own_folder():
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "F"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b/F"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    moved = edit.in_output_folder(graph, "b")
    assert moved["2"]["inputs"]["filename_prefix"] == "b/F"
    assert moved["3"]["inputs"]["filename_prefix"] == "b/F"  # already there: not twice
    assert moved["1"] is graph["1"] and moved["4"] is graph["4"]
    assert graph["2"]["inputs"]["filename_prefix"] == "F"  # the stored graph is not changed
    assert edit.in_output_folder(graph, "") is graph  # one sidecar: as the template says


def test_the_save_folder_is_the_nodes_then_the_dated_one():
    day = 86400 * 365 + 3600  # 1971-01-01, 01:00 UTC
    assert outputs.save_folder("%Y-%m-%d", "", at=day) == "1971-01-01"
    assert outputs.save_folder("img/%Y/%m/%H", "node-b", at=day) == "node-b/img/1971/01/01"
    assert outputs.save_folder("", "node-b", at=day) == "node-b"
    assert outputs.save_folder("", "") == ""


def test_the_sidecar_makes_the_dated_folder_before_comfyui_saves_there(tmp_path, caplog):
    # Made by the sidecar, the folder is its own: it may delete the images (PURGE_FILES).
    folder = outputs.made_save_folder(tmp_path, "%Y", "node-b")
    assert folder.startswith("node-b/") and (tmp_path / folder).is_dir()
    assert outputs.made_save_folder(tmp_path / "x", "", "node-c") == "node-c"
    assert not (tmp_path / "x").exists()  # no pattern: ComfyUI makes a node's folder
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert outputs.made_save_folder(blocked, "%Y") == folder.split("/")[1]  # ComfyUI makes it
    assert "cannot make the output folder" in caplog.text
