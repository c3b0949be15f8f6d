"""Draining usage streams into the Postgres ledger, with RQ jobs and real crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from sqlalchemy import Engine, text

from quota import DatabaseUnavailable, Gate, Settings
from quota.drain import GROUP, Drainer
from quota.entries import FIELDS, event_value
from quota.ids import uuid7
from quota.periods import Windows, from_ms, to_ms
from tests.conftest import ledger_totals, record_many, stream_entries


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    """These tests are the drain's, not the gates': one gate feeds them."""
    return sync_gate


def run_drain_jobs(settings: Settings) -> None:
    """Enqueue every drain job, as `quota cron` does each second, and run them
    in-process (SimpleWorker, burst)."""
    conn = redis.Redis.from_url(settings.rq_url)
    queue = Queue(settings.queue, connection=conn)
    for group in range(settings.drain_jobs):
        queue.enqueue("workers.jobs.drain", group)
    SimpleWorker([queue], connection=conn).work(burst=True)
    conn.close()


def test_n_events_become_n_rows_with_matching_rollups(
    worker_env: Settings, gate: Gate, pg: Engine
) -> None:
    tokens = record_many(gate, 600)
    d = gate.reserve("port-1", 50, "ocr")
    gate.commit(d.reservation_id or "", input_tokens=20, output_tokens=5, provider="a", model="b")
    run_drain_jobs(worker_env)
    assert ledger_totals(pg) == {
        "rows": 601,
        "events": 601,
        "tokens": tokens + 25,
        "rollup_calls": 601,
        "rollup_tokens": tokens + 25,
    }
    with pg.connect() as conn:
        mismatched = conn.execute(
            text("""
            SELECT count(*) FROM ledger_daily r FULL JOIN (
                SELECT port_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, feature,
                       provider, model, sum(total_tokens) AS t, count(*) AS c
                FROM ledger GROUP BY 1, 2, 3, 4, 5) l
            USING (port_id, day, feature, provider, model)
            WHERE r.total_tokens IS DISTINCT FROM l.t OR r.calls IS DISTINCT FROM l.c""")
        ).scalar_one()
    assert mismatched == 0
    # Acknowledged entries are trimmed; nothing is left waiting.
    drainer = Drainer(worker_env, gate.redis, pg)
    assert all(lag.length == 0 and lag.pending == 0 for lag in drainer.lag())
    # Running the drain again (redelivery, a second worker) changes nothing.
    run_drain_jobs(worker_env)
    assert ledger_totals(pg)["rows"] == 601


def test_breakdown_and_daily_series_come_from_the_ledger(
    worker_env: Settings, gate: Gate, pg: Engine
) -> None:
    gate.set_budget("port-0", enabled=True, period="day", updated_by="u")
    record_many(gate, 300, ports=1)
    run_drain_jobs(worker_env)
    with pg.connect() as conn:
        expected = {
            f: (int(t), int(c))
            for f, t, c in conn.execute(
                text("SELECT feature, sum(total_tokens), count(*) FROM ledger GROUP BY feature")
            )
        }
    got = gate.breakdown("port-0")
    assert {b.feature: (b.tokens, b.calls) for b in got} == expected
    assert [b.tokens for b in got] == sorted((b.tokens for b in got), reverse=True)
    assert sum(b.tokens for b in got) == gate.current_period_tokens("port-0")
    today = datetime.now(UTC).date()
    series = gate.daily_usage("port-0", today - timedelta(days=3), today)
    assert {(s.day, s.feature) for s in series} <= {(today, f) for f in expected}
    assert sum(s.calls for s in series) == 300


def test_lag_reports_what_waits(worker_env: Settings, gate: Gate, pg: Engine) -> None:
    record_many(gate, 50, ports=1)
    shard = gate.layout.for_port("port-0").shard
    drainer = Drainer(worker_env, gate.redis, pg)
    time.sleep(0.05)
    before = drainer.shard_lag(shard)
    assert (before.length, before.undelivered) == (50, 50)
    assert before.oldest_undrained_age_s is not None
    assert before.oldest_undrained_age_s >= 0.04
    drainer.drain_shard(shard)
    after = drainer.shard_lag(shard)
    assert (after.length, after.pending, after.undelivered) == (0, 0, 0)
    assert after.oldest_undrained_age_s is None


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    worker_env: Settings, gate: Gate, pg: Engine
) -> None:
    tokens = record_many(gate, 30_000, ports=3)
    env = {**os.environ, "QUOTA_DRAIN_BATCH": "300", "QUOTA_DRAIN_CLAIM_IDLE_MS": "0"}
    rng = random.Random(7)
    kills = 0
    for _ in range(5):
        before = ledger_totals(pg)["rows"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "quota", "drain"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while ledger_totals(pg)["rows"] == before and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))  # somewhere inside a later batch
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    assert ledger_totals(pg)["rows"] < 30_000  # the kills really cut the work short
    # The dead consumers left entries pending; a restarted drain takes them over.
    Drainer(worker_env, gate.redis, pg).drain_shard(0, max_seconds=60, claim_idle_ms=0)
    for shard in range(worker_env.shards):
        Drainer(worker_env, gate.redis, pg).drain_shard(shard, max_seconds=60, claim_idle_ms=0)
    assert ledger_totals(pg) == {
        "rows": 30_000,
        "events": 30_000,
        "tokens": tokens,
        "rollup_calls": 30_000,
        "rollup_tokens": tokens,
    }


def test_postgres_unreachable_the_gate_answers_and_events_wait(
    worker_env: Settings, gate: Gate, pg: Engine
) -> None:
    gate.set_budget(
        "port-0", enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**7, updated_by="u"
    )
    first = record_many(gate, 10, ports=1)  # the budget copy is in Redis now
    down = worker_env.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/unreachable_test"}
    )
    with Gate(down) as offline:
        # The gate keeps answering from Redis alone.
        tokens = record_many(offline, 400, ports=1, tag="offline")
        assert offline.check("port-0", 100).ok
        d = offline.reserve("port-0", 100, "ocr")
        assert (
            offline.commit(
                d.reservation_id or "", input_tokens=7, output_tokens=0, provider="a", model="b"
            ).backend
            == "redis"
        )
        stuck = Drainer(down, offline.redis, offline.store.engine)
        shard = offline.layout.for_port("port-0").shard
        with pytest.raises(DatabaseUnavailable):
            stuck.drain_shard(shard)
        lag = stuck.shard_lag(shard)
        assert lag.length == 411
        assert lag.pending > 0  # read, not stored: still owned, not acknowledged
        # Postgres is back: the same worker stores what it holds, then the rest.
        stuck.engine = pg
        stuck.drain_shard(shard, max_seconds=30)
    totals = ledger_totals(pg)
    assert totals["rows"] == totals["events"] == 411
    assert totals["tokens"] == first + tokens + 7


def test_events_near_a_period_end_land_in_the_right_period(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    # Redis side: each event's server timestamp lies in the day its counters were keyed by.
    record_many(gate, 20, ports=1)
    pk = gate.layout.for_port("port-0")
    for _, fields in stream_entries(r, pk.stream):
        w = Windows.at(from_ms(int(fields["at"])))
        assert r.exists(pk.usage("day", w.day_id))
        assert r.exists(pk.usage("month", w.month_id))
    Drainer(worker_env, gate.redis, pg).drain_shard(pk.shard)
    # Postgres side: events one millisecond either side of a month (and year) boundary.
    boundary = datetime(2027, 1, 1, tzinfo=UTC)
    for n, at in enumerate((to_ms(boundary) - 1, to_ms(boundary))):
        r.xadd(
            pk.stream,
            {
                "id": f"00000000-0000-4000-8000-00000000000{n}",
                "port": "edge",
                "user": "",
                "feature": "ocr",
                "provider": "p",
                "model": "m",
                "in": "5",
                "out": "0",
                "req": "",
                "at": str(at),
            },
        )
    Drainer(worker_env, gate.redis, pg).drain_shard(pk.shard)
    with pg.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT tableoid::regclass::text, occurred_at FROM ledger WHERE port_id = 'edge' "
                "ORDER BY occurred_at"
            )
        ).all()
        days = conn.execute(
            text("SELECT day, total_tokens FROM ledger_daily WHERE port_id = 'edge' ORDER BY day")
        ).all()
    assert [p for p, _ in rows] == ["ledger_2026_12", "ledger_2027_01"]
    assert rows[0][1] == boundary - timedelta(milliseconds=1)
    assert days == [(date(2026, 12, 31), 5), (date(2027, 1, 1), 5)]
    assert gate.store.breakdown("edge", date(2027, 1, 1))[0].tokens == 5


def test_drain_after_redis_lost_the_stream_and_group(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    record_many(gate, 30, ports=1)
    shard = gate.layout.for_port("port-0").shard
    drainer = Drainer(worker_env, gate.redis, pg)
    drainer.drain_shard(shard)
    r.delete(gate.layout.stream(shard))  # as after FLUSHALL: stream and group are gone
    record_many(gate, 5, ports=1, tag="after")
    drainer.drain_shard(shard)
    drainer.drain_shard(shard)
    assert ledger_totals(pg)["rows"] == 35
    assert r.xinfo_groups(gate.layout.stream(shard))[0]["name"] == GROUP


def test_entries_of_every_shape_land_exactly_and_non_events_are_dropped(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    """The gate's packed value (copied without parsing), a foreign one holding COPY's
    special characters (parsed, escaped), the older one-field-per-value format, and
    two entries that are not events (a bad event id, negative tokens)."""
    gate.record(
        port_id="p",
        feature="ocr",
        provider="openai",
        model="gpt-4o",
        input_tokens=3,
        output_tokens=4,
        user_id="u-1",
        request_id="r-1",
    )
    stream = gate.layout.for_port("p").stream
    r.xadd(
        stream,
        {"e": "0190a6f2-8b1e-7c3d-9a4b-5c6d7e8f9a0b|p|tab\there|back\\slash|new\nline|m|5|6|"},
    )
    legacy = ["0190a6f2-8b1e-7c3d-9a4b-000000000002", "p", "", "chat", "x", "y", "7", "8", ""]
    r.xadd(stream, {**dict(zip(FIELDS, legacy, strict=True)), "at": "1790000000000"})
    r.xadd(stream, {"e": "nope|p||ocr|a|b|1|1|"})
    r.xadd(stream, {"e": "0190a6f2-8b1e-7c3d-9a4b-000000000003|p||ocr|a|b|-1|1|"})
    stats = Drainer(worker_env, gate.redis, pg).drain_shard(gate.layout.for_port("p").shard)
    assert (stats.inserted, stats.rejected) == (3, 2)
    with pg.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_id, feature, provider, model, input_tokens, output_tokens,"
                " request_id, (extract(epoch FROM occurred_at) * 1000)::bigint"
                " FROM ledger ORDER BY input_tokens"
            )
        ).all()
    assert [tuple(row)[:7] for row in rows] == [
        ("u-1", "ocr", "openai", "gpt-4o", 3, 4, "r-1"),
        ("tab\there", "back\\slash", "new\nline", "m", 5, 6, None),
        (None, "chat", "x", "y", 7, 8, None),
    ]
    assert rows[2][7] == 1790000000000


def test_an_event_appended_again_at_another_time_lands_once(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    """A failover's twin: the drain took a commit's entry from a primary that then died
    before replicating it; the gate, with no reply, committed again on the promoted
    replica (which still held the reservation), so the same event comes again with a
    later entry id, in another batch or in the same one. Each event is one row."""
    stream = gate.layout.for_port("p").stream
    shard = gate.layout.for_port("p").shard
    drainer = Drainer(worker_env, gate.redis, pg)
    first = event_value(uuid7(), "p", None, "ocr", "a", "b", 5, 0, "r-1")
    second = event_value(uuid7(), "p", None, "ocr", "a", "b", 7, 0, "r-2")
    r.xadd(stream, {"e": first})
    assert drainer.drain_shard(shard).inserted == 1
    for value in (first, second, second):
        time.sleep(0.002)  # a later millisecond: another occurred_at
        r.xadd(stream, {"e": value})
    drainer.drain_shard(shard)
    totals = ledger_totals(pg)
    assert (totals["rows"], totals["events"], totals["tokens"]) == (2, 2, 12)
    assert (totals["rollup_calls"], totals["rollup_tokens"]) == (2, 12)


class _FailingOnce(Drainer):
    """A drainer whose Postgres write fails once, at its ``fail_at``-th batch."""

    fail_at = 2

    def _store(self, batch: Any) -> int:
        self.fail_at -= 1
        if self.fail_at == 0:
            raise DatabaseUnavailable("injected: the COMMIT of this batch failed")
        return super()._store(batch)


def test_a_failed_batch_stops_the_run_and_later_batches_wait(
    worker_env: Settings, gate: Gate, pg: Engine
) -> None:
    small = worker_env.model_copy(update={"drain_batch": 10})
    tokens = record_many(gate, 45, ports=1)
    shard = gate.layout.for_port("port-0").shard
    drainer = _FailingOnce(small, gate.redis, pg)
    with pytest.raises(DatabaseUnavailable):
        drainer.drain_shard(shard, max_seconds=30)
    # The first batch committed and was acknowledged; the failed one and the one read
    # while it was stored were neither stored nor acknowledged.
    assert ledger_totals(pg)["rows"] == 10
    lag = drainer.shard_lag(shard)
    assert lag.pending == 20
    assert lag.undelivered == 15
    # Later runs store the rest, each starting with one batch of what it holds.
    runs = [drainer.drain_shard(shard, max_seconds=30) for _ in range(2)]
    assert [(s.claimed, s.read, s.inserted) for s in runs] == [(10, 15, 25), (10, 0, 10)]
    totals = ledger_totals(pg)
    assert totals["rows"] == totals["events"] == 45
    assert totals["tokens"] == tokens
