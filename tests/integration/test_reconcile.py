"""Reconciliation: Redis counters made equal to the ledger, exactly, under live traffic."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import cast

import pytest
import redis
from sqlalchemy import Engine, text

from quota import Gate, Settings
from quota.drain import Drainer
from quota.periods import Period, Windows, from_ms
from quota.reconcile import Reconciler
from tests.conftest import record_many


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    """These tests are reconciliation's, not the gates': one gate feeds them."""
    return sync_gate


def drain_all(settings: Settings, r: redis.Redis, pg: Engine) -> None:
    drainer = Drainer(settings, r, pg)
    for shard in range(settings.shards):
        drainer.drain_shard(shard, max_seconds=60)


def redis_counters(gate: Gate, r: redis.Redis, port: str) -> dict[str, dict[str, int]]:
    sec, _ = r.time()
    w = Windows.at(from_ms(sec * 1000))
    pk = gate.layout.for_port(port)
    ids: dict[Period, str] = {"day": w.day_id, "week": w.week_id, "month": w.month_id}
    out: dict[str, dict[str, int]] = {}
    for period, pid in ids.items():
        fields = cast(dict[str, str], r.hgetall(pk.usage(period, pid)))
        out[period] = {f: int(v) for f, v in fields.items()}
    return out


def ledger_counters(pg: Engine, port: str) -> dict[str, dict[str, int]]:
    """The same counters computed straight from the ledger rows."""
    out: dict[str, dict[str, int]] = {}
    with pg.connect() as conn:
        for period in ("day", "week", "month"):
            rows = conn.execute(
                text(
                    "SELECT feature, sum(total_tokens) FROM ledger WHERE port_id = :p AND "
                    "occurred_at >= date_trunc(:u, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
                    "GROUP BY feature"
                ),
                {"p": port, "u": period},
            ).all()
            fields = {f"f:{f}": int(t) for f, t in rows}
            if fields:
                fields["t"] = sum(fields.values())
            out[period] = fields
    return out


def test_no_drift_means_no_change(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    record_many(gate, 200)
    drain_all(worker_env, r, pg)
    before = {p: redis_counters(gate, r, f"port-{p}") for p in range(7)}
    report = Reconciler(worker_env, r, pg).run()
    assert (report.ports_checked, report.ports_drifted, report.tokens_corrected) == (7, 0, 0)
    assert {p: redis_counters(gate, r, f"port-{p}") for p in range(7)} == before


def test_redis_data_loss_is_rebuilt_from_postgres(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    gate.set_budget(
        "port-0",
        enabled=True,
        soft_cap_tokens=100,
        hard_cap_tokens=1000,
        period="month",
        updated_by="u",
    )
    record_many(gate, 280)  # port-0 gets 40 events, about 700 tokens
    drain_all(worker_env, r, pg)
    used = gate.current_period_tokens("port-0")
    assert 600 < used < 1000
    # Lose everything under this deployment's prefix: counters, budget copies, streams.
    r.delete(*r.scan_iter(match=f"{worker_env.key_prefix}:*", count=1000))
    # The gate finds port-0 missing and rebuilds it from the ledger before deciding:
    # its cap still holds, without waiting for reconciliation.
    d = gate.check("port-0", 400)
    assert (d.ok, d.reason, d.used_tokens) == (False, "estimated-exceeds-cap", used)
    report = Reconciler(worker_env, r, pg).run()
    assert report.ports_drifted == 6  # the ports no call has touched since
    assert report.budgets_refreshed == 1
    for port in range(7):
        assert redis_counters(gate, r, f"port-{port}") == ledger_counters(pg, f"port-{port}")
    assert gate.current_period_tokens("port-0") == used
    d = gate.check("port-0", 400)
    assert (d.ok, d.reason, d.used_tokens) == (False, "estimated-exceeds-cap", used)


def test_direct_writes_during_a_redis_outage_are_added(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    record_many(gate, 10, ports=1)
    down = worker_env.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "redis_timeout": 0.5}
    )
    with Gate(down) as offline:
        assert (
            offline.record(
                port_id="port-0",
                feature="ocr",
                provider="p",
                model="m",
                input_tokens=500,
                output_tokens=0,
            ).backend
            == "postgres"
        )
    before = gate.current_period_tokens("port-0")
    report = Reconciler(worker_env, r, pg).run(ports=["port-0"])
    assert report.tokens_corrected == 500
    assert gate.current_period_tokens("port-0") == before + 500
    assert (
        gate.current_period_tokens("port-0", feature="ocr")
        == (ledger_counters(pg, "port-0")["month"]["f:ocr"])
    )


def test_injected_drift_is_corrected_exactly_under_live_traffic(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    record_many(gate, 100)
    drain_all(worker_env, r, pg)
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(n: int) -> None:
        # Live callers and a live drain worker while reconciliation runs.
        with Gate(worker_env) as g:
            i = 0
            while not stop.is_set():
                try:
                    g.record(
                        port_id=f"port-{i % 7}",
                        feature="chat",
                        provider="p",
                        model="m",
                        input_tokens=3,
                        output_tokens=1,
                        request_id=f"t{n}-{i}",
                    )
                except BaseException as exc:  # surfaced by the assertion below
                    errors.append(exc)
                i += 1

    def draining() -> None:
        drainer = Drainer(worker_env, r, pg, consumer="live-worker")
        while not stop.is_set():
            for shard in range(worker_env.shards):
                drainer.drain_shard(shard, max_seconds=0.2)

    threads = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=draining))
    for t in threads:
        t.start()
    try:
        quiet = Reconciler(worker_env, r, pg).run()
        assert quiet.ports_drifted == 0  # traffic alone is never mistaken for drift
        pk = gate.layout.for_port("port-3")
        sec, _ = r.time()
        w = Windows.at(from_ms(sec * 1000))
        r.hincrby(pk.usage("month", w.month_id), "t", 1234)  # a lost update, say
        r.hincrby(pk.usage("month", w.month_id), "f:ocr", -7)
        r.hincrby(pk.usage("day", w.day_id), "t", -55)
        report = Reconciler(worker_env, r, pg).run()
        assert report.ports_drifted == 1
        assert report.drift == {"port-3": {"month:t": -1234, "month:f:ocr": 7, "day:t": 55}}
        assert report.tokens_corrected == 1234
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    drain_all(worker_env, r, pg)
    for port in range(7):
        assert redis_counters(gate, r, f"port-{port}") == ledger_counters(pg, f"port-{port}")
    assert Reconciler(worker_env, r, pg).run().ports_drifted == 0


def test_dry_run_reports_and_changes_nothing(
    worker_env: Settings, gate: Gate, r: redis.Redis, pg: Engine
) -> None:
    record_many(gate, 20, ports=1)
    drain_all(worker_env, r, pg)
    pk = gate.layout.for_port("port-0")
    sec, _ = r.time()
    key = pk.usage("week", Windows.at(from_ms(sec * 1000)).week_id)
    r.hincrby(key, "t", 99)
    out = subprocess.run(
        [sys.executable, "-m", "quota", "reconcile", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["dry_run"] is True
    assert report["drift"] == {"port-0": {"week:t": -99}}
    assert report["tokens_corrected"] == 99
    assert set(report) == {
        "ports_checked",
        "ports_drifted",
        "tokens_corrected",
        "budgets_refreshed",
        "seconds",
        "dry_run",
        "drift",
    }
    assert int(r.hget(key, "t") or 0) == ledger_counters(pg, "port-0")["week"]["t"] + 99


def test_reconcile_rewrites_lost_budget_copies_and_keeps_newer_ones(
    gate: Gate, worker_env: Settings, r: redis.Redis, pg: Engine
) -> None:
    for port in ("copy-a", "copy-b"):
        gate.set_budget(port, enabled=True, soft_cap_tokens=10, hard_cap_tokens=20,
                        updated_by="u")  # fmt: skip
    a, b = (gate.layout.for_port(p).budget for p in ("copy-a", "copy-b"))
    r.hdel(a, "cfg", "version")  # lost
    r.hset(b, mapping={"version": 10**9, "cfg": "1|1|2|day"})  # newer than the ledger's
    report = Reconciler(worker_env, r, pg).run()
    assert report.budgets_refreshed >= 2
    assert r.hget(a, "cfg") == "1|10|20|month"
    assert r.hget(b, "cfg") == "1|1|2|day"
