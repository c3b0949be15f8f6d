"""The Lua operations, built into one Redis function library (Redis ≥ 7.0).

Each operation file in quota/lua/ becomes one function, its `$name`s replaced by the
positions quota/layouts.py declares; the helpers of lib.lua and rates.lua are
defined once, when the library loads, rather than on every call as an EVAL script's
would be (measured: docs/BENCHMARKS.md). The library's name carries a digest of its
source, so processes running different versions of quota against one Redis each
call their own functions during a rolling deploy.

A server that lost the library (restart without persistence, failover to a replica
that never had it, FUNCTION FLUSH) answers "Function not found"; the transports
(`ScriptCaller`, `AsyncScriptCaller`) load it and call again, so that never reaches
the user.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

import redis

from quota.layouts import LAYOUTS, SHARED, fill, unused
from quota.settings import MAX_LEASE_SECONDS
from quota.topology import Client, primaries

OPERATIONS = (
    "check",
    "check_many",
    "reserve",
    "commit",
    "release",
    "record",
    "budget_put",
    "trim",
    "snapshot",
    "adjust",
    "rebuild",
)
# A second name for an operation, called with a first argument ``true``: reserve_x is
# reserve for a port the client knows has rate limits or feature caps (it reads their
# state with the budget copy; reserve.lua).
VARIANTS = {"reserve_x": "reserve"}
# An operation's parameters (a vararg function would cost every call an `arg` table).
PARAMETERS = {"reserve": "hinted"}
# Functions that write nothing: flagged no-writes, so that Redis runs them at its
# memory limit (noeviction) and on a read-only replica.
READ_ONLY = frozenset({"check", "check_many"})
# Functions that only free memory: allowed at the memory limit, so that the drain
# can still empty the streams there.
FREES_MEMORY = frozenset({"trim"})
# The open-reservation set lives this long past its creation or renewal; it is renewed
# at least once per lease, so twice the longest lease keeps it alive under any lease.
OPEN_SET_MS = (2 * MAX_LEASE_SECONDS + 1) * 1000


# Error replies that mean the server cannot serve now (not that the call was wrong).
# Not TRYAGAIN: on a Cluster it means a slot in migration, which the cluster transport
# waits out (quota/_slots.py); it says nothing of the server's health.
_UNAVAILABLE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN")


def is_unavailable(reply: BaseException) -> bool:
    """True for an error reply that says the server cannot serve now: the breaker
    counts it as a failure."""
    return str(reply).startswith(_UNAVAILABLE_REPLIES)


def is_demoted(reply: BaseException) -> bool:
    """True for a write refused by a replica: a failover demoted the server this
    connection reached (Sentinel). The write did not run; a new connection finds the
    new primary."""
    return str(reply).startswith("READONLY")


def is_missing(exc: BaseException) -> bool:
    """True for the server's answer to a call of a function it does not have."""
    return isinstance(exc, redis.exceptions.ResponseError) and "Function not found" in str(exc)


# The shared helpers, in the order they are built in: each may use those before it.
HELPERS = ("lib.lua", "rates.lua")


def helpers() -> str:
    """The shared helpers (`HELPERS`), positions filled in (tests run them by EVAL)."""
    lua = files("quota") / "lua"
    return "\n".join(fill((lua / name).read_text(), SHARED, name) for name in HELPERS)


class Library:
    """The quota function library: its source, its name and its functions' names."""

    def __init__(self) -> None:
        lua = files("quota") / "lua"
        parts = [
            "local KEYS, ARGV  -- set by each function before its body runs",
            f"local OPEN_SET_MS = {OPEN_SET_MS}",
            helpers(),
        ]
        for op in OPERATIONS:
            fragment = (lua / f"{op}.lua").read_text()
            if stale := unused(fragment, LAYOUTS[op]):
                raise ValueError(f"{op}.lua never uses {sorted(stale)} of its layout")
            params = PARAMETERS.get(op, "")
            parts.append(f"local function op_{op}({params})\n{fill(fragment, LAYOUTS[op], op)}end")
        body = "\n".join(parts)
        self.name = "quota_" + hashlib.sha1(body.encode()).hexdigest()[:12]
        named = {op: (op, "") for op in OPERATIONS} | {
            name: (op, "true") for name, op in VARIANTS.items()
        }
        self.functions = {name: f"{self.name}_{name}" for name in named}
        registrations = "\n".join(
            f"redis.register_function{{function_name='{self.functions[name]}', "
            f"callback=function(keys, args) KEYS, ARGV = keys, args return op_{op}({arg}) end"
            + (", flags={'no-writes'}" if op in READ_ONLY else "")
            + (", flags={'allow-oom'}" if op in FREES_MEMORY else "")
            + "}"
            for name, (op, arg) in named.items()
        )
        self.source = f"#!lua name={self.name}\n{body}\n{registrations}\n"

    def load(self, client: Client) -> None:
        """Load the library (on every primary of a Cluster)."""
        for node in primaries(client):
            node.function_load(self.source, replace=True)

    def ensure(self, client: Client) -> bool:
        """Load the library where a server (a Cluster's primary) lacks it; True if it
        was loaded now anywhere."""
        loaded = False
        for node in primaries(client):
            if not node.function_list(library=self.name):
                node.function_load(self.source, replace=True)
                loaded = True
        return loaded


@cache
def library() -> Library:
    return Library()
