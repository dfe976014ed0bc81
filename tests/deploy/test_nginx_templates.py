"""The nginx templates and the entrypoint script beside them: every variable declared, rendered
exactly as the official image does with the environment `docker compose config` gives the nginx
container, accepted by `nginx -t`, and the unsafe ways of exposing ComfyUI refused by both
renderers (the image's entrypoint and `make stack`'s stack/nginx.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.config import Config
from stack import nginx as stack_nginx
from stack.__main__ import UnsafeBind, check_bind, nginx_values
from stack.nginx import (
    ENTRYPOINT_DIR,
    OPTIONAL_DIR,
    TEMPLATES_DIR,
    NginxError,
    NginxProcess,
    defaults,
    placeholders,
)
from tests.support.compose import COMBINATIONS, compose_binary, copy_checkout, render

REPO = Path(__file__).resolve().parents[2]
ALL_TEMPLATES = sorted(TEMPLATES_DIR.rglob("*.template")) + sorted(OPTIONAL_DIR.glob("*.template"))
# The official image's 20-envsubst-on-templates.sh: envsubst with the names of the environment
# variables that match NGINX_ENVSUBST_FILTER (an awk regular expression).
IMAGE_ENVSUBST = (
    "defined=$(printf '${%s} ' $(awk \"END { for (name in ENVIRON) "
    '{ print ( name ~ /${NGINX_ENVSUBST_FILTER}/ ) ? name : \\"\\" } }" < /dev/null)); '
    'envsubst "$defined" < "$1"'
)
# The image's docker-entrypoint.sh sources *.envsh under `set -e` before rendering.
IMAGE_ENVSH = 'set -e; for f in "$@"; do . "$f"; done; env -0'


def rendered_nginx_env(tmp_path: Path, extra_env: str = "", files=COMBINATIONS[0]) -> dict:
    if compose_binary() is None:
        pytest.skip("no docker-compose binary (requirements-dev.txt, x86_64)")
    project = copy_checkout(tmp_path / "checkout")
    env = (project / ".env.example").read_text() + "API_KEYS=" + "k" * 32 + "\n" + extra_env
    (project / ".env").write_text(env)
    return {
        k: v
        for k, v in render(project, files)["services"]["nginx"]["environment"].items()
        if v is not None
    }


def image_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The container's environment after the image's entrypoint sourced our script."""
    scripts = [str(p) for p in sorted(ENTRYPOINT_DIR.glob("*.envsh"))]
    return subprocess.run(
        ["sh", "-c", IMAGE_ENVSH, "sh", *scripts],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
    )


def after_entrypoint(env: dict[str, str]) -> dict[str, str]:
    proc = image_entrypoint(env)
    assert proc.returncode == 0, proc.stderr
    return dict(e.split("=", 1) for e in proc.stdout.split("\0") if "=" in e)


