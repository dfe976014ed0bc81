"""The job stores under test: every contract test runs against the embedded SQLite store and
against a real PostgreSQL server (started once per session, a clean schema per test)."""

import psycopg
import pytest

from api.postgres_store import PostgresJobStore
from api.sqlite_store import SQLiteJobStore
from tests.support.postgres import PostgresProcess


@pytest.fixture(scope="session")
def postgres():
    with PostgresProcess() as server:
        yield server


def empty_database(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


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
