"""API keys are tenants: each key's jobs, files and uploads are its own (another key gets a 404,
as for a job that does not exist), an admin key sees everything, and each key has its own
share of the limits. Against a real ComfyUI and gunicorn, directly and through nginx."""

import json

import pytest
import requests
import websocket

from tests.integration.conftest import Api, start_nginx, start_sidecar
from tests.support.faulty_proxy import FaultyProxy
from tests.support.images import png_bytes
from tests.support.sidecar import wait_for

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"
BOSS = "boss-key-0123456789abcdef"
# Two named keys, and the older formats (a name is derived from the key).
API_KEYS = f"alice:{ALICE}:generate, bob:{BOB}:generate\n{READER}:read,{BOSS}"
KEYS = {"alice": ALICE, "bob": BOB, "reader": READER, "boss": BOSS, "nobody": None}
SLEEP = "sidecar_test_sleep"


@pytest.fixture(scope="module")
def keyed(comfy, tmp_path_factory):
    """A sidecar with four keys, and the shipped nginx in front of it."""
    root = tmp_path_factory.mktemp("keyed")
    proxy = FaultyProxy("127.0.0.1", comfy.port)
    process = start_sidecar(
        root, comfy, proxy.port, API_KEYS=API_KEYS, RATE_LIMIT="", RATE_LIMIT_GENERATE=""
    )
    nginx = start_nginx(process, comfy, root / "nginx")
    yield process, nginx
    nginx.stop()
    process.stop()
    proxy.stop()


@pytest.fixture(scope="module", params=["direct", "nginx"])
def as_(request, keyed) -> dict[str, Api]:
    """One client per key (and one without), against gunicorn and through nginx."""
    process, nginx = keyed
    base = process.url if request.param == "direct" else nginx.url
    return {name: Api(base, request.param, key=key) for name, key in KEYS.items()}


def ws_url(api: Api, job_id: str) -> str:
    return api.base.replace("http", "ws", 1) + f"/ws/progress/{job_id}"


def ws_status(api: Api, job_id: str, key: str) -> int:
    """The HTTP status of a WebSocket handshake for that job (101 when it opened)."""
    try:
        ws = websocket.create_connection(
            ws_url(api, job_id), header=[f"Authorization: Bearer {key}"], timeout=10
        )
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    ws.close()
    return 101


def small_job(api: Api, prompt: str, **body) -> dict:
    job = api.generate(prompt=prompt, workflow="pipeline_check", width=64, height=64, **body)
    return api.wait_final(job["job_id"])


def test_another_keys_job_is_not_found_anywhere_and_admin_sees_it(as_, comfy):
    alice, bob, reader, boss = as_["alice"], as_["bob"], as_["reader"], as_["boss"]
    final = small_job(alice, "alice's private prompt")
    assert final["status"] == "completed" and final["owner"] == "alice"
    job_id, image = final["job_id"], final["output_image"]
    # Read once more by its owner: through nginx, now a cached answer for alice's key only.
    assert alice.get(f"/api/status/{job_id}").json() == final

    for other in (bob, reader):
        for path in (
            f"/api/status/{job_id}",
            f"/api/status/{job_id}?wait=1",
            f"/api/status/{job_id}/events",
            f"/api/image/{job_id}",
            f"/api/image/{image}",
        ):
            response = other.get(path)
            assert response.status_code == 404, (path, response.text)
            assert "alice's private" not in response.text
        assert job_id not in other.get("/api/jobs").text
        assert job_id not in other.get("/api/history").text
        listing = other.get("/api/outputs").json()
        assert image not in listing["images"] and listing["output_dir"] == "output"
    assert bob.post(f"/api/save/{job_id}", json={"filename": "taken"}).status_code == 404
    assert bob.delete(f"/api/queue/{job_id}").status_code == 404
    assert ws_status(bob, job_id, BOB) == 404

    # Its owner sees all of it; so does an admin key, which also reads the server's paths.
    assert alice.get(f"/api/image/{image}").content == (comfy.output_dir / image).read_bytes()
    # Through nginx, alice's yes for that file is kept now: for her key only.
    for other in (bob, reader, as_["nobody"]):
        assert other.get(f"/api/image/{image}").status_code in (401, 404)
    assert alice.get(f"/api/image/{job_id}").status_code == 200
    # (The listing trails the disk by up to half a second.)
    mine = wait_for(
        lambda: (m := alice.get("/api/outputs").json())["images"][:1] == [image] and m, 10
    )
    assert mine["output_dir"] == "output"
    assert job_id in {job["job_id"] for job in alice.get("/api/jobs").json()["jobs"]}
    assert ws_status(alice, job_id, ALICE) == 101
    assert boss.status(job_id)["owner"] == "alice"
    assert boss.get(f"/api/image/{image}").status_code == 200
    assert boss.get("/api/outputs").json()["output_dir"] == str(comfy.output_dir)


