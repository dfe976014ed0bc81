"""The compose stack run the way its containers would, from `docker compose config`, through the
documented first-run commands: a real CPU ComfyUI, the sidecar under gunicorn as the image's
non-root user, nginx with its templates rendered as the official image renders them, Docker's
DNS stood in for (tests/support/containers.py says how each part is emulated).

One stack per module, started once (ComfyUI's start dominates); the tests run in file order and
the last one restarts the sidecar with a new address behind the running nginx."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from stack.nginx import NginxProcess
from tests.support import containers
from tests.support.comfyui import ComfyUIProcess, comfyui_env
from tests.support.compose import REPO, compose_binary, copy_checkout, render
from tests.support.containers import Container, EntrypointRefused, dockerfile_image
from tests.support.dns import ServiceDNS
from tests.support.sidecar import SidecarProcess, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(compose_binary() is None, reason="no docker-compose binary"),
    pytest.mark.skipif(containers.available() is not None, reason=str(containers.available())),
]

ADDRESSES = {
    "workspace-init": "127.42.0.2",
    "comfyui": "127.42.0.3",
    "sidecar": "127.42.0.4",
    "nginx": "127.42.0.5",
}
FINAL = ("completed", "failed", "cancelled")


def first_run(project: Path) -> str:
    """The README's first command, run as written in a fresh checkout; returns $KEY."""
    section = (REPO / "README.md").read_text().split("## GPU host (docker compose)", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    (command,) = [line for line in block.splitlines() if "cp .env.example .env" in line]
    out = subprocess.run(
        ["bash", "-c", command.split("   #")[0] + '\necho "$KEY"'],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


class Stack:
    """The running services; `url` is nginx's API server block (what HTTP_PORT publishes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = copy_checkout(root / "checkout")
        self.key = first_run(self.project)
        self.model = render(self.project)
        self.services = self.model["services"]
        self.volumes = {"sidecar-state": root / "volumes" / "sidecar-state"}
        self.image_env, self.image_user, self.image_cmd = dockerfile_image(REPO / "Dockerfile")
        self.dns = ServiceDNS().start()
        self.c = {
            name: self.container(name, ADDRESSES[name])
            for name in ADDRESSES
            if name in self.services
        }
        self.comfyui: ComfyUIProcess | None = None
        self.sidecar: SidecarProcess | None = None
        self.nginx: NginxProcess | None = None

    def container(self, name: str, address: str) -> Container:
        container = Container(
            name, self.services[name], address, self.volumes, self.root / "c" / address
        )
        if name == "sidecar":
            container.mounts["/app"] = REPO  # the image's WORKDIR: COPY api/ workflows/ ...
        self.dns.set(name, address)
        self.dns.set(container.hostname, address)
        return container

    @property
    def url(self) -> str:
        return f"http://{ADDRESSES['nginx']}:80"

    def session(self, key: str | None = None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        if key:
            s.headers["Authorization"] = f"Bearer {key}"
        return s

    def up(self) -> None:
        # Docker creates a missing bind source as a root-owned folder; a new named volume
        # takes the owner of the image's folder it is mounted on (/state: the sidecar's user).
        for container in self.c.values():
            for source in container.mounts.values():
                source.mkdir(parents=True, exist_ok=True) if not source.exists() else None
        uid, _, gid = self.image_user.partition(":")
        os.chown(self.volumes["sidecar-state"], int(uid), int(gid))
        self.run_init()
        self.start_comfyui()
        self.sidecar = self.start_sidecar(self.c["sidecar"])
        self.start_nginx()

    def run_init(self) -> None:
        init = self.c["workspace-init"]
        env = init.environment()
        env["PATH"] = os.environ["PATH"]
        subprocess.run(
            containers.command(init.service), env=env, check=True, capture_output=True, timeout=60
        )

    def start_comfyui(self) -> None:
        container = self.c["comfyui"]
        words = shlex.split(container.translate(container.environment()["CLI_ARGS"]))
        args = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
        python, comfy_dir = comfyui_env()
        # The 2024 ComfyUI the tests run has no --base-directory: ComfyUIProcess lays the same
        # folders out under the base directory itself, and the output folder must be the one
        # compose names.
        self.comfyui = ComfyUIProcess(
            python, comfy_dir, Path(args["--base-directory"]), port=8188, host=container.address
        )
        assert self.comfyui.output_dir == Path(args["--output-directory"])
        self.comfyui.start()

    def start_sidecar(self, container: Container) -> SidecarProcess:
        env = container.environment(self.image_env)
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        assert self.image_cmd[0] == "gunicorn"
        process = SidecarProcess(
            env,
            container.workdir / "gunicorn.log",
            port=int(env["API_PORT"]),
            launcher=container.launcher(self.image_user),
            inherit_env=False,
        )
        return process.start()

    def start_nginx(self) -> None:
        container = self.c["nginx"]
        conf_d = container.workdir / "rendered-conf.d"
        shutil.rmtree(conf_d, ignore_errors=True)
        env = containers.nginx_entrypoint(container, conf_d)
        self.nginx = NginxProcess(container.workdir / "nginx", env, conf_d=conf_d).start()

    def healthcheck(self, name: str, container: Container | None = None) -> int:
        """Run the service's healthcheck as Docker would: in the container, as its user."""
        container = container or self.c[name]
        test = container.service["healthcheck"]["test"]
        test = [containers.unescape(word) for word in test]
        argv = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
        # The container's own loopback is its address here.
        argv = [a.replace("127.0.0.1", container.address) for a in argv]
        user = self.image_user if name.startswith("sidecar") else None
        env = container.environment(self.image_env if user else {})
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        return subprocess.run(
            [*container.launcher(user), *argv], env=env, capture_output=True, timeout=30
        ).returncode

    def down(self) -> None:
        for process in (self.nginx, self.sidecar, self.comfyui):
            if process is not None:
                process.stop()
        self.dns.stop()


@pytest.fixture(scope="module")
def stack():
    root = Path(tempfile.mkdtemp(prefix="comfy-sidecar-deploy-"))
    root.chmod(0o755)  # the sidecar's user must reach its folders under it
    running = Stack(root)
    try:
        running.up()
        yield running
    finally:
        running.down()
        shutil.rmtree(root, ignore_errors=True)


def wait_job(session: requests.Session, base: str, job_id: str) -> dict:
    def final():
        body = session.get(f"{base}/api/status/{job_id}", timeout=10).json()
        return body if body["status"] in FINAL else None

    return wait_for(final, 120, 0.2, f"job {job_id}")


def png(color=(200, 30, 30)) -> bytes:
    import struct
    import zlib

    raw = b"".join(b"\x00" + bytes(color) * 8 for _ in range(8))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + (chunk(b"IEND", b""))
    )


def test_every_service_is_healthy_by_its_own_healthcheck(stack):
    for name, service in stack.services.items():
        if service.get("restart") != "no":
            assert stack.healthcheck(name) == 0, name


def test_health_through_nginx_needs_no_key_and_the_rest_needs_the_one_from_env(stack):
    s = stack.session()
    health = s.get(stack.url + "/api/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "healthy", health.text
    assert s.get(stack.url + "/api/queue", timeout=10).status_code == 401
    assert stack.session(stack.key).get(stack.url + "/api/queue", timeout=10).status_code == 200


def test_a_job_its_image_a_save_and_an_upload_through_nginx(stack):
    s = stack.session(stack.key)
    job = s.post(
        stack.url + "/api/generate",
        json={"prompt": "check", "workflow": "pipeline_check", "width": 64, "height": 64},
        timeout=30,
    )
    assert job.status_code == 202, job.text
    final = wait_job(s, stack.url, job.json()["job_id"])
    assert final["status"] == "completed", final
    written = stack.comfyui.output_dir / final["output_image"]
    # ComfyUI (root in its image) wrote it; the sidecar's user serves, saves and deletes beside it.
    assert written.stat().st_uid == 0

    image = s.get(stack.url + f"/api/image/{final['output_image']}", timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert image.content == written.read_bytes()
    assert "X-Accel-Redirect" not in image.headers  # nginx acted on it
    # What the sidecar answered nginx: a redirect to the internal location, no bytes.
    direct = s.get(
        stack.sidecar.url + f"/api/image/{final['output_image']}",
        headers={"X-Sidecar-Via": "nginx"},
        timeout=10,
    )
    assert direct.headers["X-Accel-Redirect"] == f"/_outputs/{final['output_image']}"
    assert direct.content == b""

    saved = s.post(stack.url + f"/api/save/{final['job_id']}", json={"filename": "kept"})
    assert saved.status_code == 201, saved.text
    copy = stack.comfyui.output_dir / "kept.png"
    assert copy.read_bytes() == written.read_bytes()
    assert copy.stat().st_uid == int(stack.image_user.split(":")[0])

    upload = s.post(
        stack.url + "/api/upload", files={"image": ("deploy.png", io.BytesIO(png()))}, timeout=30
    )
    assert upload.status_code == 200, upload.text
    assert (stack.comfyui.input_dir / upload.json()["name"]).read_bytes() == png()


def test_a_workflow_dropped_in_the_host_folder_runs_without_a_restart(stack):
    s = stack.session(stack.key)
    graph = (REPO / "workflows" / "pipeline_check.json").read_text()
    (stack.project / "user-workflows" / "dropped_in.json").write_text(graph)
    listed = s.get(stack.url + "/api/workflows", timeout=10).json()
    assert "dropped_in" in listed["workflows"], listed
    job = s.post(
        stack.url + "/api/generate",
        json={"prompt": "dropped", "workflow": "dropped_in"},
        timeout=30,
    ).json()
    assert wait_job(s, stack.url, job["job_id"])["status"] == "completed"


def test_comfyuis_ui_is_on_its_own_server_block(stack):
    port = int(stack.c["nginx"].environment()["NGINX_COMFYUI_LISTEN"].rpartition(":")[2])
    published = {int(p["target"]) for p in stack.services["nginx"]["ports"]}
    assert port in published
    page = stack.session().get(f"http://{ADDRESSES['nginx']}:{port}/", timeout=10)
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text
    # The API's server block does not serve it.
    assert stack.session().get(stack.url + "/comfyui/", timeout=10).status_code == 404


def test_unsafe_comfyui_modes_stop_the_nginx_container(stack, tmp_path):
    project = copy_checkout(tmp_path / "checkout")
    env = (stack.project / ".env").read_text() + "COMFYUI_UI_SUBPATH=on\n"
    (project / ".env").write_text(env)
    nginx = Container(
        "nginx", render(project)["services"]["nginx"], "127.42.0.50", {}, tmp_path / "n"
    )
    with pytest.raises(EntrypointRefused, match="COMFYUI_UI_AUTH"):
        containers.nginx_entrypoint(nginx, tmp_path / "conf.d")
    assert not (tmp_path / "conf.d").exists()


def test_a_sidecar_with_a_new_address_is_found_by_the_running_nginx(stack):
    """Docker gives a restarted container a new address: nginx must look the name up again."""
    s = stack.session()
    stack.sidecar.stop()
    gone = s.get(stack.url + "/api/health", timeout=10)
    assert gone.status_code == 502 and gone.json()["code"] == "bad_gateway"
    assert stack.healthcheck("nginx") != 0  # nginx's healthcheck reflects what it can reach
    moved = stack.container("sidecar", "127.42.0.14")
    moved.mounts["/app"] = REPO
    stack.c["sidecar"] = moved
    stack.sidecar = stack.start_sidecar(moved)
    nginx_pid = stack.nginx._proc.pid
    wait_for(
        lambda: s.get(stack.url + "/api/health", timeout=10).status_code == 200,
        30,
        0.2,
        "nginx to reach the sidecar at its new address",
    )
    assert stack.nginx._proc.pid == nginx_pid and stack.nginx.is_running()
    assert stack.healthcheck("sidecar", moved) == 0
    assert stack.healthcheck("nginx") == 0


def test_a_save_the_filesystem_refuses_is_a_clear_error_and_leaves_nothing(stack, tmp_path):
    """Without the shared group (an output folder left to root, 0755, as before
    workspace-init), the sidecar's user cannot write beside ComfyUI's files: the answer must
    say so and name the folder, never 500, and no partial file may stay."""
    s = stack.session(stack.key)
    job = s.post(
        stack.url + "/api/generate",
        json={"prompt": "owned", "workflow": "pipeline_check", "width": 64, "height": 64},
        timeout=30,
    ).json()
    final = wait_job(s, stack.url, job["job_id"])
    private = stack.root / "root-only-output"
    private.mkdir(mode=0o755)
    shutil.copy2(stack.comfyui.output_dir / final["output_image"], private)
    # A second sidecar of the same deployment (same job database, no tracker), as the image's
    # user, whose output folder belongs to root.
    service = stack.services["sidecar"]
    service = {
        **service,
        "environment": {
            **service["environment"],
            "COMFYUI_OUTPUT_DIR": str(private),
            "TRACKER_ENABLED": "false",
        },
    }
    other = Container("sidecar", service, "127.42.0.24", stack.volumes, tmp_path / "other")
    other.mounts["/app"] = REPO
    stack.dns.set(other.hostname, other.address)
    process = stack.start_sidecar(other)
    try:
        answer = s.post(
            process.url + f"/api/save/{final['job_id']}", json={"filename": "denied"}, timeout=10
        )
        assert answer.status_code != 500, answer.text
        assert answer.status_code == 507, answer.text
        assert answer.json()["code"] == "output_not_writable"
        assert str(private) in answer.json()["error"] or "output" in answer.json()["error"]
        assert not (private / "denied.png").exists()
    finally:
        process.stop()
