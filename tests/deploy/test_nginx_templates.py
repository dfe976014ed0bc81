"""The nginx templates: every variable declared, rendered exactly as the official image does,
and accepted by `nginx -t` with the values docker compose gives them."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from stack import nginx as stack_nginx
from stack.nginx import OPTIONAL_DIR, TEMPLATES_DIR, NginxProcess, defaults, placeholders

REPO = Path(__file__).resolve().parents[2]
ALL_TEMPLATES = sorted(TEMPLATES_DIR.rglob("*.template")) + sorted(OPTIONAL_DIR.glob("*.template"))


def compose_nginx_environment() -> dict[str, str]:
    """The nginx container's environment as docker compose builds it with the .env defaults:
    nginx/defaults.env, then the service's `environment:` with ${VAR:-default} resolved."""
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["nginx"]
    env = dict(defaults())
    for name, value in service["environment"].items():
        env[name] = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m[2], str(value))
    return env


def test_every_template_variable_is_declared_once_and_used():
    used = set()
    for template in ALL_TEMPLATES:
        used |= placeholders(template.read_text())
    assert used == set(defaults())


def test_python_rendering_equals_the_images_envsubst(tmp_path):
    """The official image runs envsubst with the names of the environment variables that match
    NGINX_ENVSUBST_FILTER; stack/nginx.py must produce the same bytes."""
    env = compose_nginx_environment()
    script = (
        "defined=$(printf '${%s} ' $(awk \"END { for (name in ENVIRON) "
        '{ print ( name ~ /${NGINX_ENVSUBST_FILTER}/ ) ? name : \\"\\" } }" < /dev/null)); '
        'envsubst "$defined" < "$1"'
    )
    # A stray non-NGINX variable (like one the image itself sets) must not be substituted.
    run_env = {"PATH": os.environ["PATH"], "http_host": "EVIL", "request_id": "EVIL", **env}
    for template in ALL_TEMPLATES:
        by_image = subprocess.run(
            ["sh", "-c", script, "sh", str(template)],
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
    text = (TEMPLATES_DIR / "sidecar" / "api-server.conf.template").read_text()
    rendered = stack_nginx.render_text(text, defaults())
    for variable in ("$http_host", "$proxy_add_x_forwarded_for", "$request_id", "$scheme"):
        assert variable in rendered


def test_shipped_values_fit_the_sidecar_and_comfyui():
    values = defaults()
    # Long polls and event streams must outlast nginx's own 60 s default.
    assert int(values["NGINX_API_READ_TIMEOUT"].rstrip("s")) > 60
    assert int(values["NGINX_COMFYUI_READ_TIMEOUT"].rstrip("s")) > 60
    # nginx's body limit is the sidecar's MAX_REQUEST_MB default; ComfyUI's is its own 100 MB.
    assert values["NGINX_MAX_BODY"] == "50m"
    assert compose_nginx_environment()["NGINX_MAX_BODY"] == "50m"
    assert values["NGINX_COMFYUI_MAX_BODY"] == "100m"
    assert values["NGINX_OUTPUTS_DIR"] == "/workspace/ComfyUI/output"


def _compose_values_for_a_local_nginx(tmp_path: Path) -> dict[str, str]:
    """The compose values, except what only exists inside compose: the upstream host names
    (nginx -t resolves them) and the certificate files."""
    env = compose_nginx_environment()
    for name in env:
        if name.endswith("_UPSTREAM"):
            env[name] = "127.0.0.1:9"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    env["NGINX_TLS_CERT"] = str(tmp_path / "cert.pem")
    env["NGINX_TLS_KEY"] = str(tmp_path / "key.pem")
    return {k: v for k, v in env.items() if k in defaults()}


@pytest.mark.parametrize(
    "extra",
    [[], [OPTIONAL_DIR / "tls.conf.template", OPTIONAL_DIR / "gpu1.conf.template"]],
    ids=["default", "tls+gpu1"],
)
def test_nginx_accepts_the_shipped_configuration(tmp_path, extra):
    process = NginxProcess(tmp_path / "nginx", _compose_values_for_a_local_nginx(tmp_path), extra)
    output = process.test()
    assert "test is successful" in output
    assert "[warn]" not in output, output


def test_host_name_mode_shares_the_apis_port(tmp_path):
    values = _compose_values_for_a_local_nginx(tmp_path)
    values["NGINX_COMFYUI_LISTEN"] = values["NGINX_LISTEN"]
    values["NGINX_COMFYUI_SERVER_NAME"] = "comfyui.example.com"
    assert "test is successful" in NginxProcess(tmp_path / "nginx", values).test()


def test_unknown_variables_are_refused(tmp_path):
    with pytest.raises(stack_nginx.NginxError, match="NGINX_TYPO"):
        NginxProcess(tmp_path, {"NGINX_TYPO": "1"}).write()