def test_the_queue_shows_a_key_its_own_jobs_and_clear_cancels_only_those(as_):
    alice, bob, boss = as_["alice"], as_["bob"], as_["boss"]
    running = alice.generate(prompt="alice runs", workflow=SLEEP, steps=400, seconds_per_step=0.05)
    wait_for(lambda: alice.status(running["job_id"])["status"] == "processing", 30)
    waiting = alice.generate(prompt="alice waits", workflow=SLEEP, steps=2, seconds_per_step=0)
    bobs = bob.generate(prompt="bob waits", workflow=SLEEP, steps=2, seconds_per_step=0)

    seen = bob.get("/api/queue").json()
    assert set(seen["jobs"]) == {bobs["job_id"]} and seen["total_jobs"] == 1
    listed = [item[1] for item in seen["queue"]["queue_pending"] + seen["queue"]["queue_running"]]
    assert listed == [bobs["prompt_id"]]
    assert seen["others"]["jobs"] >= 2 and seen["others"]["queue_running"] >= 1
    assert "alice" not in json.dumps(seen)
    everything = boss.get("/api/queue").json()
    assert {running["job_id"], waiting["job_id"], bobs["job_id"]} <= set(everything["jobs"])
    assert "others" not in everything

    # A form cannot do this (tests/integration/test_ui_page.py): JSON, from bob's own client.
    cleared = bob.post("/api/queue/clear", json={"include_running": True}).json()
    assert cleared["cancelled"] == [bobs["job_id"]] and cleared["still_running"] == []
    assert bob.status(bobs["job_id"])["status"] == "cancelled"
    assert alice.status(running["job_id"])["status"] == "processing"
    assert alice.status(waiting["job_id"])["status"] == "queued"
    cleared = alice.post("/api/queue/clear", json={"include_running": True}).json()
    assert set(cleared["cancelled"]) == {running["job_id"], waiting["job_id"]}


def test_idempotency_keys_belong_to_the_api_key(as_):
    alice, bob = as_["alice"], as_["bob"]
    key = {"Idempotency-Key": f"nightly-{as_['alice'].mode}"}
    body = {"prompt": "same words", "workflow": "pipeline_check", "width": 64, "height": 64}
    first = alice.post("/api/generate", json=body, headers=key)
    assert first.status_code == 202, first.text
    theirs = bob.post("/api/generate", json=body, headers=key)
    assert theirs.status_code == 202 and "replayed" not in theirs.json()
    assert theirs.json()["job_id"] != first.json()["job_id"]
    # Bob reusing the key for another body is told about his own job only.
    reused = bob.post("/api/generate", json={**body, "prompt": "other words"}, headers=key)
    assert reused.status_code == 422
    assert reused.json()["job_id"] == theirs.json()["job_id"]
    assert first.json()["job_id"] not in reused.text
    again = alice.post("/api/generate", json=body, headers=key).json()
    assert again["replayed"] is True and again["job_id"] == first.json()["job_id"]


def test_batches_and_deliveries_are_the_keys_own(as_):
    alice, bob, boss = as_["alice"], as_["bob"], as_["boss"]
    key = {"Idempotency-Key": f"batch-{alice.mode}"}
    body = {"prompts": ["one", "two"], "workflow": "pipeline_check", "width": 64, "height": 64}
    first = alice.post("/api/batch", json=body, headers=key)
    assert first.status_code == 202, first.text
    batch_id, job_ids = first.json()["batch_id"], first.json()["job_ids"]
    for path in (
        f"/api/batch/{batch_id}",
        f"/api/batch/{batch_id}?wait=1",
        f"/api/batch/{batch_id}/archive",
        f"/api/jobs/{job_ids[0]}/deliveries",
    ):
        response = bob.get(path)
        assert response.status_code == 404, (path, response.text)
    assert bob.delete(f"/api/batch/{batch_id}").status_code == 404
    # The same Idempotency-Key from another API key is a batch of its own.
    theirs = bob.post("/api/batch", json=body, headers=key).json()
    assert theirs["batch_id"] != batch_id and "replayed" not in theirs
    again = alice.post("/api/batch", json=body, headers=key).json()
    assert again["replayed"] is True and again["batch_id"] == batch_id

    done = alice.get(f"/api/batch/{batch_id}?wait=60").json()
    assert done["status"] == "completed", done
    assert alice.get(f"/api/jobs/{job_ids[0]}/deliveries").json()["deliveries"] == []
    assert boss.get(f"/api/batch/{batch_id}").status_code == 200
    bob.get(f"/api/batch/{theirs['batch_id']}?wait=60")


def upload(api: Api, data: bytes, **form) -> requests.Response:
    return api.post("/api/upload", files={"image": ("photo.png", data, "image/png")}, data=form)


