"""Fixtures. Integration tests use the real Redis and Postgres that ./scripts/test
reaches or starts; a missing service is an error, never a skip."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from sqlalchemy import Engine, make_url, text

from quota import Gate, Settings
from quota.entries import FIELDS, unpack
from quota.housekeeping import forget_prefix
from quota.schema import TABLES
from quota.store import make_engine
from quota.topology import is_cluster, sync_client
from tests.gates import BlockingAsyncGate
from tests.servers import ClusterServers, SentinelServers


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The behavioural suite (integration tests taking the `gate` fixture) runs on a
    single Redis and on a Redis Cluster of our own; a test marked ``standalone`` tests
    what only a single server has (killing its clients, its INFO), one marked
    ``cluster`` what only a cluster has."""
    if (
        "gate" in metafunc.fixturenames
        and "redis_backend" in metafunc.fixturenames
        and "integration" in metafunc.definition.nodeid.split("/")
        and metafunc.definition.get_closest_marker("standalone") is None
        and metafunc.definition.get_closest_marker("cluster") is None
        and metafunc.definition.get_closest_marker("sentinel") is None
    ):
        metafunc.parametrize("redis_backend", ["standalone", "cluster"], indirect=True)


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    if request.node.get_closest_marker("cluster") is not None:
        return "cluster"
    if request.node.get_closest_marker("sentinel") is not None:
        return "sentinel"
    return str(getattr(request, "param", "standalone"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterServers]:
    """A Redis Cluster of our own (3 primaries, 3 replicas), for the whole session:
    started when a test first needs it, stopped by PID at the end."""
    servers = ClusterServers()
    try:
        yield servers.start()
    finally:
        servers.cleanup()


@pytest.fixture(scope="session")
def sentinels() -> Iterator[SentinelServers]:
    """A primary, a replica and three sentinels of our own, for the whole session."""
    servers = SentinelServers()
    try:
        yield servers.start()
    finally:
        servers.cleanup()


@pytest.fixture
def settings(
    base_settings: Settings, tmp_path: Path, redis_backend: str, request: pytest.FixtureRequest
) -> Settings:
    # A fresh key prefix per test: tests never see each other's keys (or a user's);
    # and a spool of its own.
    update: dict[str, object] = {
        "key_prefix": f"qt-{uuid.uuid4().hex[:10]}",
        "spool_dir": tmp_path / "spool",
    }
    if redis_backend == "cluster":
        update["redis_url"] = request.getfixturevalue("cluster").url
    elif redis_backend == "sentinel":
        update["redis_url"] = request.getfixturevalue("sentinels").url
    return base_settings.model_copy(update=update)


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
def r(settings: Settings) -> Iterator[redis.Redis]:
    """A client of the test's Redis: the shared server, or the test cluster (typed as a
    single server's: a test that needs more than both have is marked ``standalone``)."""
    client = sync_client(settings.redis_url, decode_responses=True)
    yield cast(redis.Redis, client)
    client.close()


@pytest.fixture(params=["sync", "async"])
def gate(
    request: pytest.FixtureRequest, settings: Settings, pg: Engine, r: redis.Redis
) -> Iterator[Gate]:
    """Each test that takes it runs against `Gate` and against `AsyncGate` (driven
    through tests/gates.py): one behavioural suite for both."""
    made = Gate(settings) if request.param == "sync" else BlockingAsyncGate(settings)
    with made as g:
        yield cast(Gate, g)
    forget_prefix(r, settings.key_prefix)  # none of a test's keys outlives it


@pytest.fixture
def sync_gate(settings: Settings, pg: Engine, r: redis.Redis) -> Iterator[Gate]:
    """`Gate` alone: for tests of its own thread and connection handling."""
    with Gate(settings) as g:
        yield g
    forget_prefix(r, settings.key_prefix)


def watched(gate: Gate, r: redis.Redis) -> None:
    """Wait until the gate's watch thread has written its epoch key (about a second after
    the gate starts), so that no background write falls inside a before/after check."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if gate._epoch is not None and all(r.exists(key) for key in gate._epochs):
            return
        time.sleep(0.05)


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
    """XRANGE of a whole stream, each entry's event values by name, its time as "at"
    (the client is decode_responses=True)."""
    entries = cast(list[tuple[str, dict[str, str]]], r.xrange(key))
    out = []
    for i, f in entries:
        values, at = unpack(i, [x for kv in f.items() for x in kv])
        out.append((i, {**dict(zip(FIELDS, values, strict=True)), "at": str(at)}))
    return out


def pg_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


@pytest.fixture
def worker_env(
    settings: Settings, base_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Make jobs and subprocesses (which read QUOTA_* variables) use this test's prefix."""
    from quota import runtime

    if is_cluster(settings.redis_url):  # RQ's queue and lease on the shared server
        monkeypatch.setenv("QUOTA_RQ_REDIS_URL", base_settings.redis_url)
        settings = settings.model_copy(update={"rq_redis_url": base_settings.redis_url})
    monkeypatch.setenv("QUOTA_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("QUOTA_REDIS_URL", settings.redis_url)
    runtime.reset()
    yield settings
    runtime.reset()
    for url in {settings.redis_url, settings.rq_url}:
        client = sync_client(url, decode_responses=True)
        forget_prefix(client, settings.key_prefix)  # also what subprocesses (demo, cron) wrote
        client.close()


def ledger_totals(engine: Engine) -> dict[str, int]:
    """Rows, distinct events and token sums of the ledger and of its rollup."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT event_id), coalesce(sum(total_tokens), 0) "
                "FROM ledger"
            )
        ).one()
        roll = conn.execute(
            text("SELECT coalesce(sum(calls), 0), coalesce(sum(total_tokens), 0) FROM ledger_daily")
        ).one()
    return {
        "rows": row[0],
        "events": row[1],
        "tokens": int(row[2]),
        "rollup_calls": int(roll[0]),
        "rollup_tokens": int(roll[1]),
    }


def record_many(gate: Gate, count: int, ports: int = 7, tag: str = "a") -> int:
    """``count`` usage events over several ports, features and models (every fourth with
    a request id made unique by ``tag``); returns the tokens counted."""
    total = 0
    for i in range(count):
        tin, tout = 10 + i % 13, 3 + i % 5
        result = gate.record(
            port_id=f"port-{i % ports}",
            feature=("ocr", "chat", "embed")[i % 3],
            provider="openai",
            model=("gpt-4o", "gpt-4o-mini")[i % 2],
            input_tokens=tin,
            output_tokens=tout,
            request_id=f"{tag}-req-{i}" if i % 4 == 0 else None,
        )
        assert result.stored
        assert not result.duplicate
        total += tin + tout
    return total