def test_every_template_variable_is_declared_once_and_used():
    used = set()
    for template in ALL_TEMPLATES:
        used |= placeholders(template.read_text())
    assert used == set(defaults())


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda f: str(len(f)))
def test_python_rendering_equals_the_images_envsubst(tmp_path, files):
    """stack/nginx.py must produce the same bytes as the image, from the same environment."""
    env = after_entrypoint(rendered_nginx_env(tmp_path, files=files))
    # A stray non-NGINX variable (like one the image itself sets) must not be substituted.
    run_env = {"PATH": os.environ["PATH"], "http_host": "EVIL", "request_id": "EVIL", **env}
    for template in ALL_TEMPLATES:
        by_image = subprocess.run(
            ["sh", "-c", IMAGE_ENVSUBST, "sh", str(template)],
            env=run_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        by_python = stack_nginx.render_text(template.read_text(), env)
        assert by_python == by_image, template
        assert "EVIL" not in by_image
        assert not placeholders(by_python), f"unrendered variables in {template}"


def test_nginx_variables_survive_rendering():
    text = "".join(
        (TEMPLATES_DIR / "sidecar" / name).read_text()
        for name in ("api-server.conf.template", "proxy-headers.conf.template")
    )
    rendered = stack_nginx.render_text(text, defaults())
    for variable in ("$http_host", "$proxy_add_x_forwarded_for", "$request_id", "$scheme"):
        assert variable in rendered


@pytest.mark.parametrize(
    ("mb", "size"), [("50", "50m"), ("12.5", "12800k"), ("0.3", "307k"), ("1", "1m")]
)
def test_the_body_limit_is_a_whole_size_nginx_accepts(tmp_path, mb, size):
    """A fractional MAX_REQUEST_MB made nginx crash-loop on "client_max_body_size 12.5m"."""
    env = after_entrypoint(rendered_nginx_env(tmp_path, f"MAX_REQUEST_MB={mb}\n"))
    assert env["NGINX_MAX_BODY"] == size
    # Never more than the sidecar's own cap, int(MB * 1 MiB) bytes.
    units = {"k": 1024, "m": 1024 * 1024}
    assert int(size[:-1]) * units[size[-1]] <= int(float(mb) * 1024 * 1024)
    config = Config.from_env({"MAX_REQUEST_MB": mb, "WORKSPACE_PATH": str(tmp_path)})
    values = nginx_values(config, {"STACK_HTTP_PORT": "18080"})
    values.update(_local(tmp_path))
    process = NginxProcess(tmp_path / "nginx", values)
    assert "test is successful" in process.test()
    assert process.values["NGINX_MAX_BODY"] == size  # make stack renders the same


@pytest.mark.parametrize(
    ("extra_env", "public"),
    [
        ("", "off"),  # the README's API key
        ("API_KEYS=\nALLOW_UNAUTHENTICATED=true\n", "on"),
        ("API_KEYS=\nALLOW_UNAUTHENTICATED=true\nALLOWED_HOSTS=api.example.com\n", "off"),
    ],
    ids=["keys", "public", "public with a host check"],
)
def test_nginx_sends_images_itself_only_where_the_sidecar_checks_nothing(
    tmp_path, extra_env, public
):
    env = rendered_nginx_env(tmp_path, extra_env)
    assert not any("k" * 32 in value for value in env.values())  # keys never reach nginx
    assert after_entrypoint(env)["NGINX_PUBLIC_IMAGES"] == public


def test_signed_image_urls_reach_nginx_with_the_sidecars_secret(tmp_path):
    """IMAGE_URL_SECRET from .env goes to nginx and the sidecar alike; nginx's entrypoint turns
    the signed branch on with it, and nginx -t accepts the result. Unset: off, no secret."""
    assert after_entrypoint(rendered_nginx_env(tmp_path / "off"))["NGINX_SIGNED_IMAGES"] == "off"
    secret = "image-url-secret-0123456789abcdefghij"
    project = tmp_path / "on"
    env = after_entrypoint(rendered_nginx_env(project, f"IMAGE_URL_SECRET={secret}\n"))
    assert env["NGINX_SIGNED_IMAGES"] == "on" and env["NGINX_IMAGE_URL_SECRET"] == secret
    sidecar = render(project / "checkout", COMBINATIONS[0])["services"]["sidecar"]["environment"]
    assert sidecar["IMAGE_URL_SECRET"] == secret
    values = {k: v for k, v in env.items() if k in defaults()}
    values.update(_local(tmp_path))
    output = NginxProcess(tmp_path / "nginx", values).test()
    assert "test is successful" in output and "[warn]" not in output, output


@pytest.mark.parametrize("secret", ["too-short", 'quote"' + "x" * 32, "dollar$" + "x" * 32])
def test_a_secret_nginx_could_not_quote_is_refused_unechoed(tmp_path, secret):
    proc = image_entrypoint({**rendered_nginx_env(tmp_path), "IMAGE_URL_SECRET": secret})
    assert proc.returncode != 0
    assert "refusing to start nginx: IMAGE_URL_SECRET must be 32" in proc.stderr
    assert secret not in proc.stderr


def test_a_body_limit_that_is_no_number_is_refused_with_its_name(tmp_path):
    proc = image_entrypoint(rendered_nginx_env(tmp_path, "MAX_REQUEST_MB=12,5\n"))
    assert proc.returncode != 0
    assert "MAX_REQUEST_MB=12,5" in proc.stderr


def _local(tmp_path: Path) -> dict[str, str]:
    """What only exists inside compose, made local: the upstream names (nginx -t resolves
    them at start only when they are addresses), the certificate files, the outputs, the cache."""
    cert = tmp_path / "cert.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    return {
        "NGINX_TLS_CERT": str(cert),
        "NGINX_TLS_KEY": str(tmp_path / "key.pem"),
        "NGINX_RESOLVER": "127.0.0.1",
        "NGINX_OUTPUTS_DIR": str(tmp_path),
        "NGINX_GPU1_OUTPUTS_DIR": str(tmp_path),
        "NGINX_COMFYUI_HTPASSWD": str(tmp_path / "htpasswd"),
        "NGINX_CACHE_DIR": str(tmp_path / "status-cache"),  # the container's tmpfs
    }


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda f: str(len(f)))
def test_nginx_accepts_the_configuration_compose_gives_it(tmp_path, files):
    env = rendered_nginx_env(tmp_path, files=files)
    values = {k: v for k, v in env.items() if k in defaults() or not k.startswith("NGINX_")}
    # Service names resolve only on a compose network: nginx -t must not need them (resolve).
    assert values["NGINX_SIDECAR_UPSTREAM"] == "sidecar:5000"
    values.update(_local(tmp_path))
    extra = [OPTIONAL_DIR / name for name in ("tls.conf.template", "gpu1.conf.template")]
    extra = [p for p in extra if any(p.name[:4] in f for f in files[1:])]
    process = NginxProcess(tmp_path / "nginx", values, extra)
    output = process.test()
    assert "test is successful" in output
    assert "[warn]" not in output, output


