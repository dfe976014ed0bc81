"""A real ComfyUI (CPU, no models), the sidecar under a real gunicorn and the repo's nginx
configuration served by a real nginx, once per session.

The sidecar reaches ComfyUI through a FaultyProxy so tests can cut its WebSocket. The `api`
fixture runs each test twice: against gunicorn directly and through nginx.
"""

import shutil
from pathlib import Path

import pytest
import requests

from api.config import Config
from stack.__main__ import nginx_values
from stack.nginx import NginxProcess
from tests.conftest import SHIPPED_WORKFLOWS, TEST_WORKFLOWS
from tests.support.comfyui import ComfyUIProcess, comfyui_env, free_port
from tests.support.contract import DocumentedAnswers
from tests.support.faulty_proxy import FaultyProxy
from tests.support.sidecar import SidecarProcess, wait_for

FINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    python, comfy_dir = comfyui_env()
    process = ComfyUIProcess(python, comfy_dir, tmp_path_factory.mktemp("comfyui"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def proxy(comfy):
    with FaultyProxy("127.0.0.1", comfy.port) as p:
        yield p


def start_sidecar(root: Path, comfy: ComfyUIProcess, port: int, **env: str) -> SidecarProcess:
    """A sidecar under gunicorn with its own state, workflows (shipped + test-only) and log,
    talking to ComfyUI on `port` (a FaultyProxy in front of it)."""
    workflows = root / "workflows"
    workflows.mkdir(parents=True, exist_ok=True)
    for source in (SHIPPED_WORKFLOWS, TEST_WORKFLOWS):
        for path in source.glob("*.json"):
            shutil.copy(path, workflows / path.name)
    process = SidecarProcess(
        {
            "COMFYUI_HOST": "127.0.0.1",
            "COMFYUI_PORT": str(port),
            "WORKSPACE_PATH": str(root / "workspace"),
            "COMFYUI_OUTPUT_DIR": str(comfy.output_dir),
            "WORKFLOWS_DIR": str(workflows),
            "RECONCILE_INTERVAL": "0.5",
            "LOST_JOB_GRACE": "5",
            "GUNICORN_WORKERS": "2",
            "LOG_LEVEL": "info",
            "RAW_GRAPHS_ENABLED": "true",
            # As behind the shipped nginx (docker-compose.yml): requests that come through it
            # get X-Accel-Redirect image responses, direct ones the bytes.
            "TRUST_PROXY_HOPS": "1",
            "ACCEL_REDIRECT_PREFIX": "/_outputs/",
            **env,
        },
        root / "gunicorn.log",
    )
    process.start()
    wait_for(
        lambda: (process.tracker_state() or {}).get("websocket") == "connected",
        30,
        0.1,
        "the tracker's websocket",
    )
    return process


@pytest.fixture(scope="session")
def sidecar(comfy, proxy, tmp_path_factory):
    process = start_sidecar(tmp_path_factory.mktemp("sidecar"), comfy, proxy.port)
    yield process
    process.stop()


@pytest.fixture
def own_sidecar(comfy, tmp_path):
    """A factory of sidecars of the test's own (own state, own FaultyProxy), for tests that
    kill, stall or reconfigure them. Returns (process, proxy, Api)."""
    started = []

    def make(**env: str):
        proxy = FaultyProxy("127.0.0.1", comfy.port)
        root = tmp_path / f"sidecar{len(started)}"
        process = start_sidecar(root, comfy, proxy.port, **env)
        started.append((process, proxy))
        return process, proxy, Api(process.url)

    yield make
    for process, proxy in started:
        process.stop()
        proxy.stop()


@pytest.fixture(scope="session")
def pg_sidecar(comfy, postgres, tmp_path_factory):
    """A sidecar on the shared PostgreSQL store (a cluster of one node), on the same ComfyUI
    as `sidecar`: the core tests run against both stores."""
    url = postgres.database("core")
    with FaultyProxy("127.0.0.1", comfy.port) as proxy:
        process = start_sidecar(
            tmp_path_factory.mktemp("pg-sidecar"),
            comfy,
            proxy.port,
            JOB_STORE_URL=url,
            NODE_ID="only",
            OUTPUTS_SHARED="true",
            LEASE_SECONDS="6",
        )
        yield process
        process.stop()


def start_nginx(sidecar: SidecarProcess, comfy: ComfyUIProcess, root: Path, **env: str):
    """The repo's nginx templates, rendered as `make stack` renders them, on free ports, in
    front of this sidecar (`env`: STACK_BIND, NGINX_* overrides)."""
    values = nginx_values(
        Config.from_env(sidecar.env),
        {"STACK_HTTP_PORT": str(free_port()), "STACK_COMFYUI_UI_PORT": str(free_port()), **env},
    )
    # ComfyUI's UI directly, not through the fault proxy the sidecar's tests play with.
    values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{comfy.port}"
    process = NginxProcess(root, values)
    process.start()
    return process


@pytest.fixture(scope="session")
def nginx(sidecar, comfy, tmp_path_factory):
    process = start_nginx(sidecar, comfy, tmp_path_factory.mktemp("nginx"))
    yield process
    process.stop()


class Api:
    """A small HTTP client for the sidecar under test, direct or through nginx. Every answer
    it receives is checked against the OpenAPI document (tests/support/contract.py)."""

    def __init__(
        self, base: str, mode: str = "direct", process=None, key: str | None = None
    ) -> None:
        self.base = base
        self.mode = mode
        self.process = process  # the SidecarProcess behind it (its store, its tracker)
        self.session = requests.Session()
        self.session.trust_env = False
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.session.hooks["response"].append(DocumentedAnswers.of(base).hook)

    def get(self, path, **kw):
        return self.session.get(self.base + path, timeout=30, **kw)

    def post(self, path, **kw):
        return self.session.post(self.base + path, timeout=30, **kw)

    def delete(self, path, **kw):
        return self.session.delete(self.base + path, timeout=30, **kw)

    def generate(self, **body) -> dict:
        response = self.post("/api/generate", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def status(self, job_id: str) -> dict:
        response = self.get(f"/api/status/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_final(self, job_id: str, timeout: float = 60) -> dict:
        return wait_for(
            lambda: (s := self.status(job_id))["status"] in FINAL and s,
            timeout,
            0.05,
            f"job {job_id} to finish",
        )


def pytest_generate_tests(metafunc):
    """`api` runs each test against gunicorn and through the shipped nginx; tests marked
    both_stores (the core ones) run a third time on the PostgreSQL store."""
    if "api" in metafunc.fixturenames:
        modes = ["direct", "nginx"]
        if metafunc.definition.get_closest_marker("both_stores"):
            modes.append("postgresql")
        metafunc.parametrize("api", modes, indirect=True, scope="session")


@pytest.fixture(scope="session")
def api(request, sidecar) -> Api:
    if request.param == "nginx":
        return Api(request.getfixturevalue("nginx").url, "nginx", sidecar)
    if request.param == "postgresql":
        process = request.getfixturevalue("pg_sidecar")
        return Api(process.url, "postgresql", process)
    return Api(sidecar.url, "direct", sidecar)


@pytest.fixture
def job_count(api):
    def count() -> int:
        return api.process.query("SELECT COUNT(*) FROM jobs")[0][0]

    return count
