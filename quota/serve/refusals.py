"""A daily tally of the decisions the HTTP API refused, by reason, kept in Redis so
that every `quota serve` worker adds to one count and the dashboard can show it.
Gates embedded in services count theirs in the quota_decisions metric instead."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import redis

from quota.async_gate import AsyncGate

#: Days a tally is kept (the dashboard shows the last seven).
KEEP_DAYS = 8


def _key(prefix: str, day: date) -> str:
    return f"{prefix}:api:refusals:{day.isoformat()}"


async def count(gate: AsyncGate, reasons: Iterable[str]) -> None:
    """Add refusals to today's tally (UTC); a Redis failure drops them: it is a tally,
    not usage, and never fails the answer."""
    tally = Counter(reasons)
    if not tally:
        return
    key = _key(gate.settings.key_prefix, datetime.now(UTC).date())
    try:
        pipe = gate.redis.pipeline(transaction=False)
        for reason, n in tally.items():
            pipe.hincrby(key, reason, n)
        pipe.expire(key, KEEP_DAYS * 86400)
        await pipe.execute()
    except redis.exceptions.RedisError:
        pass


async def recent(gate: AsyncGate, today: date, days: int = 7) -> dict[str, tuple[int, int]]:
    """Reason -> (refusals today, refusals in the last ``days`` days)."""
    pipe = gate.redis.pipeline(transaction=False)
    for n in range(days):
        pipe.hgetall(_key(gate.settings.key_prefix, today - timedelta(n)))
    replies = await pipe.execute()
    out: dict[str, tuple[int, int]] = {}
    for n, reply in enumerate(replies):
        for reason, value in (reply or {}).items():
            now, week = out.get(reason, (0, 0))
            out[reason] = (now + (int(value) if n == 0 else 0), week + int(value))
    return dict(sorted(out.items()))
