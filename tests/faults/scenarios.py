"""Fault scenarios under load, on a redis-server and a PostgreSQL cluster of their own.

The same scenarios run light in the test suite (tests/faults/test_scenarios.py, which
asserts the invariants) and heavy in ``./scripts/faults``, which writes the figures to
docs/RELIABILITY.md:

    python -m tests.faults.scenarios [--heavy] [--only NAME ...] [--output FILE]

Each run forks worker processes with threads that reserve (estimate 100) and commit
(90, a unique request id) on a few ports with small hard caps, while the main process
injects the fault and heals it, and a thread runs what the drain job runs (drain,
repair the ports gates marked, reconcile shards whose group was lost) every second,
as `quota cron` would; after the load, until the Redis counters equal the ledger.
Figures: decisions by outcome, decision p99 during the fault, tokens committed past
a hard cap (from the workers' own tally, so usage Redis lost still counts), events
acknowledged but missing from the ledger, events in it twice, and seconds until the
counters equal the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, text

from quota import AsyncGate, Gate, Settings
from quota.drain import Drainer
from quota.durability import redis_risks
from quota.keys import KeyLayout
from quota.migrate import upgrade
from quota.periods import Windows, from_ms
from quota.reconcile import Reconciler
from quota.store import make_engine
from quota.topology import sync_client
from tests.racing import run_threads
from tests.servers import ClusterServers, PostgresServer, RedisServer, SentinelServers

EST, ACTUAL = 100, 90
RedisClient = redis.Redis  # Env's field `redis` hides the module in its scope


@dataclass(frozen=True)
class Load:
    processes: int
    threads: int
    ports: int
    hard_cap: int
    before: float  # seconds of load before the fault
    fault: float  # how long the fault lasts
    after: float  # seconds of load after it is healed


# Caps sized so that ports reach them around the end of the fault: the fault meets
# ports with room left and ports at their cap.
LIGHT = Load(processes=2, threads=4, ports=4, hard_cap=150_000, before=2.0, fault=2.0, after=1.0)
HEAVY = Load(processes=4, threads=8, ports=8, hard_cap=400_000, before=5.0, fault=10.0, after=5.0)


@dataclass
class Env:
    """The servers of one scenario run, and the settings its gates use."""

    redis: RedisServer  # on a cluster: the first node
    postgres: PostgresServer
    settings: Settings
    engine: Engine
    cluster: ClusterServers | None = None
    sentinels: SentinelServers | None = None
    ports: list[str] = field(default_factory=list)  # the run's ports, for a fault to aim at
    killed: RedisServer | None = None  # the node a fault killed, for the heal to start

    def client(self) -> RedisClient:
        """A client of the run's Redis (a `RedisCluster` on a cluster, typed alike)."""
        client = sync_client(self.settings.redis_url, decode_responses=True, socket_timeout=5)
        return cast(RedisClient, client)

    def target(self) -> RedisServer:
        """The primary the sentinels name, or the cluster primary of the first port."""
        if self.sentinels is not None:
            port = self.sentinels.primary_port()
            assert port is not None
            return self.sentinels.node(port)
        assert self.cluster is not None
        layout = KeyLayout(self.settings.key_prefix, self.settings.shards)
        return self.cluster.owner(layout.for_port(self.ports[0]).budget)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    inject: Callable[[Env], None]
    heal: Callable[[Env], None]
    policy: str = "closed"
    persist: bool = True  # Redis with AOF (appendfsync always)
    cluster: bool = False  # on a local cluster of 3 primaries and 3 replicas
    sentinel: bool = False  # on a primary and a replica behind three sentinels
    replica_ack: int = 0  # QUOTA_REPLICA_ACK
    outage_wait: float = 0.0  # QUOTA_OUTAGE_WAIT_SECONDS


