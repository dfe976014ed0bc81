"""docker-compose.yml and its overlays, as `docker compose config --format json` renders them for
the base file and every combination of overlays: mount layout, settings, ports, healthchecks,
the first-run refusal; and the Dockerfile and .env.example they rely on."""

import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from api.config import SETTINGS, Config
from api.graphs.models import INPUT_FOLDERS
from tests.support.compose import (
    COMBINATIONS,
    REPO,
    bind_mounts,
    combination_id,
    compose,
    compose_binary,
    copy_checkout,
    render,
)

pytestmark = pytest.mark.skipif(
    compose_binary() is None, reason="no docker-compose binary (requirements-dev.txt, x86_64)"
)

GUNICORN_VARS = {"GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"}
# Settings the compose file sets itself: where ComfyUI is, where to listen, the shared folders.
# Everything else in the registry must come through from .env.
WIRED = {
    "COMFYUI_HOST",
    "COMFYUI_PORT",
    "API_HOST",
    "API_PORT",
    "WORKSPACE_PATH",
    "COMFYUI_OUTPUT_DIR",
    "STATE_DIR",
    "ACCEL_REDIRECT_PREFIX",
    # The drop-in workflows folder is where compose mounts USER_WORKFLOWS_DIR.
    "USER_WORKFLOWS_PATH",
    # The status files the nginx service reads (NGINX_STATUS_DOCS_DIR).
    "STATUS_DOCS_DIR",
}
# What the cluster overlay wires too: the shared store, each node's name and address.
CLUSTER_WIRED = {"JOB_STORE_URL", "NODE_ID", "NODE_URL", "OUTPUTS_SHARED"}
# The shipped templates are baked into the image at WORKFLOWS_DIR's default (/app/workflows).
FROM_THE_IMAGE = {"WORKFLOWS_DIR"}
# Not settings of the sidecar but boto3's, for S3_BUCKET: passed from .env the same way.
CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
MINIO = "docker-compose.minio.yml"
SIDECARS = ("sidecar", "sidecar-gpu1")
KEY = "k" * 32


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the deployment files with the README's first command run in it."""
    project = copy_checkout(tmp_path_factory.mktemp("checkout"))
    (project / ".env").write_text((project / ".env.example").read_text() + f"API_KEYS={KEY}\n")
    return project


@pytest.fixture(scope="module", params=COMBINATIONS, ids=combination_id)
def rendered(request, checkout) -> dict:
    return render(checkout, request.param)


def env_example() -> dict[str, str]:
    found = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


# --- the first run ---------------------------------------------------------------------------


def test_an_untouched_env_example_refuses_to_start_and_says_what_to_set(tmp_path):
    project = copy_checkout(tmp_path / "checkout")
    subprocess.run(["cp", ".env.example", ".env"], cwd=project, check=True)
    proc = compose(project, "config", "--quiet")
    assert proc.returncode != 0
    assert "set API_KEYS in .env" in proc.stderr
    assert "ALLOW_UNAUTHENTICATED=true" in proc.stderr


