"""What only a Redis Cluster has, on the session's local cluster (3 primaries, 3
replicas: tests/servers.py): ports spread over every primary, one FCALL per decision
with the slot worked out by the client, check_many across primaries, a slot migrated
under load, and a primary that lost its data."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine, text

from quota import Gate, Settings
from quota._acluster import AsyncClusterCaller
from quota._cluster import ClusterCaller
from quota._slots import SlotMap, slot_of
from quota.drain import Drainer
from quota.keys import KeyLayout
from quota.periods import period_id
from quota.scripts import library
from quota.topology import sync_client
from tests.conftest import watched
from tests.servers import ClusterServers, RedisServer

pytestmark = pytest.mark.cluster


def ports_by_primary(cluster: ClusterServers, settings: Settings, per: int) -> dict[int, list[str]]:
    """``per`` port ids on each primary (by its port number)."""
    layout = KeyLayout(settings.key_prefix, settings.shards)
    out: dict[int, list[str]] = {n.port: [] for n in cluster.primaries()}
    i = 0
    while any(len(v) < per for v in out.values()):
        port = f"port-{i}"
        owner = cluster.owner(layout.for_port(port).budget).port
        if len(out[owner]) < per:
            out[owner].append(port)
        i += 1
    return out


def commandstats(node: RedisServer) -> Counter[str]:
    with node.client() as c:
        stats = c.info("commandstats")
    return Counter({name: int(v["calls"]) for name, v in stats.items()})


def reset_stats(cluster: ClusterServers) -> None:
    for node in cluster.primaries():
        with node.client() as c:
            c.config_resetstat()


def redirected(gate: Gate) -> Counter[str]:
    call = cast(Any, gate)._call
    assert isinstance(call, ClusterCaller | AsyncClusterCaller)
    return call.redirected


def test_every_operation_on_ports_of_every_primary_is_one_fcall(
    gate: Gate, cluster: ClusterServers, settings: Settings, r: redis.Redis
) -> None:
    spread = ports_by_primary(cluster, settings, 2)
    ports = [p for group in spread.values() for p in group]
    for port in ports:
        gate.set_budget(
            port, enabled=True, soft_cap_tokens=400, hard_cap_tokens=1000, updated_by="t"
        )
        gate.check(port, 1)  # budget copy in place
    watched(gate, r)
    time.sleep(0.2)
    reset_stats(cluster)
    calls = 0
    for port in ports:
        d = gate.reserve(port, 100, "chat")
        assert d.ok
        assert d.reservation_id
        gate.commit(d.reservation_id, input_tokens=60, output_tokens=20, provider="x", model="m")
        gate.record(
            port_id=port, feature="ocr", provider="x", model="m", input_tokens=5, output_tokens=5
        )
        gate.release(gate.reserve(port, 10, "chat").reservation_id or "")
        assert gate.check(port, 1).used_tokens == 90
        calls += 6
    stats = {n.port: commandstats(n) for n in cluster.primaries()}
    # Every decision and report was one FCALL on the primary that owns its port...
    assert sum(s["cmdstat_fcall"] + s["cmdstat_fcall_ro"] for s in stats.values()) == calls
    for primary, group in spread.items():
        assert stats[primary]["cmdstat_fcall"] + stats[primary]["cmdstat_fcall_ro"] == 6 * len(
            group
        )
    # ...with no key lookup (COMMAND GETKEYS), no slot map read and no redirect.
    for s in stats.values():
        assert s["cmdstat_command|getkeys"] + s["cmdstat_command"] == 0
        assert s["cmdstat_cluster|slots"] + s["cmdstat_asking"] == 0
    assert not redirected(gate)
    statuses = {p: gate.status(p).used_tokens for p in ports}
    assert statuses == dict.fromkeys(ports, 90)


def test_check_many_across_primaries_equals_check(
    gate: Gate, cluster: ClusterServers, settings: Settings
) -> None:
    spread = ports_by_primary(cluster, settings, 3)
    ports = [p for group in spread.values() for p in group]
    for n, port in enumerate(ports):
        gate.set_budget(
            port, enabled=True, soft_cap_tokens=1000, hard_cap_tokens=1000, updated_by="t"
        )
        gate.record(
            port_id=port,
            feature="f",
            provider="x",
            model="m",
            input_tokens=n * 100,
            output_tokens=0,
        )
    asked = [(p, 150) for p in ports] + [("never-seen", 5)]
    many = gate.check_many(asked)
    assert many == [gate.check(p, e) for p, e in asked]
    assert [d.ok for d in many[:-1]] == [n * 100 + 150 <= 1000 for n in range(len(ports))]


def _node_id(node: RedisServer) -> str:
    with node.client() as c:
        return str(c.execute_command("CLUSTER", "MYID"))


def migrate_slot(
    cluster: ClusterServers, slot: int, source: RedisServer, target: RedisServer
) -> int:
    """Move ``slot`` from ``source`` to ``target`` as redis-cli's reshard does (MIGRATE
    of 10 keys at a time), with a pause between batches so that calls meet ASK and
    TRYAGAIN; the keys moved."""
    source_id, target_id = _node_id(source), _node_id(target)
    with target.client() as t, source.client() as s:
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
            s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(0.005)
        for node in cluster.running():  # the new owner first, as redis-cli does
            if cluster.role(node) == "master":
                with node.client() as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    cluster.wait_ok()
    return moved


def test_a_slot_migrated_under_load_changes_no_counter(
    gate: Gate, cluster: ClusterServers, settings: Settings
) -> None:
    spread = ports_by_primary(cluster, settings, 1)
    source = next(n for n in cluster.primaries() if n.port in spread)
    port = spread[source.port][0]
    target = next(n for n in cluster.primaries() if n.port != source.port)
    pk = gate.layout.for_port(port)
    with source.client() as c:
        slot = int(c.execute_command("CLUSTER", "KEYSLOT", pk.budget))
    gate.set_budget(
        port, enabled=True, soft_cap_tokens=10**9, hard_cap_tokens=10**9, updated_by="t"
    )
    spent: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                d = gate.reserve(port, 50, "chat")
                assert (d.ok, d.degraded) == (True, False), d
                gate.commit(
                    d.reservation_id or "",
                    input_tokens=n % 7,
                    output_tokens=3,
                    provider="x",
                    model="m",
                )
                spent.append(n % 7 + 3)
                assert gate.check_many([(port, 1)])[0].ok
            except BaseException as exc:
                errors.append(exc)
                return

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(0.3)
    try:
        moved = migrate_slot(cluster, slot, source, target)
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors[0]
    assert moved >= 4  # the port's hash, open set, counters, stream...
    assert cluster.owner(pk.budget).port == target.port
    assert gate.current_period_tokens(port) == sum(spent)
    assert gate.check(port, 0).reserved_tokens == 0
    seen = redirected(gate)
    assert seen["MOVED"] >= 1
    assert seen["ASK"] + seen["TRYAGAIN"] >= 1, seen


def test_a_moved_reply_waits_for_the_nodes_to_hear_of_the_change(
    gate: Gate, cluster: ClusterServers, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Just after a failover the nodes a map read asks may not have heard of it yet
    (gossip takes a moment): a call sent back by the stale owner (MOVED) waits a little
    between reads of the map instead of spending its redirects at once."""
    spread = ports_by_primary(cluster, settings, 1)
    owner_port, (port, *_) = next(iter(spread.items()))
    gate.set_budget(port, enabled=True, soft_cap_tokens=400, hard_cap_tokens=1000, updated_by="t")
    assert gate.check(port, 1).ok
    call = cast(Any, gate)._call
    slot = slot_of(gate.layout.for_port(port).budget)
    stale = next(f"127.0.0.1:{n.port}" for n in cluster.primaries() if n.port != owner_port)
    take = SlotMap._take
    stale_until = time.monotonic() + 0.1  # the nodes hear of the change 0.1 s from now

    def stale_take(self: SlotMap, slots: list[Any], asked: str) -> None:
        take(self, slots, asked)
        if time.monotonic() < stale_until:
            self.owners[slot] = stale

    monkeypatch.setattr(SlotMap, "_take", stale_take)
    if isinstance(call, AsyncClusterCaller):
        cast(Any, gate).run(call.refresh())
    else:
        call.refresh()
    assert call.slots.owners[slot] == stale
    d = gate.reserve(port, 10, "chat")
    assert (d.ok, d.degraded) == (True, False)
    assert redirected(gate)["MOVED"] >= 2  # the map read again was stale at least once
    assert call.slots.owners[slot] == f"127.0.0.1:{owner_port}"
    assert gate.status(port).reserved_tokens == 10


