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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (`item.rep_call`...): a fixture can tell in its
    teardown whether the test failed, and print what explains it."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def failed(request) -> bool:
    """Whether the test of this fixture request failed (its call phase)."""
    report = getattr(request.node, "rep_call", None)
    return bool(report and report.failed)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/support/postgres.py)."""
    with PostgresProcess() as server:
        yield server
