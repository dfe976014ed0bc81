"""The README's curl examples run as written against the real stack."""

import os
import re
import subprocess
import zipfile
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def curl_blocks() -> list[str]:
    section = README.read_text().split("## Using it with curl", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_readme_has_curl_examples():
    assert len(curl_blocks()) >= 2


def test_readme_curl_examples_run(api, tmp_path):
    env = {**os.environ, "API": api.base, "WORKFLOW": "pipeline_check", "NO_PROXY": "*"}
    for block in curl_blocks():
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{block}\n--- stdout\n{result.stdout}\n{result.stderr}"
        assert '"error"' not in result.stdout or "healthy" in result.stdout, result.stdout
    saved = {path.name: path.read_bytes() for path in tmp_path.glob("*.png")}
    # The polling loop's image, the one ?wait= answered with, and the image that was the answer.
    assert len(saved) == 3 and {"waited.png", "answered.png"} <= set(saved), sorted(saved)
    assert all(content.startswith(b"\x89PNG") for content in saved.values())
    with zipfile.ZipFile(tmp_path / "batch.zip") as batch:
        names = batch.namelist()
        assert len(names) == 4 and all(batch.read(n).startswith(b"\x89PNG") for n in names)
