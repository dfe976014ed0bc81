"""The job stores under test: every contract test runs against the embedded SQLite store and
against a real PostgreSQL server (started once per session, a clean schema per test)."""

import pytest

from api.postgres_store import PostgresJobStore
from api.sqlite_store import SQLiteJobStore
from tests.support.postgres import empty_database


def open_store(kind: str, request, tmp_path):
    if kind == "sqlite":
        return SQLiteJobStore(tmp_path / "jobs.sqlite3")
    server = request.getfixturevalue("postgres")
    empty_database(server.url)
    return PostgresJobStore(server.url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    opened = open_store(request.param, request, tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def pg_store(request, tmp_path):
    opened = open_store("postgresql", request, tmp_path)
    yield opened
    opened.close()