@dataclass
class Result:
    scenario: str
    what: str
    load: str
    decisions: Counter[str] = field(default_factory=Counter)
    p99_fault_ms: float | None = None
    past_cap: int = 0
    worst_port: int = 0  # the most one port went past its cap
    acknowledged: int = 0
    lost: int = 0
    twice: int = 0
    settle_s: float | None = None
    recovery_s: float = 0.0  # from the fault until the last degraded decision ended
    slowest_s: float = 0.0  # the longest call that started while the fault lasted

    @property
    def raised(self) -> int:
        """Calls that raised instead of deciding."""
        return self.decisions["raised"]

    @property
    def degraded(self) -> int:
        return sum(n for k, n in self.decisions.items() if k.endswith("*"))

    def cluster_line(self) -> str:
        calls = sum(self.decisions.values())
        settle = "never (60 s)" if self.settle_s is None else f"{self.settle_s:.1f}"
        p99 = "-" if self.p99_fault_ms is None else f"{self.p99_fault_ms:,.0f}"
        return (
            f"| {self.scenario} | {calls:,} | {self.raised:,} | {self.degraded:,} "
            f"({self.degraded / max(calls, 1):.2%}) | {p99} | {self.slowest_s:.2f} | "
            f"{self.recovery_s:.2f} | "
            f"{self.lost:,} of {self.acknowledged:,} | {self.twice:,} | {settle} |"
        )

    def line(self) -> str:
        outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(self.decisions.items()))
        p99 = "-" if self.p99_fault_ms is None else f"{self.p99_fault_ms:.2f}"
        settle = "never (60 s)" if self.settle_s is None else f"{self.settle_s:.1f}"
        return (
            f"| {self.scenario} | {outcomes} | {p99} | {self.past_cap:,} ({self.worst_port:,}) | "
            f"{self.lost:,} of {self.acknowledged:,} | {self.twice:,} | {settle} |"
        )


def _kill(env: Env) -> None:
    env.redis.kill()


def _start(env: Env) -> None:
    env.redis.start()


def _sleep(env: Env) -> None:
    seconds = _FAULT_SECONDS[0]

    def sleep() -> None:
        # No timeout and no retry: redis-py retries a timed-out command by default, and
        # each DEBUG SLEEP sent again would put Redis to sleep once more.
        c: redis.Redis = redis.Redis(
            port=env.redis.port, socket_timeout=None, retry=Retry(NoBackoff(), 0)
        )
        with c:
            c.execute_command("DEBUG", "SLEEP", str(seconds))  # type: ignore[no-untyped-call]

    threading.Thread(target=sleep, daemon=True).start()


def _started(postgres: PostgresServer) -> None:
    postgres.start()


def _nothing(env: Env) -> None:
    pass


def _both_down(env: Env) -> None:
    env.redis.kill()
    env.postgres.freeze()


def _both_up(env: Env) -> None:
    env.postgres.thaw()
    env.redis.start()


def _failover(env: Env) -> None:
    """CLUSTER FAILOVER on the replica of the primary of the run's first port."""
    assert env.cluster is not None
    replica = env.cluster.replica_of(env.target())
    with replica.client() as c:
        c.execute_command("CLUSTER", "FAILOVER")


def _kill_primary(env: Env) -> None:
    """SIGKILL the primary of the run's first port: its replica takes over."""
    env.killed = env.target()
    env.killed.kill()


def _restart_killed(env: Env) -> None:
    """The killed node comes back (a cluster node with its nodes.conf kept; a Sentinel
    primary empty): it rejoins as a replica."""
    assert env.killed is not None
    env.killed.start()
    if env.cluster is not None:
        env.cluster.wait_ok(60)
    if env.sentinels is not None:
        env.sentinels.wait_ready(60)


_FAULT_SECONDS = [0.0]  # DEBUG SLEEP's length, set per run

