"""Batches against the real stack: twenty jobs through the shipped nginx, one zip of their
images; a bad item queues nothing; cancelling a batch cancels what it has left."""

import io
import zipfile

from tests.integration.conftest import Api
from tests.support.sidecar import wait_for

QUICK = {"workflow": "pipeline_check", "width": 64, "height": 64}
SLEEP = {"workflow": "sidecar_test_sleep"}


def test_a_batch_of_twenty_through_nginx_finishes_and_its_archive_holds_twenty_images(nginx):
    api = Api(nginx.url, "nginx")
    prompts = [f"batch item {i}" for i in range(20)]
    created = api.post(
        "/api/batch", json={"prompts": prompts, **QUICK}, headers={"Idempotency-Key": "b20"}
    )
    assert created.status_code == 202, created.text
    batch = created.json()
    assert batch["total"] == 20 and len(set(batch["job_ids"])) == 20
    again = api.post(
        "/api/batch", json={"prompts": prompts, **QUICK}, headers={"Idempotency-Key": "b20"}
    )
    assert again.json()["batch_id"] == batch["batch_id"] and again.json()["replayed"] is True

    def finished():
        body = api.get(f"{batch['status_url']}?wait=30").json()
        return body if body["finished"] else None

    done = wait_for(finished, 120, 0, "the batch to finish")
    assert done["status"] == "completed", done["counts"]
    assert done["counts"]["completed"] == 20 and done["images"] == 20
    assert [job["prompt"] for job in done["jobs"]] == prompts
    archive = api.get(batch["archive_url"])
    assert archive.status_code == 200
    assert archive.headers["Content-Type"] == "application/zip"
    members = zipfile.ZipFile(io.BytesIO(archive.content))
    names = members.namelist()
    assert len(names) == 20
    assert names == sorted(names) and names[0].startswith("001_") and names[-1].startswith("020_")
    for name, job in zip(names, done["jobs"], strict=True):
        data = members.read(name)
        assert data.startswith(b"\x89PNG")
        assert data == api.get(job["image_url"]).content


def test_one_bad_item_is_a_400_naming_it_and_nothing_is_queued(sidecar, job_count):
    api = Api(sidecar.url)
    before = job_count()
    bad = api.post(
        "/api/batch", json={"jobs": [{"prompt": "fine"}, {"prompt": "x", "width": 7}], **QUICK}
    )
    assert bad.status_code == 400
    body = bad.json()
    assert body["code"] == "invalid_batch" and body["details"]["index"] == 1
    assert body["details"]["field"] == "width"
    assert job_count() == before


def test_cancelling_a_batch_cancels_its_unfinished_jobs(sidecar):
    api = Api(sidecar.url)
    created = api.post(
        "/api/batch",
        json={"prompts": ["c1", "c2", "c3"], "steps": 300, "seconds_per_step": 0.1, **SLEEP},
    )
    assert created.status_code == 202, created.text
    batch = created.json()
    wait_for(
        lambda: api.get(batch["status_url"]).json()["counts"]["processing"] == 1,
        30,
        0.05,
        "the first job to run",
    )
    cancelled = api.session.delete(api.base + batch["status_url"], timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert sorted(cancelled.json()["cancelled"]) == sorted(batch["job_ids"])
    final = api.get(f"{batch['status_url']}?wait=10").json()
    assert final["status"] == "cancelled" and final["counts"]["cancelled"] == 3
