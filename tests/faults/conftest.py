"""Fault tests: each gets a redis-server of its own, to kill, pause or empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from quota import Gate, Settings
from quota.migrate import upgrade
from tests.servers import PostgresServer, RedisServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the module's own (initdb once per module), migrated."""
    server = PostgresServer().start()
    upgrade(server.url())
    yield server
    server.cleanup()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.cleanup()


@pytest.fixture
def fault_settings(settings: Settings, server: RedisServer) -> Settings:
    return settings.model_copy(update={"redis_url": server.url, "redis_timeout": 0.5})


@pytest.fixture
def fgate(fault_settings: Settings, pg: Engine) -> Iterator[Gate]:
    with Gate(fault_settings) as g:
        yield g