SCENARIOS = [
    Scenario("redis-killed-closed", "Redis SIGKILLed, restarted (AOF)", _kill, _start),
    Scenario("redis-killed-open", "the same, policy open", _kill, _start, policy="open"),
    Scenario("redis-killed-allowance", "the same, policy allowance", _kill, _start, "allowance"),
    Scenario(
        "redis-restarted-empty",
        "Redis SIGKILLed and restarted without persistence",
        lambda env: env.redis.restart(),
        _nothing,
        persist=False,
    ),
    Scenario("redis-hung", "DEBUG SLEEP past the socket timeout", _sleep, _nothing),
    Scenario(
        "redis-sigstop",
        "Redis SIGSTOPed, then SIGCONTed",
        lambda env: env.redis.pause(),
        lambda env: env.redis.resume(),
    ),
    Scenario(
        "postgres-sigstop",
        "Postgres SIGSTOPed (every process), then SIGCONTed",
        lambda env: env.postgres.freeze(),
        lambda env: env.postgres.thaw(),
    ),
    Scenario(
        "postgres-killed",
        "Postgres SIGQUIT, then started again",
        lambda env: env.postgres.kill(),
        lambda env: _started(env.postgres),
    ),
    Scenario("both-down", "Redis killed and Postgres SIGSTOPed", _both_down, _both_up),
    Scenario(
        "cluster-failover",
        "CLUSTER FAILOVER of one primary's replica",
        _failover,
        _nothing,
        cluster=True,
    ),
    Scenario(
        "cluster-failover-ack",
        "the same, QUOTA_REPLICA_ACK=100",
        _failover,
        _nothing,
        cluster=True,
        replica_ack=100,
    ),
    Scenario(
        "cluster-primary-killed",
        "one primary SIGKILLed, its replica takes over; restarted as a replica",
        _kill_primary,
        _restart_killed,
        cluster=True,
    ),
    Scenario(
        "cluster-primary-killed-ack",
        "the same, QUOTA_REPLICA_ACK=100",
        _kill_primary,
        _restart_killed,
        cluster=True,
        replica_ack=100,
    ),
    Scenario(
        "cluster-primary-killed-wait",
        "the same, QUOTA_REPLICA_ACK=100 and QUOTA_OUTAGE_WAIT_SECONDS=5",
        _kill_primary,
        _restart_killed,
        cluster=True,
        replica_ack=100,
        outage_wait=5.0,
    ),
    Scenario(
        "sentinel-primary-killed",
        "Sentinel: the primary SIGKILLed, the replica promoted; restarted empty",
        _kill_primary,
        _restart_killed,
        sentinel=True,
    ),
    Scenario(
        "sentinel-primary-killed-ack",
        "the same, QUOTA_REPLICA_ACK=100",
        _kill_primary,
        _restart_killed,
        sentinel=True,
        replica_ack=100,
    ),
    Scenario(
        "sentinel-primary-killed-wait",
        "the same, QUOTA_OUTAGE_WAIT_SECONDS=5",
        _kill_primary,
        _restart_killed,
        sentinel=True,
        outage_wait=5.0,
    ),
]


def _worker(
    settings: Settings,
    load: Load,
    ports: list[str],
    stop_at: float,
    out: mp.Queue[dict[str, Any]],
) -> None:
    """One process: ``load.threads`` threads reserving and committing until ``stop_at``."""
    decisions: list[tuple[float, float, str]] = []  # (started, seconds, outcome)
    acked: list[str] = []  # request ids of commits said stored
    spent: Counter[str] = Counter()  # tokens committed per port, stored or not
    lock = threading.Lock()
    with Gate(settings) as gate:

        def run() -> None:
            mine: list[tuple[float, float, str]] = []
            my_acked: list[str] = []
            my_spent: Counter[str] = Counter()
            while time.time() < stop_at:
                port = random.choice(ports)
                started = time.time()
                t0 = time.perf_counter()
                try:
                    d = gate.reserve(port, EST, "f")
                except Exception:  # the gate decides by policy: a raise is a finding
                    mine.append((started, time.perf_counter() - t0, "raised"))
                    continue
                took = time.perf_counter() - t0
                outcome = ("ok" if d.ok else str(d.reason)) + ("*" if d.degraded else "")
                mine.append((started, took, outcome))
                if not d.ok or d.reservation_id is None:
                    time.sleep(0.002)
                    continue
                req = uuid.uuid4().hex
                r = gate.commit(
                    d.reservation_id,
                    input_tokens=ACTUAL,
                    output_tokens=0,
                    provider="p",
                    model="m",
                    request_id=req,
                )
                my_spent[port] += ACTUAL
                if r.stored:
                    my_acked.append(req)
            with lock:
                decisions.extend(mine)
                acked.extend(my_acked)
                spent.update(my_spent)

        run_threads(load.threads, lambda _: run())
    out.put({"decisions": decisions, "acked": acked, "spent": dict(spent)})


