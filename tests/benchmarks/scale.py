"""Scale: reconciliation of 10,000 active ports (row 8), Redis memory per active port
(and per open reservation, remembered request id and settled reservation, the last two
outliving their calls) and server-side time per script call (row 9)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from quota.drain import Drainer
from quota.gate import Gate
from quota.reconcile import Reconciler
from quota.settings import Settings
from tests.benchmarks._measure import Row, reset, script_time
from tests.benchmarks.hotpath import budgets, operations


def _activate(gate: Gate, ports: list[str]) -> None:
    """Each port: a budget copy, usage in two features, one event each."""
    budgets(gate, ports)
    for port in ports:
        for feature in ("ocr", "chat"):
            gate.record(
                port_id=port,
                feature=feature,
                provider="openai",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=200,
            )


def bench_reconcile_and_memory(settings: Settings, client: redis.Redis, ports: int) -> list[Row]:
    reset(settings, client)
    names = [f"tenant-{i}" for i in range(ports)]
    with Gate(settings) as gate:
        used_before = int(client.info("memory")["used_memory"])
        _activate(gate, names)
        drainer = Drainer(settings, gate.redis, gate.store.engine)
        for shard in range(settings.shards):
            drainer.drain_shard(shard, max_seconds=3600)  # streams drained and trimmed
        used_after = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        report = Reconciler(settings, gate.redis, gate.store.engine, drainer).run()
        seconds = time.perf_counter() - started

        def drained() -> int:
            for shard in range(settings.shards):
                drainer.drain_shard(shard, max_seconds=3600)
            return int(client.info("memory")["used_memory"])

        def record(i: int) -> None:
            gate.record(
                port_id=names[i % ports],
                feature="ocr",
                provider="openai",
                model="gpt-4o",
                input_tokens=1,
                output_tokens=0,
                request_id=f"req-{i:012d}",
            )

        def reserve(i: int) -> str:
            return gate.reserve(names[i % ports], 10, "ocr").reservation_id or ""

        def commit(rid: str) -> None:
            gate.commit(rid, input_tokens=1, output_tokens=0, provider="openai", model="gpt-4o")

        for i in range(ports):
            commit(reserve(i))  # each port's hold fields exist from here on
        before = drained()
        for i in range(ports):
            record(i)
        per_request = (drained() - before) / ports
        before = drained()
        held = [reserve(i) for i in range(ports, 2 * ports)]
        per_open = (drained() - before) / ports
        for rid in held:
            commit(rid)
        per_settled = (drained() - before) / ports
    return [
        Row(
            "scale",
            f"reconcile {ports:,} active ports",
            seconds,
            "s",
            note=f"{report.ports_checked:,} checked, {report.ports_drifted} drifted",
        ),
        Row(
            "scale",
            "Redis memory per active port",
            (used_after - used_before) / ports,
            "bytes",
            note="budget copy + day/week/month usage (2 features); streams drained",
        ),
        Row(
            "scale",
            "Redis memory per remembered request id",
            per_request,
            "bytes",
            note="its marker, kept QUOTA_IDEMPOTENCY_SECONDS (2 days by default)",
        ),
        Row(
            "scale",
            "Redis memory per open reservation",
            per_open,
            "bytes",
            note="one per port, so each creates its port's open set; the rest is in its id",
        ),
        Row(
            "scale",
            "Redis memory per settled reservation",
            per_settled,
            "bytes",
            note="kept until QUOTA_SETTLED_SECONDS (1 h by default) after its commit",
        ),
    ]


def bench_server_time(
    settings: Settings, client: redis.Redis, calls: int, block: int = 50
) -> list[Row]:
    """Redis-side microseconds per call (INFO commandstats), one operation at a time.

    Measured in blocks of ``block`` calls, each followed by unmeasured calls that undo
    it (reserve's holds are committed, commit's reservations were made beforehand), so
    every operation runs against a port with a handful of open reservations.
    """
    reset(settings, client)
    rows: list[Row] = []
    with Gate(settings) as gate:
        budgets(gate, ["port-1"])
        op, held = operations(gate, gate.redis, ["port-1"], seed=1)

        def commit_all() -> None:
            while held:
                op["commit"]()

        def reserve_block() -> None:
            for _ in range(block):
                op["reserve"]()

        def nothing() -> None:
            pass

        ops: dict[str, tuple[Callable[[], object], Callable[[], object], Callable[[], object]]] = {
            # name: (before the block, the measured call, after the block)
            "trivial one-key INCRBY script": (nothing, op["baseline"], nothing),
            "check": (nothing, op["check"], nothing),
            "reserve": (nothing, op["reserve"], commit_all),
            "commit": (reserve_block, op["commit"], nothing),
            "record": (nothing, op["record"], nothing),
        }
        base: Row | None = None
        for name, (before, measured, after) in ops.items():
            total_us = total_calls = 0.0
            for _ in range(max(1, calls // block)):
                before()
                client.config_resetstat()
                for _ in range(block):
                    measured()
                usec, n = script_time(client, base is None)
                total_us += usec
                total_calls += n
                after()
            row = Row(
                "server",
                f"Redis time per call: {name}",
                total_us / total_calls,
                "µs",
            )
            base = base or row
            rows.append(row if row is base else row.against(base))
    return rows
