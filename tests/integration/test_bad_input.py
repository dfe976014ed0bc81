"""Bad input gets a 400, never a 500, a hang, or work for ComfyUI: JSON that is not JSON,
absurd nesting, made-up names, sizes no GPU should be asked for, deadlines past the operator's.
Against the real gunicorn and ComfyUI, directly and through nginx."""

import json
import shutil
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import Api, start_sidecar
from tests.support.faulty_proxy import FaultyProxy

EXPORTED = Path(__file__).resolve().parents[1] / "fixtures" / "exported"
OBJECT_INFO = b"GET /object_info HTTP/"
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "raw",
    [
        '{"prompt": "x", "workflow": "pipeline_check", "timeout_minutes": NaN}',
        '{"prompt": "x", "cfg": NaN}',
        '{"prompt": "x", "workflow": "pipeline_check", "timeout_minutes": Infinity}',
        '{"prompt": "x", "workflow": "pipeline_check", "timeout_minutes": -Infinity}',
        "[" * 200_000,
        '{"prompt": "x", "workflow": "pipeline_check", "metadata": ' + "[" * 100 + "]" * 100 + "}",
    ],
    ids=["nan-deadline", "nan-cfg", "infinity", "minus-infinity", "deep", "100-deep"],
)
def test_json_that_is_not_json_is_a_400(api, sidecar, job_count, raw):
    before = job_count()
    for path in ("/api/generate", "/api/workflows/execute"):
        response = api.post(path, data=raw, headers=JSON)
        assert response.status_code == 400, (path, response.text)
        assert "not valid JSON" in response.json()["error"]
    assert job_count() == before
    assert "RecursionError" not in sidecar.log_tail(400)


def test_a_deadline_past_the_operators_is_a_400(api):
    body = {"prompt": "x", "workflow": "pipeline_check", "width": 64, "height": 64}
    week = api.post("/api/generate", json={**body, "timeout_minutes": 7 * 24 * 60})
    assert week.status_code == 400
    assert week.json()["details"]["allowed"]["maximum"] == 60  # JOB_TIMEOUT_MINUTES
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
    raw = api.post("/api/workflows/execute", json={"workflow": graph, "timeout_minutes": 61})
    assert raw.status_code == 400 and "JOB_TIMEOUT_MINUTES" in raw.json()["error"]
    shorter = api.generate(**body, timeout_minutes=30)
    assert api.wait_final(shorter["job_id"])["status"] == "completed"


@pytest.fixture(scope="module")
def detected(comfy, tmp_path_factory):
    """A sidecar whose workflows include an exported SD1.5 graph without a manifest (its
    parameters are detected), the same graph with a manifest that widens the width, and a
    FaultyProxy in front of ComfyUI that counts /object_info requests."""
    proxy = FaultyProxy("127.0.0.1", comfy.port)
    process = start_sidecar(
        tmp_path_factory.mktemp("detected"),
        comfy,
        proxy.port,
        CATALOG_REFRESH_INTERVAL="30",
        RATE_LIMIT="",
        RATE_LIMIT_GENERATE="",
    )
    workflows = Path(process.env["WORKFLOWS_DIR"])
    shutil.copy(EXPORTED / "sd15_basic.json", workflows / "sd15_detected.json")
    shutil.copy(EXPORTED / "sd15_basic.json", workflows / "sd15_wide.json")
    manifest = {"detect": True, "parameters": {"width": {"maximum": 4096}}}
    (workflows / "sd15_wide.manifest.json").write_text(json.dumps(manifest))
    yield process, proxy
    process.stop()
    proxy.stop()


def test_made_up_names_do_not_make_every_request_fetch_object_info(detected):
    process, proxy = detected
    proxy.watch_requests(OBJECT_INFO)
    answers = []

    def ask(n: int) -> None:
        body = {"prompt": "x", "workflow": "sd15_detected", "sampler": f"made_up_{n}"}
        answers.append(Api(process.url).post("/api/generate", json=body))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 20
    for answer in answers:
        assert answer.status_code == 400 and answer.json()["code"] == "unknown_sampler"
        assert "euler" in answer.json()["details"]["available"]
    # At most one fresh fetch per worker (2), where each request used to force one (20).
    assert proxy.requests_seen(OBJECT_INFO) <= 2


def test_a_graph_without_a_manifest_gets_safe_ranges_that_a_manifest_widens(detected):
    process, _ = detected
    api = Api(process.url)
    described = api.get("/api/workflows/sd15_detected").json()["parameters"]
    assert described["width"]["maximum"] == 2048 and described["batch_size"]["maximum"] == 4
    assert described["steps"]["maximum"] == 100
    for field, value in (("width", 8192), ("height", 4096), ("batch_size", 16), ("steps", 200)):
        response = api.post(
            "/api/generate", json={"prompt": "x", "workflow": "sd15_detected", field: value}
        )
        assert response.status_code == 400, (field, response.text)
        assert response.json()["details"]["field"] == field
    # The manifest's range: past the request check, ComfyUI then says its checkpoint is missing.
    wide = api.post("/api/generate", json={"prompt": "x", "workflow": "sd15_wide", "width": 4096})
    assert wide.status_code == 422 and wide.json()["code"] == "comfyui_rejected", wide.text