def _async_worker(
    settings: Settings,
    load: Load,
    ports: list[str],
    stop_at: float,
    out: mp.Queue[dict[str, Any]],
) -> None:
    """`_worker` with AsyncGate: one event loop, ``load.threads`` tasks."""
    decisions: list[tuple[float, float, str]] = []
    acked: list[str] = []
    spent: Counter[str] = Counter()

    async def main() -> None:
        async with AsyncGate(settings) as gate:

            async def run() -> None:
                while time.time() < stop_at:
                    port = random.choice(ports)
                    started = time.time()
                    t0 = time.perf_counter()
                    try:
                        d = await gate.reserve(port, EST, "f")
                    except Exception:  # the gate decides by policy: a raise is a finding
                        decisions.append((started, time.perf_counter() - t0, "raised"))
                        continue
                    took = time.perf_counter() - t0
                    outcome = ("ok" if d.ok else str(d.reason)) + ("*" if d.degraded else "")
                    decisions.append((started, took, outcome))
                    if not d.ok or d.reservation_id is None:
                        await asyncio.sleep(0.002)
                        continue
                    req = uuid.uuid4().hex
                    r = await gate.commit(
                        d.reservation_id, input_tokens=ACTUAL, output_tokens=0,
                        provider="p", model="m", request_id=req,
                    )  # fmt: skip
                    spent[port] += ACTUAL
                    if r.stored:
                        acked.append(req)

            await asyncio.gather(*(run() for _ in range(load.threads)))

    asyncio.run(main())
    out.put({"decisions": decisions, "acked": acked, "spent": dict(spent)})


def _drain_cycle(env: Env, client: redis.Redis) -> None:
    """What the drain job does for every shard."""
    drainer = Drainer(env.settings, client, env.engine)
    reconciler = Reconciler(env.settings, client, env.engine, drainer)
    created = [
        shard
        for shard in range(env.settings.shards)
        if drainer.drain_shard(shard, max_seconds=5).group_created
    ]
    reconciler.reconcile_shards(created)
    reconciler.repair_direct(range(env.settings.shards))


def _counters_equal_ledger(env: Env, client: redis.Redis, ports: list[str]) -> bool:
    sec, _ = client.time()
    w = Windows.at(from_ms(int(sec) * 1000))
    layout = KeyLayout(env.settings.key_prefix, env.settings.shards)
    redis_side = [
        int(client.hget(layout.for_port(p).usage("month", w.month_id), "t") or 0) for p in ports
    ]
    with env.engine.connect() as conn:
        rows: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT port_id, sum(total_tokens) FROM ledger WHERE port_id = ANY(:p) "
                    "AND occurred_at >= :since GROUP BY 1"
                ),
                {"p": ports, "since": from_ms(w.month_start_ms)},
            ).all()
        )
    return redis_side == [int(rows.get(p, 0)) for p in ports]


