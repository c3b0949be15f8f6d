"""The Lua functions' replies, parsed: pure, no I/O.

Every function answers with one string, its fields joined by "|" (quota/lua/lib.lua),
because a table reply costs Redis ~5k instructions where a string costs 0.3k:

- a decision (check, check_many, reserve):
  ``<ok>|<reason>|<used>|<reserved>|<feature used>|<rate>|<budget>`` (the feature's
  usage only when a feature was asked about or is capped, else empty; ``<rate>`` empty
  for a port without rate limits, else the ms to wait, and the budget then followed by
  a NUL and the port's rate state at the server's ms, binary (quota/ratelimits.py;
  replies are decoded with ``surrogateescape``, so it comes back intact);
- a usage reply (commit, record): ``<code>|<used>|<alert>|<lease expired>``, followed by
  ``|<budget>`` only when it raises a soft-cap alert;
- or one of the codes below alone (``CLOCK`` followed by ``|<server ms>``).

``<budget>`` is the port's budget copy as Redis holds it: ``<on>|<soft>|<hard>|<period>``,
then ``|<rate limits>|<feature caps>`` when it has either (quota/ratelimits.py).
"""

from __future__ import annotations

from typing import NamedTuple, cast

from quota.models import Decision, RateState, Reason, UsageResult
from quota.periods import Period
from quota.ratelimits import Scaled, levels, parse_spec, remaining, reset_ms

# What separates a decision's budget copy from the rate state that follows it.
STATE_MARK = "\x00"
# The field separators of a decision reply for a port without rate limits or caps
# (six, and three in its budget copy); one with either has more.
_PLAIN_BARS = 9


def has_extras(reply: str) -> bool:
    """Whether a decision reply's port has rate limits or feature caps."""
    return reply.count("|") > _PLAIN_BARS


# A reply's first field: counted (or ok), and a no-op (already settled or counted).
OK, NOOP = "1", "2"
# Replies that decide nothing: the budget copy is missing, the client's clock named
# another day than the server's (then "-2|<server ms>"), the reservation is unknown.
NO_BUDGET, CLOCK, UNKNOWN = "-1", "-2", "-3"
# A reserve sent without its feature to a port with feature caps: send it as reserve_x.
NEEDS_FEATURE = "-4"


class Terms(NamedTuple):
    """A budget copy's terms, as the functions pass it on."""

    enabled: bool
    soft_cap: int
    hard_cap: int
    period: Period


class Standing(NamedTuple):
    """A port's usage in its budget's current period, from a decision reply."""

    used: int
    reserved: int
    feature_used: int | None  # None unless a feature was asked about
    terms: Terms


class Replies:
    """Parses replies. Each distinct budget copy is split once, not once per call:
    budgets repeat across ports and calls, and a check's own work is ~4 µs."""

    __slots__ = ("_limits", "_terms")

    #: Distinct budget copies remembered; past it the memo starts again (a bound, not
    #: an LRU: parsing one is cheap, remembering every one ever seen is not).
    BOUND = 10_000

    def __init__(self) -> None:
        # Plain tuples, not Terms: CPython 3.11 unpacks an exact tuple on a fast path
        # that a named tuple misses, ~20 ns of every decision.
        self._terms: dict[str, tuple[bool, int, int, Period]] = {}
        self._limits: dict[str, tuple[Scaled, ...]] = {}

    def _parsed(self, budget: str) -> tuple[bool, int, int, Period]:
        terms = self._terms.get(budget)
        if terms is None:
            on, soft, hard, period, *extra = budget.split("|")
            terms = (on == "1", int(soft), int(hard), cast(Period, period))
            if len(self._terms) >= self.BOUND:
                self._terms.clear()
                self._limits.clear()
            self._terms[budget] = terms
            self._limits[budget] = parse_spec(extra[0]) if extra else ()
        return terms

    def _rate(self, budget: str, state: str) -> tuple[RateState, ...]:
        """Each limit's state from the port's rate state at the server's ms (the text
        after a decision's budget copy): the client works the headroom out."""
        limits = self._limits.get(budget)
        if limits is None:
            self._parsed(budget)
            limits = self._limits[budget]
        return tuple(
            RateState(s.kind, s.limit, s.per_seconds, remaining(s, x), reset_ms(s, x))
            for s, x in zip(limits, levels(limits, state), strict=True)
        )

    def terms(self, budget: str) -> Terms:
        return Terms(*self._parsed(budget))

    def decision(self, reply: str, holding: int = 0, reservation_id: str | None = None) -> Decision:
        """A Decision; ``holding`` (the hold a reserve just took, which its reply leaves
        out) is added to its reserved tokens."""
        ok, reason, used_s, reserved_s, _, rate, budget = reply.split("|", 6)
        used = int(used_s)
        retry_after: int | None = None
        states: tuple[RateState, ...] = ()
        if rate:  # a port with rate limits
            budget, _, state = budget.partition(STATE_MARK)
            states = self._rate(budget, state)
            retry_after = int(rate) if reason == "rate-limited" else None
        on, soft, hard, period = self._parsed(budget)
        # Positional, in field order: keywords cost ~0.3 µs more, once per port in check_many.
        return Decision(
            ok == OK,  # ok
            cast(Reason, reason) if reason else None,  # reason
            used,  # used_tokens
            hard - used if on else None,  # remaining
            hard,  # cap_tokens
            on and used > soft,  # soft_cap
            max(int(reserved_s) + holding, 0),  # reserved_tokens
            on,  # enabled
            period,  # period
            reservation_id,  # reservation_id
            False,  # degraded
            retry_after,  # retry_after_ms
            states,  # rate
        )

    def standing(self, reply: str) -> Standing:
        _, _, used, reserved, feature, rate, budget = reply.split("|", 6)
        if rate:
            budget = budget.partition(STATE_MARK)[0]
        return Standing(
            int(used), max(int(reserved), 0), int(feature) if feature else None, self.terms(budget)
        )

    def usage(self, reply: str, total: int, event_id: str) -> tuple[UsageResult, Terms | None]:
        """The UsageResult of a commit or record that wrote ``event_id``, and the budget's
        terms when the reply raises a soft-cap alert (else None)."""
        code, used_s, alert, lease_expired, *budget = reply.split("|", 4)
        used = int(used_s)
        result = UsageResult(
            True,  # stored
            code == NOOP,  # duplicate
            "redis",  # backend
            total,  # total_tokens
            None if used < 0 else used,  # used_tokens
            alert == "1",  # soft_cap_alert
            lease_expired == "1",  # lease_expired
            event_id if code == OK else None,  # event_id
        )
        return result, self.terms(budget[0]) if budget else None
