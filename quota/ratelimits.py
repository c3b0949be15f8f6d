"""Rate limits as exact integer token buckets: the arithmetic quota/lua/rates.lua runs,
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

import struct
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
    """The budget copy's rate-limit field: ``<q|t>:<s>:<limit>[:<size>],...``, the size
    left out when it is the limit. Short, as every decision's reply carries it: the
    functions scale it once per distinct copy (lib.lua's parse_extra), as `parse_spec`
    does."""
    return ",".join(
        f"{'q' if r.kind == 'requests' else 't'}:{r.per_seconds}:{r.limit}"
        + (f":{r.size}" if r.size != r.limit else "")
        for r in limits
    )


def parse_spec(text: str) -> tuple[Scaled, ...]:
    if not text:
        return ()
    out = []
    for item in text.split(","):
        kind, per_s, limit, *size = item.split(":")
        n, s = int(limit), int(per_s)
        out.append(Scaled(kind == "q", s, n, *scale(n, s, int(size[0]) if size else n)))
    return tuple(out)


def caps_spec(caps: dict[str, int]) -> str:
    """The budget copy's feature-cap field: ``<feature>=<tokens>,...``, sorted."""
    return ",".join(f"{f}={c}" for f, c in sorted(caps.items()))


# ----------------------------------------------------------------- the buckets
# A port's rate state, as the functions keep it (its hash's 'x' field) and replies carry
# it: numbers packed as little-endian doubles, [ms, level per limit..., hold per capped
# feature...]. The model below works on that list, as rates.lua does on its table.


def ceil_div(x: int, d: int) -> int:
    return -(-x // d)


def unpack_state(state: str | bytes) -> list[int]:
    """A rate state's numbers, from its bytes or a reply's text of them (decoded with
    ``surrogateescape``, which gives the bytes back)."""
    data = state.encode("utf-8", "surrogateescape") if isinstance(state, str) else state
    return [int(x) for x in struct.unpack(f"<{len(data) // 8}d", data)]


def pack_state(values: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def levels(limits: Sequence[Scaled], state: str | bytes) -> list[int]:
    """Each limit's level, at the state's own ms (empty buckets for a state without
    them: functions always send one, so this is only a guard)."""
    got = unpack_state(state)[1 : 1 + len(limits)]
    return got if len(got) == len(limits) else [0] * len(limits)


def drain(limits: Sequence[Scaled], v: list[int], now: int) -> None:
    """Every bucket drained to ``now`` (by ``r`` a ms, never below 0); the state is then
    at ``now``, also when the clock stepped back (the levels stay)."""
    gap = now - v[0]
    if gap > 0:
        for i, s in enumerate(limits, 1):
            v[i] = max(v[i] - gap * s.r, 0)
    v[0] = now


def admit(limits: Sequence[Scaled], v: Sequence[int], tokens: int) -> tuple[str | None, int]:
    """Whether one call of ``tokens`` fits every bucket: (None, 0), or the reason and the
    ms to wait (0 when waiting cannot help: more tokens than a bucket holds)."""
    wait = 0
    for s, level in zip(limits, v[1:], strict=False):
        units = 1 if s.requests else tokens
        if units * s.a > s.cap:
            return "estimate-exceeds-rate-limit", 0
        over = level + units * s.a - s.cap
        if over > 0:
            wait = max(wait, ceil_div(over, s.r))
    return ("rate-limited", wait) if wait else (None, 0)


def add(limits: Sequence[Scaled], v: list[int], tokens: int, requests: int) -> None:
    """Count (or, negative, give back) ``tokens`` and ``requests`` in the buckets."""
    for i, s in enumerate(limits, 1):
        units = requests if s.requests else tokens
        if units:
            v[i] = min(max(v[i] + units * s.a, 0), LEVEL_MAX)


def give_back(limits: Sequence[Scaled], v: list[int], tokens: int) -> None:
    """``tokens`` returned to the token buckets at the state's own ms (returning before
    or after draining comes to the same level)."""
    for i, s in enumerate(limits, 1):
        if not s.requests:
            v[i] = max(v[i] - tokens * s.a, 0)


def remaining(s: Scaled, level: int) -> int:
    """Units a call could take at the level's ms."""
    return max((s.cap - level) // s.a, 0)


def reset_ms(s: Scaled, level: int) -> int:
    """Ms from the level's until the bucket has drained: all its headroom back."""
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