def run_scenario(
    env: Env, scenario: Scenario, load: Load, load_name: str, gate: str = "sync"
) -> Result:
    """One scenario; the workers use `Gate` (threads) or, with ``gate=\"async\"``,
    `AsyncGate` (tasks on one loop per process)."""
    tag = uuid.uuid4().hex[:6]
    ports = [f"{scenario.name}-{tag}-{i}" for i in range(load.ports)]
    env.ports = ports
    settings = env.settings.model_copy(
        update={
            "outage_policy": scenario.policy,
            "replica_ack": scenario.replica_ack,
            "outage_wait_seconds": scenario.outage_wait,
        }
    )
    # At a failover the caps are out of reach: the figures are of the failover.
    cap = load.hard_cap * 1000 if scenario.cluster or scenario.sentinel else load.hard_cap
    with Gate(settings) as admin:
        for port in ports:
            admin.set_budget(
                port,
                enabled=True,
                soft_cap_tokens=cap // 2,
                hard_cap_tokens=cap,
                updated_by="faults",
            )
    _FAULT_SECONDS[0] = load.fault
    ctx = mp.get_context("fork")
    out: mp.Queue[dict[str, Any]] = ctx.Queue()
    start = time.time()
    stop_at = start + load.before + load.fault + load.after
    # Daemons: should this process fail, they must not keep it from exiting.
    procs = [
        ctx.Process(
            target=_async_worker if gate == "async" else _worker,
            args=(settings, load, ports, stop_at, out),
            daemon=True,
        )
        for _ in range(load.processes)
    ]
    for p in procs:
        p.start()
    # The drain job, as `quota cron` runs it: every second, whatever fails.
    stop_draining = threading.Event()

    def drain_loop() -> None:
        while not stop_draining.wait(1.0):
            try:
                with env.client() as c:
                    _drain_cycle(env, c)
            except Exception as exc:  # a backend is down: the next cycle tries again
                print(f"drain cycle: {exc!r:.300}", file=sys.stderr)

    drainer = threading.Thread(target=drain_loop, daemon=True)
    drainer.start()
    time.sleep(load.before)
    fault_start = time.time()
    scenario.inject(env)
    time.sleep(load.fault)
    scenario.heal(env)
    fault_end = time.time()
    parts = [out.get(timeout=load.before + load.fault + load.after + 120) for _ in procs]
    for p in procs:
        p.join(60)
    print(f"workers done {time.time() - fault_end:.1f} s after the fault", file=sys.stderr)
    stop_draining.set()
    drainer.join(60)
    print(f"drain loop stopped {time.time() - fault_end:.1f} s after the fault", file=sys.stderr)
    result = Result(scenario.name, scenario.what, load_name)
    during: list[float] = []
    spent: Counter[str] = Counter()
    acked: list[str] = []
    for part in parts:
        for started, took, outcome in part["decisions"]:
            result.decisions[outcome] += 1
            if fault_start <= started < fault_end:
                during.append(took)
            if fault_start <= started < fault_end:
                result.slowest_s = max(result.slowest_s, took)
            if outcome.endswith("*") and started >= fault_start:
                result.recovery_s = max(result.recovery_s, started + took - fault_start)
        acked += part["acked"]
        spent.update(part["spent"])
    if len(during) >= 2:
        result.p99_fault_ms = statistics.quantiles(during, n=100)[98] * 1000
    over = [max(0, spent[p] - cap) for p in ports]
    result.past_cap, result.worst_port = sum(over), max(over)
    # Settle: the drain job's cycle until the counters equal the ledger (and the
    # spooled events are in it: the workers are gone, so a gate that starts on the host
    # replays what they left, as the next process of a deployment would).
    client = env.client()
    settled_at = None
    deadline = time.time() + 60
    with Gate(settings) as successor:
        while time.time() < deadline:
            try:
                _drain_cycle(env, client)
                if not successor._spooled and _counters_equal_ledger(env, client, ports):
                    settled_at = time.time()
                    break
            except Exception as exc:  # a backend still coming back: try again
                print(f"settling: {exc!r:.300}", file=sys.stderr)
            time.sleep(0.5)
    client.close()
    result.settle_s = None if settled_at is None else settled_at - fault_end
    with env.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT request_id, count(*) FROM ledger WHERE port_id = ANY(:p) GROUP BY 1"),
            {"p": ports},
        ).all()
    in_ledger = {r[0]: int(r[1]) for r in rows}
    result.acknowledged = len(acked)
    result.lost = sum(1 for req in acked if req not in in_ledger)
    result.twice = sum(n - 1 for n in in_ledger.values() if n > 1)
    return result