def test_a_primary_that_lost_its_data_is_rebuilt_and_the_others_are_untouched(
    gate: Gate, cluster: ClusterServers, settings: Settings, r: redis.Redis, pg: Engine
) -> None:
    """FLUSHALL and FUNCTION FLUSH on one primary (its replica follows), as a restart
    without persistence would leave it: its ports come back from the ledger and the
    gate's journal, with their usage; ports on the other primaries never notice."""
    spread = ports_by_primary(cluster, settings, 2)
    ports = [p for group in spread.values() for p in group]
    for port in ports:
        gate.set_budget(
            port, enabled=True, soft_cap_tokens=10_000, hard_cap_tokens=10_000, updated_by="t"
        )
        gate.record(
            port_id=port, feature="f", provider="x", model="m", input_tokens=700, output_tokens=0
        )
    watched(gate, r)
    lost_node = cluster.primaries()[0]
    with lost_node.client() as c:
        c.execute_command("FUNCTION", "FLUSH")
        c.flushall()
    lost = spread[lost_node.port]
    kept = [p for p in ports if p not in lost]
    for port in kept:  # the other primaries answer as before, at once
        d = gate.check(port, 1)
        assert (d.ok, d.degraded, d.used_tokens) == (True, False, 700)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # held until every gate replayed its journal
        d = gate.check(lost[0], 1)
        if not d.degraded:
            break
        time.sleep(0.1)
    for port in lost:
        d = gate.check(port, 1)
        assert (d.ok, d.degraded, d.used_tokens) == (True, False, 700), port
    with lost_node.client() as c:
        assert c.function_list(library=library().name)


