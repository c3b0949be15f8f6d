"""The Lua scripts, loaded from package data and registered once per Redis client.

Each operation file is prefixed with ``lib.lua`` (shared local functions) so every
operation is still exactly one EVALSHA. redis-py's `Script` reloads a script that
the server forgot (restart, failover, SCRIPT FLUSH) and retries: NOSCRIPT never
reaches the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script

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
)
# Scripts that need none of the shared helpers are sent as they are.
_STANDALONE = frozenset({"budget_put", "trim", "adjust"})


@cache
def source(operation: str) -> str:
    """The full text sent to Redis for ``operation``."""
    lua = files("quota") / "lua"
    body = (lua / f"{operation}.lua").read_text()
    if operation in _STANDALONE:
        return body
    return (lua / "lib.lua").read_text() + "\n" + body


@dataclass(frozen=True, slots=True)
class Scripts:
    check: Script
    check_many: Script
    reserve: Script
    commit: Script
    release: Script
    record: Script
    budget_put: Script
    trim: Script
    snapshot: Script
    adjust: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{op: client.register_script(source(op)) for op in OPERATIONS})

    def load_all(self, client: redis.Redis) -> None:
        """Load every script now (e.g. at start-up), rather than on first use."""
        for op in OPERATIONS:
            script: Script = getattr(self, op)
            script.sha = client.script_load(script.script)
