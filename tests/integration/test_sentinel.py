"""Redis behind Sentinel, on the session's own primary, replica and three sentinels
(tests/servers.py): every call through both gates, and a failover the sentinels make
under load that no call notices. (A primary killed: tests/faults, ./scripts/faults.)"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, text

from quota import Gate, Settings
from quota.drain import Drainer
from quota.topology import sync_client
from tests.servers import SentinelServers

pytestmark = pytest.mark.sentinel


def test_every_call_through_the_sentinels(gate: Gate, settings: Settings) -> None:
    assert settings.redis_url.startswith("redis+sentinel://")
    gate.set_budget("p", enabled=True, soft_cap_tokens=500, hard_cap_tokens=1000, updated_by="t")
    d = gate.reserve("p", 100, "chat")
    assert (d.ok, d.degraded) == (True, False)
    gate.commit(d.reservation_id or "", input_tokens=60, output_tokens=20, provider="x", model="m")
    gate.record(
        port_id="p", feature="ocr", provider="x", model="m", input_tokens=5, output_tokens=5
    )
    gate.release(gate.reserve("p", 10, "chat").reservation_id or "")
    assert [x.used_tokens for x in gate.check_many([("p", 1), ("q", 1)])] == [90, 0]
    assert gate.status("p").used_tokens == 90


def test_a_sentinel_failover_under_load_loses_no_usage(
    gate: Gate, sentinels: SentinelServers, pg: Engine
) -> None:
    """SENTINEL FAILOVER: the replica is promoted and the old primary made its replica,
    which refuses writes (READONLY) on the connections the gate holds: each such call
    goes again on a new connection, which the sentinels send to the new primary. Writes
    the old primary took between the promotion and its demotion are lost with it: the
    gate sees its epoch change, holds its ports and replays its journal into the
    ledger, so every commit ends up stored once."""
    gate.set_budget("p", enabled=True, soft_cap_tokens=10**9, hard_cap_tokens=10**9, updated_by="t")
    before = sentinels.primary_port()
    spent: list[str] = []
    unstored: list[object] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            d = gate.reserve("p", 10, "chat")
            if not d.ok:  # held after the loss: decided by the outage policy
                time.sleep(0.01)
                continue
            r = gate.commit(
                d.reservation_id or "", input_tokens=3, output_tokens=0, provider="x", model="m"
            )
            (spent if r.stored else unstored).append(str(r.event_id))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    with sentinels.sentinel(sentinels.sentinel_ports[0]) as s:
        s.execute_command("SENTINEL", "FAILOVER", sentinels.NAME)
    deadline = time.monotonic() + 20
    while sentinels.primary_port() in (before, None) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # calls on the old primary's connections meet READONLY now
    stop.set()
    for w in workers:
        w.join(30)
    assert sentinels.primary_port() not in (before, None)
    assert unstored == []
    sentinels.wait_ready()
    deadline = time.monotonic() + 10
    while gate.check("p", 1).degraded and time.monotonic() < deadline:
        time.sleep(0.1)  # the hold of the loss ends
    d = gate.check("p", 1)
    assert (d.ok, d.degraded) == (True, False)
    drainer = Drainer(
        gate.settings, sync_client(gate.settings.redis_url, decode_responses=True), pg
    )
    for shard in range(gate.settings.shards):
        drainer.drain_shard(shard, max_seconds=10)
    with pg.connect() as conn:
        stored = conn.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM ledger WHERE port_id = 'p'")
        ).one()
    assert tuple(stored) == (len(spent), len(spent))  # every commit once, none lost
