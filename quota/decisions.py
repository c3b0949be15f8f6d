"""The decision rules, in Python. The Lua scripts implement the same rules on the
server; this copy documents them, drives `status`, and is the model the tests
compare the scripts against.
"""

from __future__ import annotations

from quota.models import Budget, Reason, State


def decide(budget: Budget, used: int, reserved: int, estimate: int) -> tuple[bool, Reason | None]:
    """Seed rules, with open reservations counted against the hard cap.

    disabled → ok; used ≥ hard → hard-cap-exceeded;
    estimate > hard − used − reserved → estimated-exceeds-cap; else ok.
    A plain check passes ``reserved=0`` (seed parity).
    """
    if not budget.enabled:
        return True, None
    if used >= budget.hard_cap_tokens:
        return False, "hard-cap-exceeded"
    if estimate > budget.hard_cap_tokens - used - reserved:
        return False, "estimated-exceeds-cap"
    return True, None


def state_of(budget: Budget, used: int) -> State:
    if not budget.enabled:
        return "ok"
    if used >= budget.hard_cap_tokens:
        return "hard"
    return "soft" if used > budget.soft_cap_tokens else "ok"
