"""Pagination edges, the output index, and file names from users."""

import os
import time

import pytest

from api import outputs, saving
from api.exceptions import InvalidFilename
from api.job import JobStatus
from tests.support.jobs import add_job
from tests.unit.conftest import COMFY


def add_jobs(app, n: int, status=JobStatus.COMPLETED):
    store = app.extensions["sidecar"].store
    for i in range(n):
        add_job(store, f"j{i}", f"p{i}", prompt=f"prompt {i}")
        store.mark_submitted(f"j{i}", f"p{i}")
        if status != JobStatus.QUEUED:
            store.finish(
                f"j{i}",
                status,
                [{"filename": f"f{i}.png", "subfolder": "", "type": "output", "node_id": "9"}],
            )
    return store


@pytest.mark.parametrize(
    ("query", "expected_ids", "next_offset"),
    [
        ("", ["j4", "j3", "j2", "j1", "j0"], None),
        ("?limit=2", ["j4", "j3"], 2),
        ("?limit=2&offset=4", ["j0"], None),
        ("?offset=5", [], None),
        ("?offset=500", [], None),
    ],
)
def test_jobs_pages(client, app, query, expected_ids, next_offset):
    add_jobs(app, 5)
    body = client.get(f"/api/jobs{query}").get_json()
    assert [j["job_id"] for j in body["jobs"]] == expected_ids
    assert body["total"] == 5 and body["next_offset"] == next_offset


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?limit=100000",
        "?offset=-3",
        "?offset=1.5",
        "?status=finished",
        "?status=,",
    ],
)
def test_bad_query_values_are_400(client, query):
    response = client.get(f"/api/jobs{query}")
    assert response.status_code == 400
    assert response.get_json()["details"]["field"] in ("limit", "offset", "status")


def test_history_is_the_contract_shape_newest_first(client, app):
    add_jobs(app, 3)
    body = client.get("/api/history?limit=2").get_json()
    assert list(body["history"]) == ["p2", "p1"]
    entry = body["history"]["p2"]
    assert entry["prompt"] == "prompt 2"
    assert entry["outputs"] == {
        "9": {"images": [{"filename": "f2.png", "subfolder": "", "type": "output"}]}
    }
    assert entry["status"]["status_str"] == "success"
    assert body["total_items"] == 3


def test_queue_answers_from_the_store_when_comfyui_is_down(client, app, fake_comfy):
    import requests

    add_jobs(app, 2, status=JobStatus.QUEUED)
    fake_comfy.get(f"{COMFY}/queue", body=requests.ConnectionError("down"))
    body = client.get("/api/queue").get_json()
    assert body["comfyui"] == "unreachable"
    assert set(body["jobs"]) == {"j0", "j1"} and body["total_jobs"] == 2


def test_output_index_sees_new_and_deleted_files_newest_first(tmp_path):
    root = tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "sub/b.png", "c.webp", "notes.txt"]):
        (root / rel).write_bytes(b"x")
        os.utime(root / rel, (1000 + i, 1000 + i))
    index = outputs.OutputIndex(root, min_interval=0, background=False)
    assert [name for _, name, _ in index.listing()] == ["c.webp", "sub/b.png", "a.png"]
    (root / "sub" / "new.png").write_bytes(b"y")
    os.remove(root / "a.png")
    for folder in (root, root / "sub"):  # see test_outputs_listing_is_fast_enough_to_be_cached
        os.utime(folder, ns=(time.time_ns(), folder.stat().st_mtime_ns + 1))
    names = [name for _, name, _ in index.listing()]
    assert names[0] == "sub/new.png" and "a.png" not in names


def test_output_index_skips_symlinks(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "elsewhere.png").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere.png", root / "link.png")
    os.symlink(tmp_path, root / "dirlink")
    assert outputs.OutputIndex(root, min_interval=0, background=False).listing() == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [("shot", "shot.png"), ("shot.png", "shot.png"), ("My shot-2", "My shot-2.png")],
)
def test_save_names(name, expected):
    assert saving.clean_name(name) == expected


@pytest.mark.parametrize(
    "name", ["", "  ", "../x", "a/b", "a\\b", ".hidden", "x\x00y", "a..b", None, 3, "x" * 200]
)
def test_unsafe_save_names(name):
    with pytest.raises(InvalidFilename):
        saving.clean_name(name)


def test_save_copy_never_overwrites(tmp_path):
    source = tmp_path / "src.png"
    source.write_bytes(b"one")
    out = tmp_path / "out"
    out.mkdir()
    assert saving.save_copy(out, source, "k.png", rename=False).name == "k.png"
    with pytest.raises(saving.NameTaken):
        saving.save_copy(out, source, "k.png", rename=False)
    assert saving.save_copy(out, source, "k.png", rename=True).name == "k_1.png"


def test_resolve_refuses_escapes(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    assert outputs.resolve(root, "ok.png").name == "ok.png"
    for name, sub in [
        ("../x", ""),
        ("x", ".."),
        ("/etc/passwd", ""),
        ("a\x00", ""),
        ("x", "/abs"),
        ("", ""),
    ]:
        with pytest.raises(outputs.UnsafePath):
            outputs.resolve(root, name, sub)
    with pytest.raises(FileNotFoundError):
        outputs.resolve(root, "missing.png")


def test_outputs_listing_is_fast_enough_to_be_cached(tmp_path):
    """Not a timing test: checks that a second listing re-reads nothing unchanged."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    index = outputs.OutputIndex(root, min_interval=0, background=False)
    first = index.listing()
    assert index.listing() is first  # same list object: nothing was rebuilt
    (root / "b.png").write_bytes(b"x")
    # The kernel's coarse clock can leave the directory mtime unchanged within a few ms.
    os.utime(root, ns=(time.time_ns(), root.stat().st_mtime_ns + 1))
    assert [name for _, name, _ in index.listing()][:2] in (["b.png", "a.png"], ["a.png", "b.png"])


def test_watchers_past_the_cap_get_429_with_retry_after(client, app):
    add_jobs(app, 1, status=JobStatus.QUEUED)
    watchers = app.extensions["sidecar"].watchers
    for _ in range(watchers.limit):
        watchers.acquire()
    try:
        for path in ("/api/status/j0?wait=1", "/api/status/j0/events"):
            response = client.get(path)
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "2"
            assert "Too many" in response.get_json()["error"]
    finally:
        for _ in range(watchers.limit):
            watchers.release()
    assert client.get("/api/status/j0").status_code == 200
