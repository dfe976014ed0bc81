"""docker-compose.yml, its overlays, .env.example and the Dockerfile, checked without a Docker
engine: structure and wiring by reading them, syntax by `docker compose config`."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from api.config import SETTINGS, Config
from api.graphs.models import INPUT_FOLDERS
from stack.nginx import defaults as nginx_defaults

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
OVERLAYS = [REPO / "docker-compose.tls.yml", REPO / "docker-compose.gpu2.yml"]
GUNICORN_VARS = {"GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"}
SIDECAR_READS = {s.env for s in SETTINGS} | GUNICORN_VARS


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def services(path: Path = COMPOSE) -> dict:
    return load(path)["services"]


def expand(value: str) -> str:
    """${VAR:-default} as compose resolves it when VAR is unset."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m[2] or "", str(value))


def env_example() -> dict[str, str]:
    found = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


def all_services() -> dict:
    merged = dict(services())
    for overlay in OVERLAYS:
        for name, service in services(overlay).items():
            merged.setdefault(name, {}).update(service)
    return merged


def test_three_services_each_with_healthcheck_restart_policy_and_rotated_logs():
    found = services()
    assert set(found) == {"comfyui", "sidecar", "nginx"}
    for name, service in services().items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["logging"]["driver"] == "json-file", name
        assert service["logging"]["options"]["max-size"], name
        assert service["logging"]["options"]["max-file"], name
    for name, service in services(OVERLAYS[1]).items():
        if "image" in service:  # the new services of the second-GPU overlay
            assert service["healthcheck"]["test"] and service["restart"], name


def test_only_nginx_publishes_ports():
    for name, service in all_services().items():
        if name == "nginx":
            assert service["ports"]
        else:
            assert "ports" not in service, f"{name} publishes a port"