def _drain_forever(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    drainer = Drainer(settings, client, engine)
    while True:
        for shard in range(settings.shards):
            drainer.drain_shard(shard, max_seconds=1)


def _memory_rows(env: Env) -> list[str]:
    """Eviction is refused by `quota health`; at the memory limit checks still answer."""
    rows = []
    lru = RedisServer(extra=["--maxmemory", "50mb", "--maxmemory-policy", "allkeys-lru"]).start()
    try:
        with lru.client() as c:
            failures, _ = redis_risks(c.info())
        rows.append(
            "| Redis with maxmemory-policy allkeys-lru | `quota health` fails: "
            f"{'; '.join(failures) or 'NOT DETECTED'} |"
        )
    finally:
        lru.cleanup()
    full = RedisServer(extra=["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]).start()
    try:
        with Gate(env.settings.model_copy(update={"redis_url": full.url})) as gate:
            gate.set_budget("m", enabled=True, hard_cap_tokens=10**9, updated_by="faults")
            with full.client() as c:
                i = 0
                while True:
                    try:
                        c.set(f"fill:{i}", "x" * 10_000)
                    except redis.exceptions.OutOfMemoryError:
                        break
                    i += 1
            checks = Counter(
                "answered" if not gate.check("m", 1).degraded else "degraded" for _ in range(1000)
            )
            backends = Counter(
                gate.record(port_id="m", feature="f", provider="p", model="m", input_tokens=1,
                            output_tokens=0).backend for _ in range(100)
            )  # fmt: skip
        rows.append(
            "| Redis at maxmemory with noeviction | 1,000 checks: "
            f"{dict(checks)}; 100 records went to {dict(backends)} |"
        )
    finally:
        full.cleanup()
    return rows


def _forked_check(out: mp.Queue[bool]) -> None:
    try:
        out.put(not _GATE[0].check("f", 1).degraded and _GATE[0].get_budget("f").enabled)
    except Exception:
        out.put(False)


_GATE: list[Gate] = []


def _fork_row(env: Env) -> str:
    """gunicorn --preload: a Gate made and used, then the process forked."""
    with Gate(env.settings) as gate:
        _GATE[:] = [gate]
        gate.set_budget("f", enabled=True, hard_cap_tokens=10**9, updated_by="faults")
        gate.check("f", 1)
        ctx = mp.get_context("fork")
        out: mp.Queue[bool] = ctx.Queue()
        children = [ctx.Process(target=_forked_check, args=(out,)) for _ in range(4)]
        for child in children:
            child.start()
        ok = sum(out.get(timeout=60) for _ in children)
        for child in children:
            child.join(60)
        parent = not gate.check("f", 1).degraded and gate.get_budget("f").enabled
    return (
        f"| a Gate used on both backends, then forked into 4 children | {ok} of 4 children "
        f"decided and read Postgres; the parent {'still works' if parent else 'FAILED'} |"
    )


def other_rows(env: Env, heavy: bool) -> list[str]:
    """Connections, fork and the drain: one table row each."""
    rows = []
    threads, failed = (10_000, 1_000) if heavy else (1_000, 200)
    with Gate(env.settings) as gate:
        gate.set_budget("t", enabled=True, hard_cap_tokens=10**9, updated_by="faults")
        errors: list[BaseException] = []

        def one() -> None:
            try:
                gate.check("t", 1)
            except BaseException as exc:
                errors.append(exc)

        started = time.monotonic()
        for i in range(0, threads, 100):
            batch = [threading.Thread(target=one) for _ in range(min(100, threads - i))]
            for t in batch:
                t.start()
            for t in batch:
                t.join()
        took = time.monotonic() - started
        with env.redis.client() as c:
            clients = int(c.info("clients")["connected_clients"])
        rows.append(
            f"| {threads:,} short-lived threads, one check each, on one Gate | "
            f"{len(errors)} errors in {took:.1f} s; {clients} connections open on Redis after |"
        )
        env.redis.kill()
        degraded = 0
        for _ in range(failed):
            degraded += gate.check("t", 1).degraded
            gate.record(port_id="t", feature="f", provider="p", model="m", input_tokens=1,
                        output_tokens=0)  # fmt: skip
        # The decision path alone with the breaker open: a tight loop of checks (the
        # loop above interleaves Postgres writes, whose garbage and GIL time it pays).
        latencies: list[float] = []
        for _ in range(10 * failed):
            t0 = time.perf_counter()
            degraded += gate.check("t", 1).degraded
            latencies.append(time.perf_counter() - t0)
        env.redis.start()
        back = time.monotonic()
        while gate.check("t", 1).degraded:
            time.sleep(0.01)
        p99_us = statistics.quantiles(latencies, n=100)[98] * 1e6
        rows.append(
            f"| Redis killed: {failed:,} checks and {failed:,} records, then "
            f"{10 * failed:,} checks in a row, then Redis back | {degraded:,} checks degraded "
            f"(the row of them: p99 {p99_us:.0f} µs, one thread, the breaker open), none "
            "raised; answers normally "
            f"{time.monotonic() - back:.2f} s after Redis is back |"
        )
    rows += _memory_rows(env)
    rows.append(_fork_row(env))
    # The drain SIGKILLed mid-batch, again and again: nothing lost, nothing twice.
    with Gate(env.settings) as gate:
        n = 50_000 if heavy else 5_000
        tag = uuid.uuid4().hex[:6]
        for i in range(n):
            gate.record(port_id=f"d-{tag}-{i % 16}", feature="f", provider="p", model="m",
                        input_tokens=1, output_tokens=0, request_id=f"{tag}-{i}")  # fmt: skip
    ctx = mp.get_context("fork")
    kills = 10
    for _ in range(kills):
        p = ctx.Process(target=_drain_forever, args=(env.settings,))
        p.start()
        time.sleep(random.uniform(0.2, 0.6))
        p.kill()
        p.join()
    with env.redis.client() as c:
        # The runs `quota cron` would go on making: each takes over one batch of what
        # the killed drains left pending, until nothing is.
        settle = env.settings.model_copy(update={"drain_claim_idle_ms": 0})
        drainer = Drainer(settle, c, env.engine)
        for shard in range(env.settings.shards):
            while drainer.drain_shard(shard, max_seconds=60).claimed:
                pass
    with env.engine.connect() as conn:
        count, distinct = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT request_id) FROM ledger WHERE request_id LIKE :t"
            ),
            {"t": f"{tag}-%"},
        ).one()
    rows.append(
        f"| the drain SIGKILLed {kills} times mid-run over {n:,} events | "
        f"{n - int(distinct):,} lost, {int(count) - int(distinct):,} twice |"
    )
    return rows


