"""AsyncGate's own transport: concurrent calls in one write, cancellation that never
desynchronises the connection, one loop per gate, fork, and tasks of many processes
racing on one port's hard cap. (Its behaviour beside Gate's: every test that takes
the `gate` fixture runs against both.)"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import warnings
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from quota import AsyncGate, Settings, WrongEventLoop
from quota._acalls import AsyncScriptCaller
from quota.drain import Drainer
from quota.housekeeping import forget_prefix
from quota.reconcile import Reconciler

HARD_CAP = 2_000


@pytest.fixture
def agate_settings(settings: Settings, pg: Engine, r: redis.Redis) -> Any:
    yield settings
    forget_prefix(r, settings.key_prefix)


def test_concurrent_calls_share_one_write(agate_settings: Settings) -> None:
    async def main() -> tuple[int, int]:
        async with AsyncGate(agate_settings) as gate:
            await gate.check("p", 1)  # connected, budget copy loaded
            assert isinstance(gate._call, AsyncScriptCaller)
            wire = gate._call._wire
            assert wire is not None
            writes: list[int] = []
            write = wire.transport.write

            def counted(data: Any) -> None:
                writes.append(len(data))
                write(data)

            wire.transport.write = counted  # type: ignore[method-assign]
            decisions = await asyncio.gather(*(gate.check("p", 1) for _ in range(200)))
            assert all(d.ok for d in decisions)
            lone = len(writes)
            await gate.check("p", 1)
            return lone, len(writes) - lone

    together, alone = asyncio.run(main())
    # The first of the 200 goes at once (the connection was idle), the other 199 in one
    # write with it in flight; a lone call goes at once, in a write of its own.
    assert (together, alone) == (2, 1)


def test_cancelled_calls_never_desynchronise_the_connection(
    agate_settings: Settings, pg: Engine, r: redis.Redis
) -> None:
    """10,000 calls, a random third of them cancelled in flight: every call that
    completes gets its own reply, and the counters equal the ledger after a drain."""

    async def main() -> int:
        async with AsyncGate(agate_settings) as gate:
            rng = random.Random(7)
            completed = 0

            async def one(i: int) -> None:
                nonlocal completed
                r = await gate.record(
                    port_id=f"p{i % 5}",
                    feature="f",
                    provider="x",
                    model="m",
                    input_tokens=i % 17 + 1,
                    output_tokens=0,
                    request_id=f"req-{i}",
                )
                # Its own reply: the request's tokens, not a neighbour's.
                assert (r.stored, r.total_tokens) == (True, i % 17 + 1)
                d = await gate.check(f"p{i % 5}", i)
                assert d.used_tokens is not None
                completed += 1

            for start in range(0, 10_000, 500):
                tasks = [asyncio.create_task(one(i)) for i in range(start, start + 500)]
                await asyncio.sleep(0)
                for t in tasks:
                    if rng.random() < 0.33:
                        t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            # The connection still answers in step.
            assert (await gate.check("p0", 3)).ok
            return completed

    completed = asyncio.run(main())
    assert 0 < completed < 10_000
    drainer = Drainer(agate_settings, r, pg)
    reconciler = Reconciler(agate_settings, r, pg, drainer)
    for shard in range(agate_settings.shards):
        drainer.drain_shard(shard, max_seconds=30)
    drifted = reconciler.reconcile_shards(range(agate_settings.shards)).ports_drifted
    assert drifted == 0  # what Redis counted is what the ledger holds


def test_another_event_loop_gets_a_clear_error(agate_settings: Settings) -> None:
    loop = asyncio.new_event_loop()
    gate = AsyncGate(agate_settings)
    try:
        loop.run_until_complete(gate.check("p", 1))
        other = asyncio.new_event_loop()
        with pytest.raises(WrongEventLoop, match="one AsyncGate per loop"):
            other.run_until_complete(gate.check("p", 1))
        other.close()
        loop.run_until_complete(gate.aclose())
    finally:
        loop.close()


def test_a_dropped_connection_is_reopened_silently(
    agate_settings: Settings, r: redis.Redis
) -> None:
    async def main() -> None:
        async with AsyncGate(agate_settings) as gate:
            await gate.set_budget(
                "p", enabled=True, soft_cap_tokens=5, hard_cap_tokens=10, updated_by="u"
            )
            assert (await gate.check("p", 1)).ok
            r.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.05)  # the protocol sees the connection end
            assert (await gate.check("p", 1)).degraded is False

    asyncio.run(main())


def test_no_sync_redis_parts_reach_the_asyncio_clients(agate_settings: Settings) -> None:
    """redis-py warns (UserWarning) and converts when a sync Retry reaches an asyncio
    connection: every connection the gate opens gets the asyncio one."""

    async def main() -> None:
        async with AsyncGate(agate_settings) as gate:
            await gate.set_budget(
                "p", enabled=True, soft_cap_tokens=50, hard_cap_tokens=100, updated_by="u"
            )
            d = await gate.reserve("p", 10, "f")
            assert d.ok
            assert d.reservation_id
            await gate.commit(
                d.reservation_id, input_tokens=4, output_tokens=1, provider="x", model="m"
            )
            assert (await gate.status("p")).used_tokens == 5

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(main())


def _forked(settings: Settings, gate: AsyncGate, out: mp.Queue[tuple[int, int]]) -> None:
    async def main() -> int:
        used = await gate.current_period_tokens("p")
        await gate.aclose()
        return used

    out.put((os.getpid(), asyncio.run(main())))


def test_a_forked_child_opens_its_own_connection(agate_settings: Settings) -> None:
    gate = AsyncGate(agate_settings)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            gate.record(
                port_id="p", feature="f", provider="x", model="m", input_tokens=7, output_tokens=0
            )
        )
        ctx = mp.get_context("fork")
        out: mp.Queue[tuple[int, int]] = ctx.Queue()
        child = ctx.Process(target=_forked, args=(agate_settings, gate, out))
        child.start()
        pid, used = out.get(timeout=30)
        child.join(10)
        assert (pid, used) == (child.pid, 7)
        assert loop.run_until_complete(gate.current_period_tokens("p")) == 7  # parent unharmed
        loop.run_until_complete(gate.aclose())
    finally:
        loop.close()


def _racer(settings: Settings, out: mp.Queue[int]) -> None:
    async def main() -> int:
        async with AsyncGate(settings) as gate:
            rng = random.Random(os.getpid())

            async def spend() -> int:
                total = 0
                while True:
                    estimate = rng.randint(1, 20)
                    d = await gate.reserve("race", estimate, "f")
                    if not d.ok:
                        return total
                    actual = rng.randint(0, estimate)
                    await gate.commit(
                        d.reservation_id or "", input_tokens=actual, output_tokens=0,
                        provider="x", model="m",
                    )  # fmt: skip
                    total += actual

            return sum(await asyncio.gather(*(spend() for _ in range(500))))

    out.put(asyncio.run(main()))


def test_tasks_of_four_processes_never_pass_the_hard_cap(
    agate_settings: Settings, pg: Engine
) -> None:
    async def budget() -> None:
        async with AsyncGate(agate_settings) as gate:
            await gate.set_budget(
                "race", enabled=True, soft_cap_tokens=HARD_CAP // 2, hard_cap_tokens=HARD_CAP,
                updated_by="u",
            )  # fmt: skip

    asyncio.run(budget())
    ctx = mp.get_context("spawn")
    out: mp.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(agate_settings, out)) for _ in range(4)]
    for p in procs:
        p.start()
    spent = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)

    async def used() -> int:
        async with AsyncGate(agate_settings) as gate:
            return await gate.current_period_tokens("race")

    counted = asyncio.run(used())
    assert counted == spent  # every committed token counted once
    assert HARD_CAP // 2 <= counted <= HARD_CAP  # the race ran into the cap, never past it