def test_comfyui_reserves_the_gpu_and_listens_only_inside():
    comfyui = services()["comfyui"]
    (device,) = comfyui["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "COMFYUI_IMAGE" in comfyui["image"]
    assert "/system_stats" in " ".join(comfyui["healthcheck"]["test"])


def _mount(service: dict, target: str) -> str:
    for volume in service["volumes"]:
        source, mounted_at, *_ = expand(volume).split(":")
        if mounted_at == target:
            return source
    raise AssertionError(f"nothing mounted at {target}")


def test_one_workspace_wired_as_the_sidecar_reads_it():
    found = services()
    sources = {_mount(found[name], "/workspace") for name in ("comfyui", "sidecar", "nginx")}
    assert len(sources) == 1, sources
    assert any(v.endswith(":/workspace:ro") for v in found["nginx"]["volumes"])

    env = {k: expand(v) for k, v in found["sidecar"]["environment"].items()}
    assert set(env) <= SIDECAR_READS, set(env) - SIDECAR_READS
    config = Config.from_env(env)
    assert config.comfyui_host == "comfyui" and config.comfyui_port == 8188
    assert str(config.workspace_path) == "/workspace"
    assert config.trust_proxy_hops == 1
    assert config.accel_redirect_prefix == "/_outputs/"
    # The job database is on its own named volume, mounted where STATE_DIR points.
    assert _mount(found["sidecar"], str(config.state_dir)) in load(COMPOSE)["volumes"]
    # ComfyUI writes where the sidecar and nginx read.
    cli_args = expand(found["comfyui"]["environment"]["CLI_ARGS"])
    assert f"--output-directory {config.comfyui_output_dir}" in cli_args
    assert "--base-directory /workspace/ComfyUI" in cli_args
    assert nginx_defaults()["NGINX_OUTPUTS_DIR"] == str(config.comfyui_output_dir)
    # nginx's upstreams are these services; its body limit is the sidecar's.
    assert nginx_defaults()["NGINX_SIDECAR_UPSTREAM"] == f"sidecar:{config.api_port}"
    assert nginx_defaults()["NGINX_COMFYUI_UPSTREAM"] == "comfyui:8188"
    nginx_env = found["nginx"]["environment"]
    assert nginx_env["NGINX_MAX_BODY"] == "${MAX_REQUEST_MB:-50}m"
    assert found["sidecar"]["environment"]["MAX_REQUEST_MB"] == "${MAX_REQUEST_MB:-50}"
    assert set(nginx_env) - {"NGINX_ENVSUBST_FILTER"} <= set(nginx_defaults())


def test_the_second_gpu_pair_is_wired_the_same_way():
    gpu1 = services(OVERLAYS[1])
    env = {k: expand(v) for k, v in gpu1["sidecar-gpu1"]["environment"].items()}
    assert set(env) <= SIDECAR_READS
    config = Config.from_env(env)
    cli_args = expand(gpu1["comfyui-gpu1"]["environment"]["CLI_ARGS"])
    assert f"--output-directory {config.comfyui_output_dir}" in cli_args
    # nginx's one /_outputs/ location serves the gpu1 subfolder through the prefix.
    relative = config.comfyui_output_dir.relative_to(nginx_defaults()["NGINX_OUTPUTS_DIR"])
    assert config.accel_redirect_prefix == f"/_outputs/{relative}/"
    (device,) = gpu1["comfyui-gpu1"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["${COMFYUI_GPU1:-1}"]


def test_every_compose_variable_is_documented_in_env_example():
    documented = env_example()
    for path in [COMPOSE, *OVERLAYS]:
        for name, default in re.findall(r"\$\{(\w+)(?::?-([^}]*))?\}", path.read_text()):
            assert name in documented, f"{name} ({path.name}) is not in .env.example"
            assert documented[name] == default, f"{name}: .env.example and {path.name} differ"


def _compose_binary() -> str | None:
    return shutil.which("docker-compose") or (
        str(Path(sys.executable).with_name("docker-compose"))
        if Path(sys.executable).with_name("docker-compose").exists()
        else None
    )


@pytest.mark.parametrize(
    "files",
    [[COMPOSE], [COMPOSE, OVERLAYS[0]], [COMPOSE, OVERLAYS[1]], [COMPOSE, *OVERLAYS]],
    ids=["base", "tls", "gpu2", "all"],
)
def test_docker_compose_config_accepts_it(files):
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no docker-compose binary (requirements-dev.txt installs it on Linux x86_64)")
    argv = [binary, "--env-file", str(REPO / ".env.example")]
    for path in files:
        argv += ["-f", str(path)]
    proc = subprocess.run([*argv, "config", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_dockerfile_base_is_slim_python_pinned_by_version_and_digest():
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile(), re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", dockerfile(), re.M)


def test_dockerfile_runs_as_a_non_root_user():
    users = re.findall(r"^USER\s+(\S+)", dockerfile(), re.M)
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Nothing runs as root after the switch.
    assert dockerfile().rindex("USER ") > dockerfile().rindex("RUN ")


def test_dockerfile_installs_pinned_requirements_and_runs_gunicorn_with_a_healthcheck():
    text = dockerfile()
    assert "pip install --no-cache-dir -r requirements.txt" in text
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line.strip()), line
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "api:create_app()"]' in text
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert "COPY workflows/" in text


def test_dockerfile_and_context_hold_no_secrets():
    text = dockerfile()
    for line in text.splitlines():
        if line.startswith(("ENV", "ARG")) or line.startswith(" "):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE)", line, re.I), line
    assert "COPY . " not in text and "ADD " not in text
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # allow-list: .env, .git, workspace stay out


def test_model_placement_knows_what_the_sidecar_knows(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import place_models
    finally:
        sys.path.pop(0)
    assert place_models.MODEL_INPUT_FOLDERS == INPUT_FOLDERS
    downloads = tmp_path / "downloads"
    (downloads / "nested").mkdir(parents=True)
    readme = (REPO / "README.md").read_text().split("## Model files", 1)[1].split("\n## ")[0]
    table = re.findall(r"^\| `(\w+)/` \| `([^`]+)` \|", readme, re.M)
    assert len(table) == 4
    for _, filename in table[:-1]:
        (downloads / filename).write_bytes(b"weights")
    workspace = tmp_path / "workspace"
    assert place_models.main([str(downloads), "--workspace", str(workspace)]) == 1
    (downloads / "nested" / table[-1][1]).write_bytes(b"lora")
    assert place_models.main([str(downloads), "--workspace", str(workspace)]) == 0
    for folder, filename in table:
        assert (workspace / "ComfyUI" / "models" / folder / filename).is_file()
    assert (workspace / "ComfyUI" / "output").is_dir()


def test_readme_gpu_host_section_is_three_commands():
    section = (REPO / "README.md").read_text().split("## GPU host (docker compose)", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("   #")[0].strip() for line in block.splitlines()]
    assert [c for c in commands if c] == [
        'cp .env.example .env && echo "API_KEYS=$(openssl rand -hex 24)" >> .env',
        "python3 scripts/place_models.py ~/Downloads/flux2",
        "docker compose up -d",
    ]


def test_every_sidecar_in_compose_gets_the_access_settings():
    """Without keys the sidecar listens on loopback only, so nginx must be able to pass them."""
    for name in ("docker-compose.yml", "docker-compose.gpu2.yml"):
        compose = yaml.safe_load((REPO / name).read_text())
        for service_name, service in compose["services"].items():
            env = service.get("environment") or {}
            if "COMFYUI_HOST" in env:
                assert env.get("API_KEYS") == "${API_KEYS:-}", (name, service_name)
                assert "ALLOW_UNAUTHENTICATED" in env, (name, service_name)
