"""One API over several GPUs: nodes sharing a PostgreSQL job store, each with its own ComfyUI,
nginx balancing the API over them (tests/integration/cluster.py starts all of it for real)."""

import collections
import json
import threading

import pytest
import requests
import websocket

from tests.conftest import failed
from tests.integration.conftest import Api
from tests.support.cluster import FINAL, SLEEP, prompts_by_job, start_cluster
from tests.support.images import png_bytes
from tests.support.services import S3Server
from tests.support.sidecar import wait_for

pytestmark = pytest.mark.integration
LOAD = "sidecar_test_load_image"


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory):
    # Node b's ComfyUI lacks the test node: it cannot run the sleep workflows, only a can.
    started = start_cluster(
        tmp_path_factory.mktemp("cluster"), postgres, {"a": True, "b": False, "c": True}
    )
    yield started
    started.stop()


def api(url: str) -> Api:
    return Api(url)


def wait_final(client: Api, job_id: str, timeout: float = 120) -> dict:
    return client.wait_final(job_id, timeout)


def test_any_node_answers_for_a_job_another_node_ran(cluster):
    a, b = api(cluster.nodes["a"].url), api(cluster.nodes["b"].url)
    job = a.generate(prompt="made on a", workflow="pipeline_check")
    final = wait_final(b, job["job_id"])
    assert final["status"] == "completed", final
    maker = final["node"]
    other = next(n for name, n in cluster.nodes.items() if name != maker)
    # Status, long poll and the image, from a node that did not run the job.
    there = api(other.url)
    assert there.status(job["job_id"])["output_image"] == final["output_image"]
    waited = there.get(f"/api/status/{job['job_id']}?wait=5&since={final['version']}")
    assert waited.json()["status"] == "completed"
    image = there.get(final["image_url"])
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert image.headers["X-Accel-Buffering"] == "no"  # streamed from the maker (NODE_URL)
    made = cluster.nodes[maker].comfy.output_dir / final["output_image"]
    assert image.content == made.read_bytes()
    assert there.get(f"/api/image/{job['job_id']}").content == made.read_bytes()
    # History and the job list are the cluster's, on every node.
    assert job["job_id"] in {j["job_id"] for j in there.get("/api/jobs").json()["jobs"]}


