"""Configuration: parsing, defaults, and the README table kept in step with the code."""

import re
from pathlib import Path

import pytest

from api.config import SETTINGS, Config, ConfigError

REPO = Path(__file__).resolve().parents[2]
GUNICORN_VARS = ("GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT")


def readme_table() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| `([^`]*)` \|", section, re.M)
    return dict(rows)


def test_defaults_match_the_contract():
    config = Config.from_env({})
    assert (config.comfyui_host, config.comfyui_port) == ("localhost", 8188)
    assert (config.api_host, config.api_port) == ("0.0.0.0", 5000)
    assert config.workspace_path == Path("/workspace")
    assert config.debug is False
    assert config.comfyui_output_dir == Path("/workspace/ComfyUI/output")
    assert config.state_dir == Path("/workspace/sidecar")
    assert config.default_workflow == "flux2_turbo_default"
    assert config.workflows_dir == REPO / "workflows"


def test_environment_overrides():
    config = Config.from_env(
        {
            "COMFYUI_HOST": "comfyui",
            "COMFYUI_PORT": "9000",
            "DEBUG": "yes",
            "WORKSPACE_PATH": "/data",
        }
    )
    assert config.comfyui_url == "http://comfyui:9000"
    assert config.debug is True
    assert config.comfyui_output_dir == Path("/data/ComfyUI/output")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMFYUI_PORT", "http"),
        ("API_PORT", "70000"),
        ("DEBUG", "maybe"),
        ("RECONCILE_INTERVAL", "0"),
        ("OUTPUT_SUBFOLDER", "../elsewhere"),
        ("OUTPUT_SUBFOLDER", "/var/images"),
        ("OUTPUT_SUBFOLDER", "a/../../b"),
        ("OUTPUT_SUBFOLDER", "a\\b"),
        ("OUTPUT_SUBFOLDER", "my images"),
        ("OUTPUT_SUBFOLDER", "%c"),  # renders with spaces and colons
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_readme_table_and_code_agree():
    documented = readme_table()
    in_code = {s.env: s.default for s in SETTINGS}
    for name in GUNICORN_VARS:
        assert name in documented, f"{name} is not in the README table"
    documented = {k: v for k, v in documented.items() if k not in GUNICORN_VARS}
    assert documented == in_code


def test_gunicorn_reads_what_the_readme_documents():
    source = (REPO / "gunicorn.conf.py").read_text()
    for name in GUNICORN_VARS:
        assert f'"{name}"' in source


def test_an_empty_text_setting_means_empty_not_default():
    config = Config.from_env({"RATE_LIMIT": "", "COMFYUI_PORT": ""})
    assert config.rate_limit == ""
    assert config.comfyui_port == 8188


def test_an_output_subfolder_is_a_relative_strftime_pattern():
    for pattern in ("%Y-%m-%d", "images/%Y/%m", "sidecar_out"):
        assert Config.from_env({"OUTPUT_SUBFOLDER": pattern}).output_subfolder == pattern
    assert Config.from_env({}).output_subfolder == ""
