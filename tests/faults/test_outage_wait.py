"""QUOTA_OUTAGE_WAIT_SECONDS against a redis-server of the test's own, SIGKILLed and
started again (AOF, so it comes back with its data): a call made while it is down waits
for it and is decided by Redis, not by the outage policy, unless the wait runs out."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from quota import AsyncGate, Gate, Settings
from tests.servers import RedisServer


@pytest.fixture
def kept() -> Iterator[RedisServer]:
    s = RedisServer(persist=True).start()
    yield s
    s.cleanup()


def _waiting(settings: Settings, server: RedisServer, seconds: float) -> Settings:
    return settings.model_copy(
        update={"redis_url": server.url, "redis_timeout": 0.5, "outage_wait_seconds": seconds}
    )


def _down_for(server: RedisServer, seconds: float) -> threading.Thread:
    """SIGKILL the server now and start it again ``seconds`` later, on a thread."""
    server.kill()
    back = threading.Timer(seconds, server.start)
    back.start()
    return back


def test_a_reserve_and_a_commit_wait_out_a_restart(
    settings: Settings, kept: RedisServer, pg: Engine
) -> None:
    with Gate(_waiting(settings, kept, 10)) as gate:
        gate.set_budget("p", enabled=True, soft_cap_tokens=100, hard_cap_tokens=100, updated_by="u")
        assert gate.reserve("p", 10, "f").ok
        back = _down_for(kept, 1.0)
        started = time.monotonic()
        d = gate.reserve("p", 10, "f")
        waited = time.monotonic() - started
        back.join()
        assert (d.ok, d.degraded) == (True, False)
        assert waited >= 0.9  # it was decided once the server was back
        assert d.reservation_id is not None
        back = _down_for(kept, 0.5)
        r = gate.commit(d.reservation_id, input_tokens=7, output_tokens=0, provider="x", model="m")
        back.join()
        assert (r.stored, r.backend) == (True, "redis")  # counted there, not the fallback's
        status = gate.status("p")
        assert (status.used_tokens, status.reserved_tokens) == (7, 10)


def test_the_policy_decides_once_the_wait_runs_out(
    settings: Settings, kept: RedisServer, pg: Engine
) -> None:
    with Gate(_waiting(settings, kept, 0.3)) as gate:
        gate.set_budget("p", enabled=True, soft_cap_tokens=100, hard_cap_tokens=100, updated_by="u")
        assert gate.check("p", 1).ok
        back = _down_for(kept, 3.0)
        started = time.monotonic()
        d = gate.reserve("p", 10, "f")
        waited = time.monotonic() - started
        assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)
        assert 0.3 <= waited < 2.5  # gave up at the wait's end, long before the server came back
        back.join()


def test_an_async_reserve_waits_out_a_restart_without_blocking_the_loop(
    settings: Settings, kept: RedisServer, pg: Engine
) -> None:
    waiting = _waiting(settings, kept, 10)
    with Gate(waiting) as admin:
        admin.set_budget(
            "p", enabled=True, soft_cap_tokens=100, hard_cap_tokens=100, updated_by="u"
        )

    async def main() -> None:
        async with AsyncGate(waiting) as gate:
            assert (await gate.reserve("p", 10, "f")).ok
            back = _down_for(kept, 1.0)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            d = await gate.reserve("p", 10, "f")
            ticker.cancel()
            await asyncio.to_thread(back.join)
            assert (d.ok, d.degraded) == (True, False)
            assert ticks >= 10  # the loop ran other tasks while this call waited
            assert (await gate.status("p")).reserved_tokens == 20

    asyncio.run(main())
