"""Usage counters as the ledger gives them: per (port, period), tokens per field ("t"
the total, "f:<feature>" each feature). Pure: reconciliation compares them with Redis,
and the gate rebuilds a port that Redis lost from them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from quota.periods import Period, Windows, from_ms

# (port, period) -> {field: tokens}, field "t" or "f:<feature>"
Counters = dict[tuple[str, Period], dict[str, int]]


def fold_days(rows: Iterable[tuple[str, str, date, int]], w: Windows) -> Counters:
    """Ledger sums per (port, feature, day) → counters per (port, period). Pure."""
    day0 = from_ms(w.day_start_ms).date()
    week0 = from_ms(w.week_start_ms).date()
    month0 = from_ms(w.month_start_ms).date()
    out: Counters = defaultdict(lambda: defaultdict(int))
    for port, feature, day, tokens in rows:
        for period, start in (("day", day0), ("week", week0), ("month", month0)):
            if start <= day <= day0:
                counters = out[(port, period)]  # type: ignore[index]
                counters["t"] += tokens
                counters["f:" + feature] += tokens
    return out


def deltas(redis_side: Counters, pg_side: Counters) -> Counters:
    """What to add to each Redis counter so it equals Postgres. Pure."""
    out: Counters = {}
    for key in set(redis_side) | set(pg_side):
        have, want = redis_side.get(key, {}), pg_side.get(key, {})
        diff = {f: want.get(f, 0) - have.get(f, 0) for f in set(have) | set(want)}
        diff = {f: d for f, d in diff.items() if d}
        if diff:
            out[key] = diff
    return out


def counter_writes(
    counters: Counters, w: Windows, key_of: Callable[[str, Period, str], str]
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the Lua functions that write counters field by field (adjust,
    rebuild): each key is ``key_of(port, period, period id)``; its arguments are the
    key's EXPIREAT, its number of fields, then each field and value. Pure."""
    expiry = {"day": w.day_expire_s, "week": w.week_expire_s, "month": w.month_expire_s}
    ids = {"day": w.day_id, "week": w.week_id, "month": w.month_id}
    keys: list[str] = []
    args: list[Any] = []
    for (port, period), fields in sorted(counters.items()):
        keys.append(key_of(port, period, ids[period]))
        args += [expiry[period], len(fields)]
        for name, value in sorted(fields.items()):
            args += [name, value]
    return keys, args
