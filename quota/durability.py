"""What a Redis server's INFO says about the safety of the counters kept in it. Pure:
`quota health` fails or warns on it, and the gate logs it when it starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Share of maxmemory at which writes are close to being refused.
MEMORY_WARNING = 0.8


def redis_risks(info: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(failures, warnings) for the INFO of one server (sections memory, persistence)."""
    failures: list[str] = []
    warnings: list[str] = []
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        failures.append(
            f"maxmemory-policy is {policy}: Redis may evict counters, holds and budget "
            "copies, and ports would overspend; set noeviction"
        )
    if not int(info.get("aof_enabled", 0)):
        warnings.append(
            "AOF persistence is off: a restart loses the usage not yet drained "
            "(appendonly yes, appendfsync everysec)"
        )
    limit, used = int(info.get("maxmemory", 0)), int(info.get("used_memory", 0))
    if limit and used >= MEMORY_WARNING * limit:
        warnings.append(
            f"memory at {used / limit:.0%} of maxmemory: usage writes are refused at 100 %"
        )
    return failures, warnings
