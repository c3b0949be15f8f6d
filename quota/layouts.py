"""Each Redis function's KEYS and ARGV, declared once.

quota/scripts.py writes these positions into the Lua when it builds the library (a
fragment says ``KEYS[$stream]``, Redis runs ``KEYS[5]``: no lookup at run time), and
the gate's core builds its calls in this order (tests/unit/test_layouts.py checks every
builder against the declaration through the canned transport). No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# What every period-keyed function (check, reserve, commit, record) starts with; the
# helpers of lib.lua rely on these positions.
PERIOD_KEYS = (
    "port",  # the port hash: the budget copy ('version', 'cfg') and state ('held', 'next', 'alert')
    "day_usage",  # usage hashes of the day, week and month: t = total, f:<feature>
    "week_usage",
    "month_usage",
)
PERIOD_ARGS = ("day",)  # the UTC day (days since 1970-01-01) whose keys the client named


@dataclass(frozen=True)
class Layout:
    """One function's KEYS and ARGV by name, in order.

    ``optional_keys`` and ``optional_args`` follow the others, present together or not
    at all (a request id's marker and its TTL: each argument costs Redis); without
    optional keys, the optional args are present or not by themselves. A function
    over many ports repeats ``per_port`` after ``keys``; ``per_port_args`` after
    ``args``. ``rest`` describes a variable tail that is not named.
    """

    keys: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    optional_keys: tuple[str, ...] = ()
    optional_args: tuple[str, ...] = ()
    per_port: tuple[str, ...] = ()
    per_port_args: tuple[str, ...] = ()
    rest: str = ""

    def __post_init__(self) -> None:
        names = [
            *self.keys, *self.args, *self.optional_keys, *self.optional_args, *self.per_port,
            *self.per_port_args,
        ]  # fmt: skip
        if len(names) != len(set(names)):
            raise ValueError(f"a name is declared twice: {names}")

    def positions(self) -> dict[str, int]:
        """Each name's 1-based Lua index; a per-port name's index inside its port's group,
        ``per_port_keys`` and ``per_port_argc`` the groups' sizes, and ``args_before_ports``
        how many ARGV come before the first port's."""
        pos = {n: i for i, n in enumerate((*self.keys, *self.optional_keys), 1)}
        pos |= {n: i for i, n in enumerate((*self.args, *self.optional_args), 1)}
        pos |= {n: i for i, n in enumerate(self.per_port, 1)}
        pos |= {n: i for i, n in enumerate(self.per_port_args, 1)}
        if self.per_port:
            pos["per_port_keys"] = len(self.per_port)
        if self.per_port_args:
            pos["per_port_argc"], pos["args_before_ports"] = len(self.per_port_args), len(self.args)
        return pos

    def named(self, keys: Sequence[Any], args: Sequence[Any]) -> dict[str, Any]:
        """A call's KEYS and ARGV by name (the first port's, for a per-port layout)."""
        all_keys = (*self.keys, *self.optional_keys, *self.per_port)
        all_args = (*self.args, *self.optional_args, *self.per_port_args)
        optional = len(keys) > len(self.keys) if self.optional_keys else len(args) > len(self.args)
        want_keys = len(self.keys) + (len(self.optional_keys) if optional else 0)
        want_args = len(self.args) + (len(self.optional_args) if optional else 0)
        fixed = not (self.per_port or self.rest)
        if fixed and (len(keys), len(args)) != (want_keys, want_args):
            raise ValueError(
                f"{len(keys)} keys and {len(args)} args, the layout has {want_keys} and {want_args}"
            )
        return dict(zip(all_keys, keys, strict=False)) | dict(zip(all_args, args, strict=False))


_SETTLE = ("open", "lapsed", "settled")  # open and lapsed reservation sets, its marker

LAYOUTS: Mapping[str, Layout] = {
    # check: KEYS period's + the open reservations; ARGV the estimate and the feature
    # whose usage to report ('' for none).
    "check": Layout((*PERIOD_KEYS, "open"), (*PERIOD_ARGS, "estimate", "feature")),
    "check_many": Layout(
        per_port=(*PERIOD_KEYS, "open"), args=PERIOD_ARGS, per_port_args=("estimate",)
    ),
    # reserve: a lease of `lease_ms`; `member` is "<32 hex>:<estimate>"; a reservation
    # whose lease ended is remembered `lapsed_ms`; `feature` for its feature's cap, sent
    # only as reserve_x (to a port known to have rate limits or caps: an argument costs
    # every other port's reserve ~0.6k instructions).
    "reserve": Layout(
        (*PERIOD_KEYS, "open", "lapsed"),
        (*PERIOD_ARGS, "estimate", "lease_ms", "member", "lapsed_ms"),
        optional_args=("feature",),
    ),
    # commit: `event` is the stream entry "id|port|user|feature|provider|model|in|out|req";
    # `settled_s` how long a settled reservation is remembered; `unbudgeted` '1' to count
    # even without a budget copy (Postgres is down).
    "commit": Layout(
        (*PERIOD_KEYS, "stream", *_SETTLE),
        (*PERIOD_ARGS, "member", "total", "feature", "event", "settled_s", "unbudgeted"),
        optional_keys=("request",),
        optional_args=("request_s",),
    ),
    "record": Layout(
        (*PERIOD_KEYS, "stream"),
        (*PERIOD_ARGS, "feature", "total", "event", "unbudgeted"),
        optional_keys=("request",),
        optional_args=("request_s",),
    ),
    "release": Layout(("port", *_SETTLE), ("member", "settled_s", "feature")),
    # budget_put: `limits` and `caps` are quota/ratelimits.py's texts ('' for none).
    "budget_put": Layout(
        ("port",), ("version", "enabled", "soft", "hard", "period", "limits", "caps")
    ),
    "trim": Layout(("stream",), ("group",)),
    "snapshot": Layout(("stream",), PERIOD_ARGS, rest="KEYS: then usage hashes"),
    "adjust": Layout(
        rest="KEYS: usage hashes; ARGV: for each, EXPIREAT seconds, a field count m, then m "
        "(field, delta) pairs"
    ),
    "rebuild": Layout(
        rest="KEYS: usage hashes; ARGV: for each, EXPIREAT seconds, a field count m, then m "
        "(field, the ledger's tokens) pairs"
    ),
}
# lib.lua's helpers: the positions every period-keyed function shares.
SHARED = Layout(PERIOD_KEYS, PERIOD_ARGS)

_NAME = re.compile(r"\$([a-z_]+)")


def fill(lua: str, layout: Layout, where: str) -> str:
    """``lua`` with each ``$name`` replaced by its index in ``layout``; a name the layout
    does not declare is an error (a fragment and its declaration disagree)."""
    pos = layout.positions()

    def index(m: re.Match[str]) -> str:
        if m[1] not in pos:
            raise ValueError(f"{where}: ${m[1]} is not in its layout {sorted(pos)}")
        return str(pos[m[1]])

    lines = []
    for line in lua.split("\n"):
        code, dashes, comment = line.partition("--")  # comments may name `$name`
        lines.append(_NAME.sub(index, code) + dashes + comment)
    return "\n".join(lines)


def unused(lua: str, layout: Layout) -> set[str]:
    """Names ``layout`` declares that ``lua`` (and lib.lua, for the shared ones) never uses."""
    used = {n for line in lua.split("\n") for n in _NAME.findall(line.partition("--")[0])}
    declared = set(layout.positions()) - {"per_port_keys", "per_port_argc", "args_before_ports"}
    return declared - used - set(SHARED.positions())