@contextmanager
def environment(
    postgres: PostgresServer, persist: bool, spool: Path, scenario: Scenario | None = None
) -> Iterator[Env]:
    """A fresh redis-server (AOF always when ``persist``), a cluster of 3 primaries and
    3 replicas, or a primary and a replica behind 3 sentinels, beside ``postgres``."""
    servers = ClusterServers().start() if scenario and scenario.cluster else None
    sentinels = SentinelServers().start() if scenario and scenario.sentinel else None
    if servers:
        server, url = servers.nodes[0], servers.url
    elif sentinels:
        server, url = sentinels.primary, sentinels.url
    else:
        server = RedisServer(persist=persist).start()
        url = server.url
    settings = Settings(
        redis_url=url,
        database_url=postgres.url(),
        key_prefix=f"qf-{uuid.uuid4().hex[:8]}",
        redis_timeout=0.5,
        database_timeout=1.0,
        spool_dir=spool,
        breaker_reset_seconds=0.5,
    )
    engine = make_engine(postgres.url())
    try:
        yield Env(server, postgres, settings, engine, servers, sentinels)
    finally:
        postgres.thaw()
        engine.dispose()
        if servers:
            servers.cleanup()
        elif sentinels:
            sentinels.cleanup()
        else:
            server.cleanup()


def run_all(
    load: Load, label: str, only: list[str], spool: Path, heavy: bool, gate: str = "sync"
) -> tuple[list[Result], list[str]]:
    postgres = PostgresServer().start()
    try:
        upgrade(postgres.url())
        results = []
        others: list[str] = []
        if not only or "other" in only:
            print("== connections, fork and the drain", file=sys.stderr)
            with environment(postgres, True, spool) as env:
                others = other_rows(env, heavy)
            print("\n".join(others), file=sys.stderr)
        for scenario in SCENARIOS:
            if only and scenario.name not in only:
                continue
            print(f"== {scenario.name}: {scenario.what}", file=sys.stderr)
            if postgres.proc is None or postgres.proc.poll() is not None:
                postgres.start()
            with environment(postgres, scenario.persist, spool, scenario) as env:
                results.append(run_scenario(env, scenario, load, label, gate))
            failover = scenario.cluster or scenario.sentinel
            line = results[-1].cluster_line() if failover else results[-1].line()
            print(line, file=sys.stderr)
        return results, others
    finally:
        postgres.cleanup()