def test_the_readme_first_commands_give_every_sidecar_its_key(tmp_path):
    """The README's GPU-host block, run as written: the key it generates reaches the sidecars,
    and $KEY is the one in .env, so the README's curl lines work in the same shell."""
    project = copy_checkout(tmp_path / "checkout")
    section = (REPO / "README.md").read_text().split("## GPU host (docker compose)", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    first = [line for line in block.splitlines() if "cp .env.example .env" in line]
    assert len(first) == 1, block
    command = first[0].split("   #")[0] + '\necho "KEY=$KEY"'
    out = subprocess.run(
        ["bash", "-c", command], cwd=project, capture_output=True, text=True, check=True
    ).stdout
    key = out.strip().rpartition("KEY=")[2]
    assert len(key) >= 16
    model = render(project, COMBINATIONS[-1])
    for name in SIDECARS:
        assert model["services"][name]["environment"]["API_KEYS"] == key


def test_allow_unauthenticated_alone_also_starts(tmp_path):
    project = copy_checkout(tmp_path / "checkout")
    env = (project / ".env.example").read_text() + "ALLOW_UNAUTHENTICATED=true\n"
    (project / ".env").write_text(env)
    sidecar = render(project)["services"]["sidecar"]
    assert Config.from_env(sidecar["environment"]).bind_host == "0.0.0.0"


# --- mounts ----------------------------------------------------------------------------------


def test_no_bind_mount_lies_inside_a_read_only_one(rendered):
    """runc cannot create a mount point inside a read-only mount (moby/moby#39587): with the
    overlays' single files inside the base file's read-only templates folder, nginx never
    started. Every target must be outside every other read-only target of its service."""
    for name, service in rendered["services"].items():
        mounts = service.get("volumes", [])
        for inner in mounts:
            for outer in mounts:
                if inner is outer or not outer.get("read_only"):
                    continue
                assert not PurePosixPath(inner["target"]).is_relative_to(outer["target"]), (
                    f"{name}: {inner['target']} is inside the read-only {outer['target']}"
                )


def test_every_bind_source_from_the_checkout_exists_with_the_right_type(rendered, checkout):
    """Docker creates a missing source as an empty root-owned folder: a template file that is
    not there would become a folder, and nginx would not start."""
    for name, service in rendered["services"].items():
        for mount in bind_mounts(service):
            source = Path(mount["source"])
            if not source.is_relative_to(checkout) or source.is_relative_to(checkout / "workspace"):
                continue
            assert source.exists(), f"{name}: {source} is not in the checkout"
            if mount["target"].endswith((".template", ".envsh")):
                assert source.is_file(), f"{name}: {source}"


def test_the_entrypoint_script_is_executable_in_git():
    """The nginx image ignores a script in /docker-entrypoint.d/ without its exec bit, and
    the safety checks with it; a bind mount keeps the checkout's mode."""
    out = subprocess.run(
        ["git", "ls-files", "-s", "nginx/entrypoint.d"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    modes = dict(line.split("\t")[::-1] for line in out.splitlines())
    assert modes, "nothing tracked in nginx/entrypoint.d"
    for path, meta in modes.items():
        assert meta.startswith("100755"), path
        assert (REPO / path).stat().st_mode & stat.S_IXUSR


def _cli_args(service: dict) -> dict[str, str]:
    words = shlex.split(service["environment"]["CLI_ARGS"])
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_each_comfyui_writes_where_its_sidecar_and_nginx_read(rendered):
    services = rendered["services"]
    nginx_env = services["nginx"]["environment"]
    seen = {}
    for sidecar_name in SIDECARS:
        if sidecar_name not in services:
            continue
        sidecar = services[sidecar_name]
        config = Config.from_env(sidecar["environment"])
        comfyui = services[config.comfyui_host]
        args = _cli_args(comfyui)
        assert args["--output-directory"] == str(config.comfyui_output_dir)
        # nginx's /_outputs/ location serves a folder (the second GPU's server block its own);
        # the sidecar's X-Accel-Redirect prefix names its output folder inside it.
        cluster = "postgres" in services  # both sidecars behind the one API server block
        own = "NGINX_GPU1_OUTPUTS_DIR" if sidecar_name == "sidecar-gpu1" and not cluster else None
        served = nginx_env[own or "NGINX_OUTPUTS_DIR"]
        assert config.accel_redirect_prefix.startswith("/_outputs/")
        inside = config.accel_redirect_prefix.removeprefix("/_outputs/")
        assert Path(served, inside) == config.comfyui_output_dir
        # Its status files: where its API's server block reads them, in a folder the workspace
        # step creates for the sidecar's group (a second GPU's sidecar has its own).
        docs = nginx_env["NGINX_GPU1_STATUS_DOCS_DIR" if own else "NGINX_STATUS_DOCS_DIR"]
        assert docs == config.status_docs_dir
        init = services["workspace-init"]["environment"]
        assert docs in init["CREATE_DIRS"].split() and docs in init["SHARED_DIRS"].split()
        # The same host folder behind /workspace in ComfyUI, the sidecar and nginx (read-only).
        for service in (comfyui, sidecar, services["nginx"]):
            (workspace,) = [m for m in bind_mounts(service) if m["target"] == "/workspace"]
            assert workspace["source"] == bind_mounts(sidecar)[0]["source"]
        seen[sidecar_name] = (
            config.comfyui_output_dir,
            args.get("--user-directory", f"{args['--base-directory']}/user"),
            args.get("--input-directory", f"{args['--base-directory']}/input"),
        )
        # Its job database on a named volume of its own.
        (state,) = [v for v in sidecar["volumes"] if v["target"] == str(config.state_dir)]
        assert state["type"] == "volume"
        seen[sidecar_name + "-state"] = state["source"]
    if "sidecar-gpu1" in seen:
        # Two GPUs share nothing they write: outputs, user data, inputs, job databases.
        for a, b in zip(seen["sidecar"], seen["sidecar-gpu1"], strict=True):
            assert a != b and not Path(b).is_relative_to(a), (a, b)
        assert seen["sidecar-state"] != seen["sidecar-gpu1-state"]


def test_the_folders_comfyui_needs_are_made_and_the_outputs_shared_with_the_sidecar(rendered):
    services = rendered["services"]
    init = services["workspace-init"]
    created = init["environment"]["CREATE_DIRS"].split()
    shared = init["environment"]["SHARED_DIRS"].split()
    for name, service in services.items():
        if "CLI_ARGS" in service.get("environment", {}):
            args = _cli_args(service)
            for flag in ("--user-directory", "--input-directory"):
                # ComfyUI refuses to start when these do not exist (it does not create them).
                assert args.get(flag, f"{args['--base-directory']}/{flag[2:-10]}") in created
            assert args["--output-directory"] in shared, name
            assert services[name]["depends_on"]["workspace-init"]["condition"] == (
                "service_completed_successfully"
            )
    # The group the outputs are shared with is the sidecar image's.
    (user,) = re.findall(r"^USER\s+(\S+)", dockerfile(), re.M)
    assert init["environment"]["SIDECAR_GID"] == user.split(":")[1]


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [c for c in COMBINATIONS if len(c) >= 3], ids=combination_id)
def test_every_setting_of_the_registry_reaches_every_sidecar(tmp_path, files):
    """Each setting set in .env arrives in each sidecar container, with .env's value; the few
    compose wires itself are the only exceptions. With every overlay, and with all but MinIO's
    (whose sidecar takes MinIO's own credentials: test_the_minio_overlay_wires_...)."""
    assert COMBINATIONS[-1][-1] == MINIO
    project = copy_checkout(tmp_path / "checkout")
    lines = [(project / ".env.example").read_text()]
    marker = {}
    for setting in SETTINGS:
        marker[setting.env] = f"from-env-{setting.env.lower()}"
    for name in GUNICORN_VARS | CREDENTIALS:
        marker[name] = f"from-env-{name.lower()}"
    lines += [f"{name}={value}" for name, value in marker.items()]
    (project / ".env").write_text("\n".join(lines) + "\n")
    services = render(project, files)["services"]
    wired_here = CLUSTER_WIRED if "postgres" in services else set()
    present = [name for name in SIDECARS if name in services]
    assert "sidecar" in present
    for name in present:
        env = services[name]["environment"]
        for setting, value in marker.items():
            if setting in WIRED | FROM_THE_IMAGE | wired_here:
                assert env.get(setting) != value, f"{name}: {setting} should be wired"
            elif setting in CREDENTIALS and MINIO in files and name == "sidecar":
                assert env.get(setting) != value, f"{name}: {setting} should be MinIO's"
            else:
                assert env.get(setting) == value, f"{name}: {setting} does not arrive"
        assert set(env) <= set(marker), set(env) - set(marker)


def test_settings_not_in_env_are_not_passed_so_the_sidecars_defaults_hold(rendered):
    for name in SIDECARS:
        if name not in rendered["services"]:
            continue
        env = rendered["services"][name]["environment"]
        passed = {k for k, v in env.items() if v is not None}
        # .env.example sets a few; API_KEYS from the README's command; the rest is unset.
        wired = WIRED | (CLUSTER_WIRED if "postgres" in rendered["services"] else set())
        assert passed - wired <= set(env_example()) | {"API_KEYS"}
        config = Config.from_env(
            {k: v for k, v in env.items() if v is not None and k not in CREDENTIALS}
        )
        assert config.api_keys == KEY
        assert config.bind_host == "0.0.0.0"
        assert config.trust_proxy_hops == 1
        assert str(config.workspace_path) == "/workspace"


def test_the_sidecar_reads_the_user_workflows_folder(rendered):
    sidecar = rendered["services"]["sidecar"]
    (mount,) = [m for m in bind_mounts(sidecar) if m["target"] == "/user-workflows"]
    assert mount["read_only"]
    assert sidecar["environment"]["USER_WORKFLOWS_PATH"] == mount["target"]
    assert "USER_WORKFLOWS_PATH" in {s.env for s in SETTINGS}


def test_every_compose_variable_is_documented_in_env_example():
    documented = env_example()
    for path in REPO.glob("docker-compose*.yml"):
        text = path.read_text()
        for name, default in re.findall(r"\$\{(\w+)(?::?-([^}]*))?\}", text):
            assert name in documented, f"{name} ({path.name}) is not in .env.example"
            if default.startswith("${"):
                continue  # x-access-check: no default, a required alternative
            assert documented[name] == default, f"{name}: .env.example and {path.name} differ"


def test_the_minio_overlay_wires_the_sidecar_to_its_bucket(tmp_path):
    """Base + MinIO, from an .env.example with only the README's key added: the sidecar
    uploads to the MinIO service with its credentials, after the bucket is made; nginx serves
    the bucket under /objects/, where the output_urls point; nothing new is published."""
    project = copy_checkout(tmp_path / "checkout")
    (project / ".env").write_text((project / ".env.example").read_text() + f"API_KEYS={KEY}\n")
    services = render(project, ("docker-compose.yml", MINIO))["services"]
    env = services["sidecar"]["environment"]
    config = Config.from_env({k: v for k, v in env.items() if v and k not in CREDENTIALS})
    minio = services["minio"]
    assert config.s3_bucket == services["minio-init"]["environment"]["BUCKET"]
    assert config.s3_endpoint_url == "http://minio:9000" and "9000" in minio["expose"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert len(minio["environment"]["MINIO_ROOT_PASSWORD"]) >= 8
    assert services["sidecar"]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    nginx_env = services["nginx"]["environment"]
    assert nginx_env["NGINX_OBJECTS_ENABLED"] == "on"
    assert nginx_env["NGINX_OBJECTS_BUCKET"] == config.s3_bucket
    assert config.s3_public_base_url == "/objects"
    assert not minio.get("ports") and not services["minio-init"].get("ports")
    # .env wins over the overlay's defaults.
    (project / ".env").write_text(
        (project / ".env").read_text() + "S3_BUCKET=mine\nMINIO_ROOT_PASSWORD=s3cret-s3cret\n"
    )
    services = render(project, ("docker-compose.yml", MINIO))["services"]
    assert services["sidecar"]["environment"]["S3_BUCKET"] == "mine"
    assert services["nginx"]["environment"]["NGINX_OBJECTS_BUCKET"] == "mine"
    assert services["sidecar"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "s3cret-s3cret"


# --- ports and healthchecks ------------------------------------------------------------------


def _listen_ports(nginx_env: dict, templates: list[str]) -> set[int]:
    names = {"NGINX_LISTEN", "NGINX_COMFYUI_LISTEN"}
    if "tls.conf.template" in templates:
        names |= {"NGINX_TLS_LISTEN", "NGINX_COMFYUI_TLS_LISTEN"}
    if "gpu1.conf.template" in templates:
        names |= {"NGINX_GPU1_LISTEN", "NGINX_GPU1_COMFYUI_LISTEN"}
    return {int(nginx_env[n].split()[0].rpartition(":")[2]) for n in names}


def test_nginx_publishes_exactly_the_ports_it_listens_on_and_nothing_else_does(rendered):
    services = rendered["services"]
    for name, service in services.items():
        if name != "nginx":
            assert not service.get("ports"), f"{name} publishes a port"
    nginx = services["nginx"]
    templates = [
        Path(m["target"]).name
        for m in bind_mounts(nginx)
        if m["target"].startswith("/etc/nginx/templates/")
    ]
    published = {int(p["target"]) for p in nginx["ports"]}
    assert published == _listen_ports(nginx["environment"], templates)
    ui_ports = {int(nginx["environment"]["NGINX_COMFYUI_LISTEN"])}
    for port in nginx["ports"]:
        if int(port["target"]) in ui_ports | {8189, 8443}:
            assert port["host_ip"] == "127.0.0.1", port  # ComfyUI's UI: this host only


def test_every_long_running_service_has_a_healthcheck_at_a_reachable_address(rendered):
    for name, service in rendered["services"].items():
        if service.get("restart") == "no":
            continue
        test = " ".join(service["healthcheck"]["test"])
        assert service["restart"] == "unless-stopped", name
        assert service["logging"]["driver"] == "json-file", name
        if name != "nginx":
            # Their own loopback says nothing about whether nginx can reach them.
            assert "127.0.0.1" not in test and "localhost" not in test, (name, test)
            assert "gethostname()" in test or "$(hostname)" in test, (name, test)
        else:
            # nginx's passes through nginx to the sidecar's liveness.
            assert test.endswith("/health"), test


def test_images_the_sidecar_is_built_comfyui_has_an_init_and_only_amd64(rendered):
    services = rendered["services"]
    for name in SIDECARS:
        if name in services:
            assert services[name]["pull_policy"] == "build"
            assert services[name]["build"]["context"]
    for name, service in services.items():
        if "CLI_ARGS" in service.get("environment", {}):
            assert service["init"] is True, name
            (device,) = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert re.fullmatch(r"nginx:1\.30\.\d+-alpine", services["nginx"]["image"])
    assert "amd64" in (REPO / "docs" / "deployment.md").read_text()


# --- Dockerfile ------------------------------------------------------------------------------


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
    healthcheck = text.split("\nHEALTHCHECK ", 1)[1].split("\n\n", 1)[0]
    assert "/health" in healthcheck and "gethostname()" in healthcheck
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
        'KEY=$(openssl rand -hex 24); cp .env.example .env && echo "API_KEYS=$KEY" >> .env',
        "python3 scripts/place_models.py ~/Downloads/flux2",
        "docker compose up -d",
    ]


def test_docker_waits_out_gunicorn_s_graceful_stop_of_every_sidecar(rendered):
    # docker stop kills after its grace period (10 s by default); gunicorn gives the requests
    # in flight graceful_timeout to finish (waiting clients are answered at once).
    conf = (REPO / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r"^graceful_timeout = (\d+)$", conf, re.MULTILINE).group(1))
    for name in SIDECARS:
        if name in rendered["services"]:
            given = rendered["services"][name]["stop_grace_period"]
            assert given.endswith("s") and float(given[:-1]) > graceful, (name, given)