# --- unsafe ways to expose ComfyUI -----------------------------------------------------------

UNSAFE = {
    "subpath": "COMFYUI_UI_SUBPATH=on\n",
    "host name on the API's port": "COMFYUI_UI_LISTEN=80\nCOMFYUI_UI_SERVER_NAME=comfy.example\n",
    "published beyond loopback": "COMFYUI_UI_BIND=0.0.0.0\n",
}


@pytest.mark.parametrize("setting", UNSAFE.values(), ids=UNSAFE.keys())
def test_the_images_entrypoint_refuses_comfyui_without_auth(tmp_path, setting):
    proc = image_entrypoint(rendered_nginx_env(tmp_path, setting))
    assert proc.returncode != 0
    assert "refusing to start nginx" in proc.stderr and "COMFYUI_UI_AUTH" in proc.stderr
    # With basic auth in front, the same mode starts.
    after_entrypoint(rendered_nginx_env(tmp_path, setting + "COMFYUI_UI_AUTH=ComfyUI\n"))


def test_the_tls_host_name_on_the_apis_port_is_refused_too(tmp_path):
    env = rendered_nginx_env(tmp_path, "COMFYUI_UI_TLS_LISTEN=443\n", COMBINATIONS[1])
    assert image_entrypoint(env).returncode != 0


@pytest.mark.parametrize(
    "values",
    [
        {"NGINX_COMFYUI_SUBPATH_ENABLED": "on"},
        {"NGINX_COMFYUI_LISTEN": "127.0.0.1:18080", "NGINX_COMFYUI_SERVER_NAME": "c.test"},
        {"COMFYUI_UI_BIND": "0.0.0.0"},
    ],
    ids=UNSAFE.keys(),
)
def test_make_stacks_renderer_refuses_the_same(tmp_path, values):
    base = {"NGINX_LISTEN": "127.0.0.1:18080", "NGINX_COMFYUI_LISTEN": "127.0.0.1:18288"}
    base.update(_local(tmp_path))
    with pytest.raises(NginxError, match="COMFYUI_UI_AUTH"):
        NginxProcess(tmp_path / "nginx", {**base, **values}).write()
    assert not (tmp_path / "nginx" / "conf.d" / "default.conf").exists()
    safe = {**base, **values, "NGINX_COMFYUI_AUTH": "ComfyUI"}
    assert "test is successful" in NginxProcess(tmp_path / "nginx", safe).test()


def test_make_stack_on_a_public_address_needs_keys_or_an_explicit_allowance(tmp_path):
    public = {"STACK_BIND": "0.0.0.0"}
    workspace = {"WORKSPACE_PATH": str(tmp_path)}
    with pytest.raises(UnsafeBind, match="API_KEYS"):
        check_bind(Config.from_env(workspace), public)
    check_bind(Config.from_env({**workspace, "API_KEYS": "k" * 20}), public)
    check_bind(Config.from_env({**workspace, "ALLOW_UNAUTHENTICATED": "true"}), public)
    check_bind(Config.from_env(workspace), {"STACK_BIND": "127.0.0.1"})
    # The stack command itself stops before starting anything, with that message.
    proc = subprocess.run(
        [sys.executable, "-m", "stack"],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], **workspace, **public, "STACK_HTTP_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "ALLOW_UNAUTHENTICATED=true" in proc.stderr


def test_unknown_variables_are_refused(tmp_path):
    with pytest.raises(NginxError, match="NGINX_TYPO"):
        NginxProcess(tmp_path, {"NGINX_TYPO": "1"}).write()