def test_uploads_are_per_key_and_references_stay_inside_the_keys_folder(as_, comfy):
    alice, bob = as_["alice"], as_["bob"]
    red, blue = png_bytes(16, 16, (255, 0, 0)), png_bytes(16, 16, (0, 0, 255))
    mine = upload(alice, red, overwrite="true").json()
    assert (mine["name"], mine["subfolder"], mine["reference"]) == ("photo.png", "", "photo.png")
    # Bob's "overwrite" replaces his own photo.png, never alice's.
    assert upload(bob, blue, overwrite="true").status_code == 200
    assert (comfy.input_dir / "keys" / "alice" / "photo.png").read_bytes() == red
    assert (comfy.input_dir / "keys" / "bob" / "photo.png").read_bytes() == blue

    done = alice.generate(
        prompt="use mine", workflow="sidecar_test_load_image", images=["photo.png"]
    )
    assert alice.wait_final(done["job_id"])["status"] == "completed"
    # Bob cannot reach alice's folder, a file of the output folder by name, or her job.
    # ("keys/alice/photo.png" is looked for in bob's own folder, where ComfyUI finds nothing.)
    for ref in (
        "keys/alice/photo.png",
        "../alice/photo.png",
        {"name": "photo.png", "subfolder": "keys/alice"},
        {"name": image_of(alice, done["job_id"]), "type": "output"},
        f"{image_of(alice, done['job_id'])} [output]",
        f"job:{done['job_id']}",
    ):
        response = bob.post(
            "/api/generate",
            json={"prompt": "steal", "workflow": "sidecar_test_load_image", "images": [ref]},
        )
        assert response.status_code in (400, 422), (ref, response.text)


def image_of(api: Api, job_id: str) -> str:
    return api.status(job_id)["output_image"]


def test_saving_names_no_server_path_for_a_key_that_is_not_admin(as_, comfy):
    alice, bob, boss = as_["alice"], as_["bob"], as_["boss"]
    final = small_job(alice, "to keep")
    saved = alice.post(
        f"/api/save/{final['job_id']}", json={"filename": "alice-keeps", "rename": True}
    )
    assert saved.status_code == 201, saved.text
    name = saved.json()["filename"]
    assert saved.json()["path"] == f"output/{name}"
    assert str(comfy.output_dir) not in saved.text
    # The copy is alice's like the image: listed (once the listing has seen the new file) and
    # served to her, not to bob.
    wait_for(lambda: name in alice.get("/api/outputs").json()["images"], 10)
    assert alice.get(f"/api/image/{name}").status_code == 200
    assert bob.get(f"/api/image/{name}").status_code == 404
    by_admin = boss.post(f"/api/save/{final['job_id']}", json={"filename": "boss", "rename": True})
    assert by_admin.json()["path"] == str(comfy.output_dir / by_admin.json()["filename"])


