"""A cluster keeps every job when a node dies or PostgreSQL restarts, runs nothing twice, and
answers 503 (never hangs) while PostgreSQL is down."""

import collections
import threading
import time

import pytest
import requests

from tests.integration.conftest import Api
from tests.support.cluster import FINAL, SLEEP, prompts_by_job, start_cluster
from tests.support.sidecar import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(postgres, tmp_path):
    started = start_cluster(tmp_path, postgres, {"a": True, "b": True})
    yield started
    started.stop()


def submit(client: Api, n: int, steps: int, seconds: float) -> list[str]:
    return [
        client.generate(prompt=f"job {i}", steps=steps, seconds_per_step=seconds, **SLEEP)["job_id"]
        for i in range(n)
    ]


def test_a_node_killed_mid_run_loses_its_jobs_to_the_other_and_none_runs_twice(pair):
    a, b = pair.nodes["a"], pair.nodes["b"]
    client = Api(b.url)
    ids = submit(client, 12, steps=4, seconds=0.25)
    wait_for(
        lambda: any(
            # A job no node has claimed yet shows no "node".
            (s := client.status(j)).get("node") == "a" and s["status"] == "processing"
            for j in ids
        ),
        60,
        0.05,
        "node a to run a job",
    )
    held_by_a = {j for j in ids if client.status(j).get("node") == "a"}
    a.kill()
    a.comfy.kill()  # the whole host is gone: its ComfyUI and everything in it
    finals = {j: client.wait_final(j, timeout=180) for j in ids}
    assert collections.Counter(f["status"] for f in finals.values()) == {"completed": len(ids)}
    survivors = {j for j, f in finals.items() if f["attempts"] > 1}
    assert survivors and survivors <= held_by_a  # taken back from a, run again on b
    assert all(finals[j]["node"] == "b" for j in survivors)
    ran_on_b = prompts_by_job(b.comfy)
    assert all(ran_on_b[j] <= 1 for j in ids)  # never twice on the survivor
    # What a finished before it died was not run again.
    assert not [j for j, f in finals.items() if f["node"] == "a" and ran_on_b[j]]
    lost = Api(b.url).get("/api/nodes").json()
    assert {n["id"]: n["health"] for n in lost["nodes"]}["a"] == "lost"


def test_postgresql_restarted_mid_run_loses_nothing(pair, postgres):
    client = Api(pair.nodes["a"].url)
    ids = submit(client, 10, steps=4, seconds=0.1)
    wait_for(
        lambda: any(client.status(j)["status"] == "processing" for j in ids), 60, 0.05, "a start"
    )
    postgres.stop("immediate")  # a crash, not a clean shutdown
    postgres.start()
    finals = [client.wait_final(j, timeout=180) for j in ids]
    assert collections.Counter(f["status"] for f in finals) == {"completed": len(ids)}
    ran = prompts_by_job(pair.nodes["a"].comfy) + prompts_by_job(pair.nodes["b"].comfy)
    assert all(ran[j] == 1 for j in ids), {j: ran[j] for j in ids if ran[j] != 1}


def test_postgresql_down_is_a_503_with_a_reason_and_nothing_hangs(pair, postgres):
    client = Api(pair.nodes["a"].url)
    done = client.generate(prompt="before", workflow="pipeline_check")
    client.wait_final(done["job_id"])
    postgres.stop("immediate")
    try:
        started = time.monotonic()
        answers = [
            client.post("/api/generate", json={"prompt": "while down", **SLEEP}),
            client.get(f"/api/status/{done['job_id']}"),
            client.get("/api/jobs"),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["code"] == "store_unavailable" and "job database" in body["error"]
        assert time.monotonic() - started < 30  # bounded waits, no hang
        assert client.get("/health").status_code == 200  # the process itself is alive
        ready = client.get("/api/health")
        assert ready.status_code == 503 and ready.json()["code"] == "store_unavailable"
    finally:
        postgres.start()
    wait_for(
        lambda: requests.get(f"{pair.nodes['a'].url}/api/health", timeout=10).status_code == 200,
        60,
        0.2,
        "the node to reconnect",
    )
    after = client.generate(prompt="after", workflow="pipeline_check")
    assert client.wait_final(after["job_id"])["status"] == "completed"
    assert all(s in FINAL for s in (client.status(done["job_id"])["status"],))


def test_long_polls_on_every_node_wake_at_once(pair):
    a, b = Api(pair.nodes["a"].url), Api(pair.nodes["b"].url)
    job = a.generate(prompt="slow", steps=3, seconds_per_step=0.3, **SLEEP)
    version = a.status(job["job_id"])["version"]
    woke = {}

    def long_poll(name: str, client: Api) -> None:
        started = time.monotonic()
        answer = client.get(f"/api/status/{job['job_id']}?wait=30&since={version}")
        woke[name] = (time.monotonic() - started, answer.json()["version"])

    threads = [threading.Thread(target=long_poll, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert woke["a"][1] != version and woke["b"][1] != version
    # Woken by NOTIFY on the change, not by a timeout.
    assert max(seconds for seconds, _ in woke.values()) < 5