HEADER = """# Reliability

What the gate does under faults, measured by `./scripts/faults` ({when}) on the
project's 2-core VM, under {load}. Each scenario runs worker processes whose threads
reserve 100 tokens and commit 90 (a unique request id) on ports with small hard caps,
against a redis-server (AOF `appendfsync always` unless said) and a PostgreSQL
cluster of the harness's own; the fault lasts {fault:g} s. The drain job's cycle runs
every second throughout, as `quota cron` runs it, and after the load until the Redis
counters equal the ledger. The test suite runs the same scenarios lighter
(tests/faults/test_scenarios.py) and asserts their invariants. Figures from one run:
the VM is noisy, so read the latencies as orders of magnitude.

- **decisions**: reserve outcomes; `*` marks a degraded decision (by outage policy).
- **p99 during fault**: of the decisions that started while the fault lasted, ms.
  With the breaker open no caller sends anything to Redis (the gate's prober thread
  PINGs it); after a restart without persistence the first decision of each port
  after the hold rebuilds it from Postgres, and the journal replays share the GIL.
- **past cap (worst port)**: tokens committed beyond the ports' hard caps, in all and
  on the worst port, from the workers' own tally (usage Redis lost still counts).
  `open` allows by design; under `allowance` a port's overshoot is bounded by the
  allowance times the processes (10,000 x {processes} here).
- **lost**: commits told `stored=True` whose event is not in the ledger. Redis without
  persistence loses the events not yet drained when it dies; the gates that counted
  them replay them from their journals (`QUOTA_JOURNAL_SECONDS`), so only the usage of
  a process that dies together with Redis would be lost. Every gate learns of the
  loss within a second (at once for the first to call); until all have had that
  second and finished their replays, ports are held (`unavailable*`: decided by the
  outage policy) rather than rebuilt from a ledger that still lacks usage.
- **twice**: events in the ledger more than once.
- **counters = ledger after**: seconds from the end of the fault until every port's
  Redis counter equals its ledger sum.

{table_head}
"""


CLUSTER_HEADER = """
## Failover: Redis Cluster and Sentinel

The same load on a local cluster of 3 primaries and 3 replicas (`cluster-node-timeout`
1000 ms, no persistence) with ports on every primary, and on a primary and a replica
behind three sentinels (`down-after-milliseconds` 1000, quorum 2), with hard caps out of
reach; the fault hits the primary of one port. With `QUOTA_REPLICA_ACK=100` each commit
is followed by `WAIT 1 100` in the same write, and one no replica acknowledged is stored
in Postgres as on a timeout. With `QUOTA_OUTAGE_WAIT_SECONDS=5` a call whose primary
cannot be asked tries again until the promoted replica answers (up to 5 s) instead of
being decided by the outage policy.

- **calls**: reserve decisions; **raised**: calls that raised instead of deciding.
- **degraded**: decisions made by the outage policy (`closed`: refused) while the
  primary of their port could not be asked, and their share of all decisions.
- **p99 during fault**, **slowest**: of the decisions that started while the fault
  lasted (ms, s). With `QUOTA_OUTAGE_WAIT_SECONDS` the calls caught by the failover
  wait for it, so the slowest is about the recovery time.
- **recovery**: from the fault until the last degraded decision ended, s.
- **lost**, **twice**, **counters = ledger after**: as above.

{table}"""
CLUSTER_TABLE = (
    "| scenario | calls | raised | degraded | p99 during fault (ms) | slowest (s) "
    "| recovery (s) | lost | twice | counters = ledger after (s) |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faults")
    parser.add_argument("--heavy", action="store_true")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--gate", choices=["sync", "async"], default="sync")
    args = parser.parse_args(argv)
    load = HEAVY if args.heavy else LIGHT
    unit = "threads" if args.gate == "sync" else "AsyncGate tasks"
    label = f"{load.processes} processes x {load.threads} {unit}, {load.ports} ports"
    spool = Path(tempfile.mkdtemp(prefix="quota-faults-spool-"))
    try:
        results, others = run_all(load, label, args.only, spool, args.heavy, args.gate)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        "| scenario | decisions | p99 during fault (ms) | past cap (worst port) | lost | twice "
        "| counters = ledger after (s) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    )
    text_out = HEADER.format(
        when=when, load=label, fault=load.fault, table_head=head, processes=load.processes
    )
    failovers = ("cluster-", "sentinel-")
    plain = [r for r in results if not r.scenario.startswith(failovers)]
    text_out += "\n".join(r.line() for r in plain) + "\n"
    clustered = [r for r in results if r.scenario.startswith(failovers)]
    if clustered:
        text_out += CLUSTER_HEADER.format(table=CLUSTER_TABLE)
        text_out += "\n".join(r.cluster_line() for r in clustered) + "\n"
    if others:
        text_out += "\n## Other faults\n\n| scenario | result |\n| --- | --- |\n"
        text_out += "\n".join(others) + "\n"
    if args.output:
        args.output.write_text(text_out)
    print(text_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