def test_a_key_that_waits_for_its_image_gets_it_as_the_answer(as_, comfy):
    """The image answer passes the same check as GET /api/image: the job's files are its
    key's as soon as the job is final."""
    body = {"workflow": "pipeline_check", "prompt": "bob's own", "width": 64, "height": 64}
    response = as_["bob"].post("/api/generate?wait=30", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    job = as_["bob"].status(response.headers["X-Job-ID"])
    assert job["owner"] == "bob"
    assert response.content == (comfy.output_dir / job["output_image"]).read_bytes()


def test_comfyuis_error_reaches_a_key_without_the_servers_paths(as_, comfy):
    alice, boss = as_["alice"], as_["boss"]
    job = alice.generate(prompt="f", workflow=SLEEP, steps=3, seconds_per_step=0, fail_at_step=1)
    final = alice.wait_final(job["job_id"])
    assert final["status"] == "failed" and "forced failure at step 1" in final["error"]
    # ComfyUI's message names the node's file by its absolute path on the server.
    node_file = "custom_nodes/sidecar_test_nodes.py"
    assert "sidecar_test_nodes.py" in final["error"] and node_file not in final["error"]
    assert node_file not in json.dumps(final["error_details"])
    with alice.get(f"/api/status/{job['job_id']}/events", stream=True) as stream:
        assert node_file not in stream.text
    listed = alice.get("/api/jobs?status=failed").text + alice.get("/api/history").text
    assert node_file not in listed
    # The operator reads ComfyUI's words as they are.
    assert node_file in boss.status(job["job_id"])["error"]


def test_health_says_only_healthy_without_a_key(as_, comfy):
    nobody, alice, boss = as_["nobody"], as_["alice"], as_["boss"]
    assert nobody.get("/api/health").json() == {"status": "healthy", "comfyui": "connected"}
    assert nobody.get("/health").json() == {"status": "ok", "comfyui_available": True}
    told = alice.get("/api/health").json()
    assert told["version"] and told["jobs"] and "devices" in told["system"]
    assert "output_dir" not in told and "tracker" not in told
    assert str(comfy.output_dir) not in json.dumps(told)
    assert "version" in alice.get("/health").json()
    everything = boss.get("/api/health").json()
    assert everything["output_dir"] == str(comfy.output_dir) and everything["tracker"]


def test_each_key_has_its_own_share_of_jobs_and_streams_and_streams_end(own_sidecar):
    # One worker: the per-worker caps are then the whole server's, and exact.
    process, _, _ = own_sidecar(
        API_KEYS=API_KEYS,
        GUNICORN_WORKERS="1",
        MAX_UNFINISHED_JOBS_PER_KEY="2",
        MAX_WATCHERS_PER_KEY="1",
        STREAM_MAX_SECONDS="8",
        RATE_LIMIT="",
        RATE_LIMIT_GENERATE="",
    )
    alice, bob = Api(process.url, key=ALICE), Api(process.url, key=BOB)
    slow = {"workflow": SLEEP, "steps": 400, "seconds_per_step": 0.05}
    first = alice.generate(prompt="a1", **slow)
    alice.generate(prompt="a2", **slow)
    refused = alice.post("/api/generate", json={"prompt": "a3", **slow})
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_jobs"
    assert (
        "MAX_UNFINISHED_JOBS_PER_KEY" in refused.json()["error"] and refused.headers["Retry-After"]
    )
    bobs = bob.generate(prompt="b1", **slow)  # alice's limit is not bob's

    events = f"/api/status/{first['job_id']}/events"
    with alice.get(events, stream=True) as stream:
        assert stream.status_code == 200
        second = alice.get(events, stream=True)
        assert second.status_code == 429 and second.json()["code"] == "too_many_watchers"
        assert ws_status(alice, first["job_id"], ALICE) == 429
        assert alice.get(f"/api/status/{first['job_id']}?wait=5").status_code == 429
        with bob.get(f"/api/status/{bobs['job_id']}/events", stream=True) as theirs:
            assert theirs.status_code == 200
        # The stream of an unfinished job ends by itself after STREAM_MAX_SECONDS.
        kinds = [
            line for line in stream.iter_lines(decode_unicode=True) if line.startswith("event:")
        ]
    assert kinds[0] == "event: snapshot" and kinds[-1] == "event: expired"
    assert "event: end" not in kinds
    # Its slot is free again once it ended.
    wait_for(lambda: alice.get(f"/api/status/{first['job_id']}?wait=0.1").status_code == 200, 5)

    def bobs_socket():
        try:
            return websocket.create_connection(
                ws_url(bob, bobs["job_id"]), header=[f"Authorization: Bearer {BOB}"], timeout=15
            )
        except websocket.WebSocketBadStatusException as exc:
            assert exc.status_code == 429
            return None

    # Bob's event stream above still holds his one slot until the server next writes to it (a
    # keepalive, or its end after STREAM_MAX_SECONDS) and finds him gone.
    ws = wait_for(bobs_socket, 30, 0.2, "bob's watcher slot")
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert int.from_bytes(data[:2], "big") == 1001 and b"lifetime" in data[2:]
    ws.close()
    boss = Api(process.url, key=BOSS)
    boss.post("/api/queue/clear", json={"include_running": True})


@pytest.mark.parametrize("via", ["nginx", "direct"])
def test_wrong_keys_are_held_back_per_client_address(own_sidecar, comfy, tmp_path, via):
    process, _, _ = own_sidecar(
        API_KEYS=API_KEYS, GUNICORN_WORKERS="1", AUTH_FAILURE_LIMIT="5/minute", RATE_LIMIT=""
    )
    nginx = start_nginx(process, comfy, tmp_path / "nginx") if via == "nginx" else None
    try:
        base = nginx.url if nginx else process.url
        # Direct, a client address as a trusted proxy in front would give it (TRUST_PROXY_HOPS).
        where = {} if nginx else {"X-Forwarded-For": "203.0.113.50"}
        guessing = Api(base)
        answers = [
            guessing.get("/api/jobs", headers={**where, "X-API-Key": f"guess-{n:020}"})
            for n in range(8)
        ]
        assert [a.status_code for a in answers] == [401] * 5 + [429] * 3
        assert answers[-1].json()["code"] == "too_many_auth_failures"
        assert int(answers[-1].headers["Retry-After"]) > 0
        # Even the right key waits now, from that address: a guess that is right is not told.
        right = Api(base, key=ALICE)
        assert right.get("/api/jobs", headers=where).status_code == 429
        if not nginx:
            other = {"X-Forwarded-For": "203.0.113.51"}
            assert right.get("/api/jobs", headers=other).status_code == 200
    finally:
        if nginx:
            nginx.stop()
