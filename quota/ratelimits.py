"""Rate limits as exact integer token buckets: the arithmetic quota/lua/lib.lua runs,
written again in Python, and the budget copy's text for them. Pure: no I/O.

A limit of ``limit`` units per ``per_seconds`` with a bucket of ``size`` units is
scaled to integers: a unit costs ``a`` and the bucket drains ``r`` per ms, where
``a / r`` is the window's ms per unit reduced by their common divisor, and holds
``cap = size * a``. A bucket's state is its level and the ms it was computed at; the
level drains by ``r`` a ms and never below 0, and may pass ``cap`` (debt: a commit
above its estimate) up to `LEVEL_MAX`. Integers below 2**53 are exact in Lua's doubles,
so Lua and Python agree to the unit (tests/integration/test_rate_model.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import gcd
from typing import Literal, NamedTuple, Protocol

RateKind = Literal["requests", "tokens"]


class Limit(Protocol):
    """What the arithmetic needs of a limit (`quota.RateLimit` has it)."""

    @property
    def kind(self) -> RateKind: ...
    @property
    def limit(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def per_seconds(self) -> int: ...


LEVEL_MAX = 2**53 - 1


def scale(limit: int, per_seconds: int, size: int) -> tuple[int, int, int]:
    """(a, r, cap): what a unit costs, what drains per ms, what the bucket holds."""
    per_ms = per_seconds * 1000
    g = gcd(per_ms, limit)
    a, r = per_ms // g, limit // g
    return a, r, size * a


class Scaled(NamedTuple):
    """One limit as the functions use it."""

    requests: bool  # a request limit (one unit a call) or a token limit
    per_seconds: int
    limit: int
    a: int
    r: int
    cap: int

    @property
    def kind(self) -> RateKind:
        return "requests" if self.requests else "tokens"


def scaled(limits: Iterable[Limit]) -> tuple[Scaled, ...]:
    return tuple(
        Scaled(r.kind == "requests", r.per_seconds, r.limit, *scale(r.limit, r.per_seconds, r.size))
        for r in limits
    )


def spec(limits: Iterable[Limit]) -> str:
    """The budget copy's rate-limit field: ``<q|t>:<s>:<limit>:<a>:<r>:<cap>,...``."""
    return ",".join(
        f"{'q' if s.requests else 't'}:{s.per_seconds}:{s.limit}:{s.a}:{s.r}:{s.cap}"
        for s in scaled(limits)
    )


def parse_spec(text: str) -> tuple[Scaled, ...]:
    if not text:
        return ()
    out = []
    for item in text.split(","):
        kind, per_s, limit, a, r, cap = item.split(":")
        out.append(Scaled(kind == "q", int(per_s), int(limit), int(a), int(r), int(cap)))
    return tuple(out)


def caps_spec(caps: dict[str, int]) -> str:
    """The budget copy's feature-cap field: ``<feature>=<tokens>,...``, sorted."""
    return ",".join(f"{f}={c}" for f, c in sorted(caps.items()))


# ----------------------------------------------------------------- the buckets


def ceil_div(x: int, d: int) -> int:
    return -(-x // d)


def drained(level: int, at: int, now: int, r: int) -> int:
    """A level computed at ``at``, at ``now``."""
    gap = now - at
    if gap <= 0:
        return level
    return 0 if gap * r >= level else level - gap * r


def levels(limits: Sequence[Scaled], state: str | None, now: int) -> list[int]:
    """Every bucket's level at ``now`` from the port's ``rl`` text,
    ``<ms>:<level>,<level>,...`` (absent: empty buckets)."""
    out = [0] * len(limits)
    if state:
        at, _, text = state.partition(":")
        for i, level in enumerate(text.split(",")[: len(limits)]):
            out[i] = drained(int(level), int(at), now, limits[i].r)
    return out


def admit(limits: Sequence[Scaled], lv: Sequence[int], tokens: int) -> tuple[str | None, int]:
    """Whether one call of ``tokens`` fits every bucket: (None, 0), or the reason and the
    ms to wait (0 when waiting cannot help: more tokens than a bucket holds)."""
    wait = 0
    for s, level in zip(limits, lv, strict=True):
        units = 1 if s.requests else tokens
        if units * s.a > s.cap:
            return "estimate-exceeds-rate-limit", 0
        over = level + units * s.a - s.cap
        if over > 0:
            wait = max(wait, ceil_div(over, s.r))
    return ("rate-limited", wait) if wait else (None, 0)


def add(limits: Sequence[Scaled], lv: list[int], tokens: int, requests: int) -> None:
    """Count (or, negative, give back) ``tokens`` and ``requests`` in the levels."""
    for i, s in enumerate(limits):
        units = requests if s.requests else tokens
        if units:
            lv[i] = min(max(lv[i] + units * s.a, 0), LEVEL_MAX)


def give_back(limits: Sequence[Scaled], state: str | None, tokens: int) -> str | None:
    """``tokens`` returned to the token buckets of a stored state, at its own time
    (returning before or after draining comes to the same level)."""
    if not state or tokens == 0:
        return state
    at, _, text = state.partition(":")
    parts = text.split(",")
    for i, s in enumerate(limits[: len(parts)]):
        if not s.requests:
            parts[i] = str(max(int(parts[i]) - tokens * s.a, 0))
    return f"{at}:{','.join(parts)}"


def stored(lv: Sequence[int], now: int) -> str:
    return f"{now}:{','.join(str(level) for level in lv)}"


def remaining(s: Scaled, level: int) -> int:
    """Units a call could take now."""
    return max((s.cap - level) // s.a, 0)


def reset_ms(s: Scaled, level: int) -> int:
    """Ms until the bucket is full again."""
    return ceil_div(level, s.r)


def duration(ms: int) -> str:
    """OpenAI's header form of a duration: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec = f"{rest / 1000:g}s"
    return f"{h}h{m}m{sec}" if h else f"{m}m{sec}"
