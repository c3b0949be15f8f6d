"""The client's work around each gate call (validation, keys, packing the FCALL,
building the result, metrics), with the FCALL answered in-process by the reply Redis
gives such a call: no system call and no wait. Within a run the operations take
turns, so their rows compare; between runs they follow the VM's speed (on 2026-11-26
the same code measured 6-10 µs in the morning and 8-30 in the afternoon), so a change
to the client's Python is judged by old and new code alternating in one process.

The gate runs on a `CannedTransport` whose answers pack each FCALL as the real
transport does and return the reply Redis gives an admitted call: no private attribute
is swapped. Between real round trips the same Python runs 2-3x slower than here, its
caches cold (docs/BENCHMARKS.md, "Client").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import hiredis
import redis

from quota.canned import CannedTransport
from quota.gate import Gate
from quota.scripts import library
from quota.settings import Settings
from tests.benchmarks._measure import Row, reset
from tests.benchmarks.hotpath import HUGE, NAMES, operations

_OPS = ("check", "reserve", "commit", "record")


def _best_us(
    loops: dict[str, Callable[[], object]],
    calls: int,
    before: dict[str, Callable[[], object]] | None = None,
    rounds: int = 5,
) -> dict[str, float]:
    """Microseconds per call of each loop: the best of ``rounds`` timed loops of
    ``calls``, as timeit advises (the slower ones measure what else the machine did).
    The loops take turns round by round: a slow patch of this VM can outlast one
    operation's loops back to back (one run measured record at twice another's), but
    not its loops spread over the whole section. ``before[name]``, if given, runs
    untimed before each of that loop's turns."""
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(rounds):
        for name, fn in loops.items():
            if before and name in before:
                before[name]()
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / calls)
    return {name: b * 1e6 for name, b in best.items()}


def _pack(function: str, keys: Sequence[Any], args: Sequence[Any]) -> object:
    """What ScriptCaller sends for one call."""
    return hiredis.pack_command(("FCALL", function, len(keys), *keys, *args))


# Replies as Redis gives them for an admitted call on a port far from its caps.
_BUDGET = f"1|{HUGE // 2}|{HUGE}|month"
_DECISION = f"1||1000|0|||{_BUDGET}"
_REPLIES = {
    "check": _DECISION,
    "reserve": _DECISION,
    "commit": "1|1000|0|0",
    "record": "1|1000|0|0",
}


def _packing(function: str, reply: Any) -> Callable[[Sequence[Any], Sequence[Any]], Any]:
    """An answer that packs the FCALL as the real transport does, then replies."""

    def answer(keys: Sequence[Any], args: Sequence[Any]) -> Any:
        _pack(function, keys, args)
        return reply(args) if callable(reply) else reply

    return answer


def _canned_gate(settings: Settings) -> tuple[Gate, CannedTransport]:
    """A gate on a canned transport: the client's Python, without the round trip."""
    functions = library().functions
    answers: dict[str, list[Any]] = {
        op: [_packing(functions[op], reply)] for op, reply in _REPLIES.items()
    }
    # check_many: one decision per port of the shard's call (its ARGV: day, estimates).
    answers["check_many"] = [
        _packing(functions["check_many"], lambda args: [_DECISION] * (len(args) - 1))
    ]
    canned = CannedTransport(answers, repeat=True)
    return Gate(settings, transport=canned), canned


def _check_many_row(settings: Settings, calls: int, ports: int = 1000) -> Row:
    """check_many's own work per port, its FCALLs (one per shard) answered in-process."""
    requests = [(f"tenant-{i}", 1500) for i in range(ports)]
    gate, _ = _canned_gate(settings)
    with gate:
        per_call = _best_us({"check_many": partial(gate.check_many, requests)}, calls)
    return Row(
        "client",
        f"Python per port, FCALLs answered in-process: gate.check_many, {ports:,} ports",
        per_call["check_many"] / ports,
        "µs",
        note=f"best of 5 loops of {calls:,} calls",
    )


def bench_client(settings: Settings, client: redis.Redis, calls: int) -> list[Row]:
    reset(settings, client)
    rows: list[Row] = [_check_many_row(settings, max(1, calls // 1000))]
    functions = library().functions
    # One call of each, recorded, for the rows' packing share.
    once = CannedTransport({op: [r] for op, r in _REPLIES.items()})
    with Gate(settings, transport=once) as gate:
        ops, _ = operations(gate, gate.redis, ["port-1"], seed=1)
        for name in _OPS:
            ops[name]()
    packed = {op: (functions[op], keys, args) for op, keys, args in once.calls}
    gate, _ = _canned_gate(settings)
    with gate:
        ops, held = operations(gate, gate.redis, ["port-1"], seed=1)

        def reservations() -> None:  # each commit settles a reservation made here
            while len(held) < calls:
                ops["reserve"]()

        loops = {name: ops[name] for name in _OPS}
        loops |= {f"pack {name}": partial(_pack, *packed[name]) for name in _OPS}
        best = _best_us(loops, calls, {"commit": reservations})
        held.clear()
    for name in _OPS:
        rows.append(
            Row(
                "client",
                f"Python per call, FCALL answered in-process: {NAMES[name]}",
                best[name],
                "µs",
                note=f"best of 5 loops of {calls:,}, the operations taking turns; "
                f"{best['pack ' + name]:.2f} µs of it packing the FCALL",
            )
        )
    return rows