def test_a_job_that_loads_an_upload_runs_on_the_node_that_has_it(cluster):
    nodes = {name: api(node.url) for name, node in cluster.nodes.items()}
    image = png_bytes(8, 8, (0, 128, 255))
    uploaded = nodes["b"].post("/api/upload", files={"image": ("pin.png", image, "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    reference = uploaded.json()["reference"]
    # Accepted by other nodes (which would claim them themselves): each runs on b, whose
    # ComfyUI has the file; anywhere else ComfyUI would refuse it as an invalid image.
    jobs = [
        nodes[name].generate(prompt="pinned", workflow=LOAD, images=[reference])
        for name in ("a", "c", "a", "c")
    ]
    finals = [wait_final(nodes["a"], job["job_id"]) for job in jobs]
    assert [(f["status"], f["node"]) for f in finals] == [("completed", "b")] * 4, finals
    # An earlier result is loaded where it was made, too.
    again = nodes["c"].generate(workflow=LOAD, images=[f"job:{finals[0]['job_id']}"])
    final = wait_final(nodes["c"], again["job_id"])
    assert (final["status"], final["node"]) == ("completed", "b"), final


def test_a_job_no_node_can_run_waits_saying_why_until_its_deadline(cluster):
    a = api(cluster.nodes["a"].url)
    job = a.generate(prompt="nowhere", workflow="sidecar_test_missing_model", timeout_minutes=0.1)
    status = a.status(job["job_id"])
    assert status["status"] == "queued" and status.get("node") is None
    reason = status["waiting_reason"]
    assert "no live node can run workflow 'sidecar_test_missing_model'" in reason
    assert all(f"{name}:" in reason for name in cluster.nodes), reason
    final = wait_final(a, job["job_id"], 60)
    assert final["status"] == "failed", final
    assert final["error"].startswith("Job timed out after 0.1 minutes, waiting for a node: no")


def test_progress_reaches_streams_and_sockets_on_another_node(cluster):
    a, c = api(cluster.nodes["a"].url), cluster.nodes["c"]
    job = a.generate(prompt="watched", steps=6, seconds_per_step=0.1, **SLEEP)
    socket_url = c.url.replace("http", "ws") + f"/ws/progress/{job['job_id']}"
    ws = websocket.create_connection(socket_url, timeout=60)
    steps = []
    try:
        while True:
            message = json.loads(ws.recv())
            steps.append(message["step"])
            if message["status"] in FINAL:
                break
    finally:
        ws.close()
    assert message["status"] == "completed"
    assert len(set(steps)) >= 3 and steps == sorted(steps)  # live, in order, never backwards


def test_work_is_shared_and_each_job_runs_once(cluster):
    entry = Api(cluster.url, "nginx")
    ids = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        body = {"prompt": f"job {i}", "steps": 2, "seconds_per_step": 0.02, **SLEEP}
        response = Api(cluster.url, "nginx").post("/api/generate", json=body)
        assert response.status_code == 202, response.text
        with lock:
            ids.append(response.json()["job_id"])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 100
    finals = [wait_final(entry, job_id, timeout=300) for job_id in ids]
    assert collections.Counter(f["status"] for f in finals) == {"completed": 100}
    # Each ComfyUI numbers its files from 1; in its node's folder, every name is the cluster's
    # only one of that name, so an image URL means one file whichever node answers it.
    names = [f["output_image"] for f in finals]
    assert len(set(names)) == 100 and all(
        name.startswith(f"{f['node']}/") for name, f in zip(names, finals, strict=True)
    ), names
    by_node = collections.Counter(f["node"] for f in finals)
    assert set(by_node) == {"a", "c"} and min(by_node.values()) >= 10, by_node
    ran = prompts_by_job(cluster.nodes["a"].comfy) + prompts_by_job(cluster.nodes["c"].comfy)
    assert all(ran[job_id] == 1 for job_id in ids), [j for j in ids if ran[j] != 1]
    assert not any(ran[job_id] for job_id in ids if job_id not in ran)


def test_a_workflow_only_some_nodes_can_run_goes_to_them(cluster):
    listed = api(cluster.nodes["b"].url).get("/api/workflows").json()
    assert sorted(listed["runs_on"]["sidecar_test_sleep"]) == ["a", "c"]
    assert sorted(listed["runs_on"]["pipeline_check"]) == ["a", "b", "c"]
    nodes = api(cluster.nodes["b"].url).get("/api/nodes").json()
    assert nodes["clustered"] and nodes["alive"] == 3
    b = next(n for n in nodes["nodes"] if n["id"] == "b")
    assert "SidecarSleepProgress" in b["cannot_run"]["sidecar_test_sleep"]


def test_cancel_from_any_node_stops_the_job_where_it_runs(cluster):
    b = api(cluster.nodes["b"].url)
    job = b.generate(prompt="long", steps=200, seconds_per_step=0.05, **SLEEP)
    wait_for(lambda: b.status(job["job_id"])["status"] == "processing", 60, 0.05, "the start")
    runs_on = b.status(job["job_id"])["node"]
    assert runs_on in ("a", "c")
    answer = requests.delete(f"{cluster.nodes['b'].url}/api/queue/{job['job_id']}", timeout=30)
    assert answer.status_code == 200, answer.text
    final = wait_final(b, job["job_id"])
    assert final["status"] == "cancelled" and final["error"] == "Cancelled by request"
    # Stopped in its own ComfyUI, not just marked (ComfyUI drops it once the node yields).
    comfy = cluster.nodes[runs_on].comfy.url
    wait_for(
        lambda: not requests.get(f"{comfy}/queue", timeout=10).json()["queue_running"],
        10,
        0.05,
        "ComfyUI to stop the prompt",
    )


@pytest.fixture
def s3_pair(postgres, tmp_path, request):
    """Two nodes that share nothing but the store and a bucket (no NODE_URL, no shared
    folder): any image of any node comes from object storage."""
    server = S3Server(tmp_path / "s3").start()
    started = start_cluster(
        tmp_path / "cluster", postgres, {"a": True, "b": True}, NODE_URL="", **server.sidecar_env()
    )
    yield started
    if failed(request):
        print(started.log_tails())  # shown with the failure (captured teardown output)
    started.stop()
    server.stop()


def test_with_object_storage_any_node_serves_any_image(s3_pair):
    a, b = api(s3_pair.nodes["a"].url), api(s3_pair.nodes["b"].url)
    job = a.generate(prompt="stored", workflow="pipeline_check")
    final = wait_for(
        lambda: (s := b.status(job["job_id"]))["status"] in FINAL and s.get("output_urls") and s,
        120,
        0.1,
        "the job and its upload",
    )
    made = s3_pair.nodes[final["node"]].comfy.output_dir / final["output_image"]
    for node in s3_pair.nodes.values():
        served = api(node.url).get(f"/api/image/{job['job_id']}")
        assert served.status_code == 200 and served.content == made.read_bytes(), node.name
        if node.name != final["node"]:  # streamed from the bucket: nginx must not hold it back
            assert served.headers["X-Accel-Buffering"] == "no"
