"""AsyncGate against a redis-server of the test's own, killed, hung and restarted empty:
the same outage policy, breaker and hold as Gate (tests/faults/test_outages.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Engine, text

import quota._acalls
from quota import AsyncGate, Gate, Settings
from tests.servers import RedisServer


def _state(gate: AsyncGate) -> str:
    return gate.breaker.state  # read anew: a prober task changes it between awaits


def _budget(settings: Settings, cap: int) -> None:
    with Gate(settings) as admin:
        admin.set_budget(
            "p", enabled=True, soft_cap_tokens=cap, hard_cap_tokens=cap, updated_by="u"
        )


def test_killed_redis_closed_policy_refuses_at_once_and_the_prober_closes_the_circuit(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    _budget(fault_settings, 1000)
    settings = fault_settings.model_copy(update={"breaker_reset_seconds": 0.1})

    async def main() -> None:
        async with AsyncGate(settings) as gate:
            assert (await gate.check("p", 1)).ok
            server.kill()
            for _ in range(settings.breaker_failures + 1):
                d = await gate.check("p", 1)
                assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)
            assert gate.breaker.state != "closed"
            r = await gate.reserve("p", 1, "f")
            assert (r.ok, r.reservation_id, r.degraded) == (False, None, True)
            seen = {(await gate.check("p", 1)).reason for _ in range(1000)}
            assert seen == {"unavailable"}
            server.start()
            deadline = time.monotonic() + 5
            while _state(gate) != "closed" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # nobody calls: the prober task closes it
            assert _state(gate) == "closed"
            d = await gate.check("p", 1)
            assert (d.ok, d.degraded) == (True, False)

    asyncio.run(main())


def test_open_policy_commit_during_an_outage_goes_to_postgres_once(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    _budget(fault_settings, 1000)
    settings = fault_settings.model_copy(update={"outage_policy": "open"})

    async def main() -> None:
        async with AsyncGate(settings) as gate:
            await gate.check("p", 1)
            server.kill()
            d = await gate.reserve("p", 50, "f", user_id="u1")
            assert (d.ok, d.degraded) == (True, True)
            assert d.reservation_id
            done, again = [
                await gate.commit(
                    d.reservation_id, input_tokens=40, output_tokens=2, provider="x", model="m"
                )
                for _ in range(2)
            ]
            assert (done.stored, done.backend, done.duplicate) == (True, "postgres", False)
            assert again.duplicate

    asyncio.run(main())
    with pg.connect() as conn:
        rows = conn.execute(text("SELECT port_id, total_tokens, user_id FROM ledger")).all()
    assert [tuple(r) for r in rows] == [("p", 42, "u1")]


def test_a_hung_redis_holds_no_task_past_the_timeout(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    """SIGSTOPed: the calls in flight fail as timeouts together, the breaker opens, and
    later calls are answered by the policy without touching the connection."""
    _budget(fault_settings, 1000)

    async def main() -> None:
        async with AsyncGate(fault_settings) as gate:
            assert (await gate.check("p", 1)).ok
            server.pause()
            try:
                decisions = await asyncio.gather(*(gate.check("p", 1) for _ in range(50)))
                assert {(d.reason, d.degraded) for d in decisions} == {("unavailable", True)}
                for _ in range(fault_settings.breaker_failures):
                    await gate.check("p", 1)
                assert gate.breaker.state != "closed"
                d = await gate.check("p", 1)
                assert (d.reason, d.degraded) == ("unavailable", True)
            finally:
                server.resume()

    asyncio.run(main())


def test_after_redis_lost_its_data_ports_are_held_then_rebuilt_with_the_journal(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    _budget(fault_settings, 900)

    async def main() -> None:
        async with AsyncGate(fault_settings) as gate:
            deadline = time.monotonic() + 5
            while gate._epoch is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the watch task's first look at the epoch
            for i in range(3):
                await gate.record(
                    port_id="p", feature="f", provider="x", model="m",
                    input_tokens=300, output_tokens=0, request_id=f"r-{i}",
                )  # fmt: skip
            server.restart()
            gate.breaker.reset()
            d = await gate.check("p", 1)
            assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)  # held
            deadline = time.monotonic() + 15
            while (d := await gate.check("p", 1)).degraded and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert (d.ok, d.used_tokens, d.degraded) == (False, 900, False)

    asyncio.run(main())
    with pg.connect() as conn:
        reqs = conn.execute(text("SELECT request_id FROM ledger ORDER BY 1")).scalars().all()
    assert reqs == ["r-0", "r-1", "r-2"]  # replayed from the journal, once each


def test_commits_waiting_for_a_replica_hold_up_neither_other_calls_nor_each_other(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    """QUOTA_REPLICA_ACK with no replica: each commit's WAIT blocks its connection for
    the full wait. AsyncGate pipelines its calls on one connection, so the WAITed calls
    go on connections of their own, one per call in flight as the sync gate's threads
    have: a reserve is answered while commits wait, and the commits wait side by side."""
    _budget(fault_settings, 1000)
    settings = fault_settings.model_copy(update={"replica_ack": 2000, "redis_timeout": 5.0})

    async def main() -> None:
        async with AsyncGate(settings) as gate:
            ids = [(await gate.reserve("p", 10, "f")).reservation_id for _ in range(6)]
            started = time.monotonic()
            commits = [
                asyncio.create_task(
                    gate.commit(rid or "", input_tokens=7, output_tokens=0, provider="x", model="m")
                )
                for rid in ids
            ]
            await asyncio.sleep(0.1)  # written, and waiting for a replica there is not
            asked = time.monotonic()
            other = await gate.reserve("p", 10, "f")
            assert other.ok
            assert time.monotonic() - asked < 1.0  # not behind the commits' 2 s WAITs
            results = await asyncio.gather(*commits)
            assert time.monotonic() - started < 6.0  # side by side: one after another is 12 s
            assert [(r.stored, r.total_tokens) for r in results] == [(True, 7)] * 6

    asyncio.run(main())


def test_the_wait_connections_stay_within_their_bound_in_a_burst(
    fault_settings: Settings, server: RedisServer, pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six commits at once, each blocked in WAIT (no replica), with room for two
    connections of their own: two are opened, not six, and all six are counted."""
    monkeypatch.setattr(quota._acalls, "ACKED_WIRES", 2)
    _budget(fault_settings, 1000)
    settings = fault_settings.model_copy(update={"replica_ack": 300})

    async def main() -> None:
        async with AsyncGate(settings) as gate:
            ids = [(await gate.reserve("p", 10, "f")).reservation_id for _ in range(6)]
            results = await asyncio.gather(
                *(
                    gate.commit(rid or "", input_tokens=7, output_tokens=0, provider="x", model="m")
                    for rid in ids
                )
            )
            assert [r.stored for r in results] == [True] * 6
            assert isinstance(gate._call, quota._acalls.AsyncScriptCaller)
            assert len(gate._call._acked) == 2

    asyncio.run(main())
