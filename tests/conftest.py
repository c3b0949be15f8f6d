"""Fixtures. Integration tests use the real Redis and Postgres that ./scripts/test
reaches or starts; a missing service is an error, never a skip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from sqlalchemy import Engine, make_url, text

from quota import Gate, Settings
from quota.schema import TABLES
from quota.store import make_engine


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    s = Settings()
    # The tests TRUNCATE tables: never let them near a database that is not a test one.
    if not (make_url(s.database_url).database or "").endswith("_test"):
        pytest.exit(
            f"refusing to test against {s.database_url}: run ./scripts/test, or set "
            "QUOTA_DATABASE_URL to a database whose name ends in _test",
            returncode=2,
        )
    return s


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    # A fresh key prefix per test: tests never see each other's keys (or a user's).
    return base_settings.model_copy(update={"key_prefix": f"qt-{uuid.uuid4().hex[:10]}"})


@pytest.fixture(scope="session")
def engine(base_settings: Settings) -> Iterator[Engine]:
    eng = make_engine(base_settings.database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def pg(engine: Engine) -> Engine:
    """The test database, emptied."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(TABLES)))
    return engine


@pytest.fixture
def r(base_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(base_settings.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def gate(settings: Settings, pg: Engine, r: redis.Redis) -> Iterator[Gate]:
    with Gate(settings) as g:
        yield g
    keys = list(r.scan_iter(match=f"{settings.key_prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def snapshot(r: redis.Redis, prefix: str) -> dict[str, object]:
    """Everything stored under ``prefix`` (type and value), to prove nothing changed."""
    out: dict[str, object] = {}
    for key in sorted(r.scan_iter(match=f"{prefix}:*", count=1000)):
        kind = r.type(key)
        if kind == "hash":
            out[key] = r.hgetall(key)
        elif kind == "zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = r.xrange(key)
        else:
            out[key] = r.get(key)
    return out


def stream_entries(r: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """XRANGE of a whole stream, typed (the client is decode_responses=True)."""
    return cast(list[tuple[str, dict[str, str]]], r.xrange(key))


def pg_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