def test_replica_ack_returns_once_a_replica_has_the_usage(
    cluster: ClusterServers, settings: Settings, pg: Engine
) -> None:
    """QUOTA_REPLICA_ACK: commit and record wait (WAIT 1, in the same write) until a
    replica has the change, so the replica a failover promotes has it too."""
    acked = settings.model_copy(update={"replica_ack": 1000})
    port = "acked"
    with Gate(acked) as gate:
        gate.set_budget(
            port, enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**6, updated_by="t"
        )
        primary = cluster.owner(gate.layout.for_port(port).budget)
        replica = cluster.replica_of(primary)
        gate.check(port, 1)
        reset_stats(cluster)
        month = period_id("month", datetime.now(UTC))
        key = gate.layout.for_port(port).usage("month", month)
        with replica.client() as c:
            c.execute_command("READONLY")
            for n in range(1, 11):
                d = gate.reserve(port, 10, "chat")
                gate.commit(
                    d.reservation_id or "", input_tokens=7, output_tokens=0, provider="x", model="m"
                )
                gate.record(
                    port_id=port,
                    feature="f",
                    provider="x",
                    model="m",
                    input_tokens=3,
                    output_tokens=0,
                )
                assert int(c.hget(key, "t") or 0) == 10 * n  # on the replica already
        assert commandstats(primary)["cmdstat_wait"] == 20  # commits and records only


def test_a_write_no_replica_acknowledged_goes_to_the_ledger_at_once(
    cluster: ClusterServers, settings: Settings, pg: Engine
) -> None:
    """The replica hung: WAIT answers 0 after QUOTA_REPLICA_ACK ms. Redis counted the
    commit, but a failover could lose it, so the ledger takes it at once; the primary
    is healthy, so decisions go on as before, and the drain's twin is dropped."""
    acked = settings.model_copy(update={"replica_ack": 200})
    port = "hung-replica"
    with Gate(acked) as gate:
        gate.set_budget(
            port, enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**6, updated_by="t"
        )
        replica = cluster.replica_of(cluster.owner(gate.layout.for_port(port).budget))
        d = gate.reserve(port, 10, "chat")
        replica.pause()
        try:
            r = gate.commit(
                d.reservation_id or "", input_tokens=7, output_tokens=0, provider="x", model="m"
            )
            after = gate.reserve(port, 10, "chat")
        finally:
            replica.resume()
        assert (r.stored, r.backend, r.used_tokens) == (True, "redis", 7)
        assert (after.ok, after.degraded) == (True, False)  # no breaker opened
        assert not gate._owed
        with pg.connect() as conn:
            rows = conn.execute(
                text("SELECT event_id::text, total_tokens FROM ledger WHERE port_id = :p"),
                {"p": port},
            ).all()
        assert [(str(e), t) for e, t in rows] == [(r.event_id, 7)]
        cluster.wait_ok()
        drainer = Drainer(acked, sync_client(acked.redis_url, decode_responses=True), pg)
        shard = gate.layout.for_port(port).shard
        drainer.drain_shard(shard, max_seconds=5)
        with pg.connect() as conn:
            n = conn.execute(
                text("SELECT count(*) FROM ledger WHERE port_id = :p"), {"p": port}
            ).scalar_one()
        assert n == 1  # the stream's twin dropped
        assert gate.current_period_tokens(port) == 7
