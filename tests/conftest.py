"""Shared test helpers."""

import shutil
from pathlib import Path

import pytest

from tests.support.postgres import PostgresProcess

REPO = Path(__file__).resolve().parent.parent
SHIPPED_WORKFLOWS = REPO / "workflows"
TEST_WORKFLOWS = REPO / "tests" / "workflows"


@pytest.fixture
def workflows_dir(tmp_path: Path) -> Path:
    """A workflows directory holding the shipped templates and the test-only ones."""
    target = tmp_path / "workflows"
    target.mkdir()
    for source in (SHIPPED_WORKFLOWS, TEST_WORKFLOWS):
        for path in source.glob("*.json"):
            shutil.copy(path, target / path.name)
    return target


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/support/postgres.py)."""
    with PostgresProcess() as server:
        yield server
