"""Fleet fixtures: a real PostgreSQL server for the session, a fresh database per test, and
both state stores behind one fixture so the contract suite runs on each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresServer
from xaiserve.jobs.store import StateStore, open_store


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    postgres_server.start()  # a test that stopped it leaves it stopped
    return postgres_server.database()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    s = open_store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
