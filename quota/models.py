"""Values that cross the public API: the budget and the results of gate calls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from quota._exceptions import InvalidBudget
from quota.periods import Period
from quota.ratelimits import RateKind, ceil_div, duration, scale
from quota.settings import OutagePolicy
from quota.validation import FEATURE_MAX, MAX_CAP_TOKENS, id_pattern

Reason = Literal[
    "hard-cap-exceeded",
    "estimated-exceeds-cap",
    "feature-cap-exceeded",
    "rate-limited",
    "estimate-exceeds-rate-limit",
    "unavailable",
]
State = Literal["ok", "soft", "hard"]

#: Rate limits per port, and features with a cap: each is carried in every decision's
#: budget copy, so a few.
MAX_RATE_LIMITS = 4
MAX_FEATURE_CAPS = 32
#: A bucket's state is an integer below 2**53 (Lua's doubles stay exact): its size in
#: units times the window's ms, over their common divisor (quota/ratelimits.py).
MAX_BUCKET_SCALE = 2**53 // 4


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        (f"{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
        + err["msg"].removeprefix("Value error, ")
        for err in exc.errors()
    )


class RateLimit(BaseModel):
    """At most ``requests`` (reserve or record calls) or ``tokens`` per ``per_seconds``,
    as a token bucket of ``burst`` (default: the limit) that refills continuously: no
    double burst at a window's edge. Raises `InvalidBudget` naming every problem."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    requests: int | None = Field(default=None, ge=1, le=MAX_CAP_TOKENS)
    tokens: int | None = Field(default=None, ge=1, le=MAX_CAP_TOKENS)
    per_seconds: int = Field(ge=1, le=86_400)
    burst: int | None = Field(default=None, ge=1, le=MAX_CAP_TOKENS)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidBudget(f"invalid rate limit: {_problems(exc)}") from None

    @model_validator(mode="after")
    def _one_kind(self) -> RateLimit:
        if (self.requests is None) == (self.tokens is None):
            raise ValueError("give exactly one of requests and tokens")
        if scale(self.limit, self.per_seconds, self.size)[2] > MAX_BUCKET_SCALE:
            raise ValueError(
                f"{self.limit} {self.kind} per {self.per_seconds} s with a burst of "
                f"{self.size} is too fine-grained to count exactly; round the limit"
            )
        return self

    @property
    def kind(self) -> RateKind:
        return "requests" if self.requests is not None else "tokens"

    @property
    def limit(self) -> int:
        return self.requests if self.requests is not None else self.tokens or 0

    @property
    def size(self) -> int:
        """The bucket's size: the burst, or the limit itself."""
        return self.burst if self.burst is not None else self.limit


FeatureName = Annotated[str, StringConstraints(pattern=f"^{id_pattern(1, FEATURE_MAX)}$")]


class Budget(BaseModel):
    """A port's token budget. A port with no stored budget has the defaults (disabled)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    enabled: bool = False
    soft_cap_tokens: int = Field(default=100_000, ge=0, le=MAX_CAP_TOKENS)
    hard_cap_tokens: int = Field(default=500_000, ge=0, le=MAX_CAP_TOKENS)
    period: Period = "month"
    #: What decisions answer while Redis is down; None follows ``QUOTA_OUTAGE_POLICY``.
    outage_policy: OutagePolicy | None = None
    #: Requests or tokens per window, decided by reserve with the budget; they apply
    #: even while the budget is disabled.
    rate_limits: tuple[RateLimit, ...] = Field(default=(), max_length=MAX_RATE_LIMITS)
    #: Hard caps per feature inside the budget's period (tokens).
    feature_caps: dict[FeatureName, Annotated[int, Field(ge=0, le=MAX_CAP_TOKENS)]] = Field(
        default_factory=dict, max_length=MAX_FEATURE_CAPS
    )

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _limits_as_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _soft_not_above_hard(self) -> Budget:
        if self.soft_cap_tokens > self.hard_cap_tokens:
            raise ValueError(
                f"soft_cap_tokens ({self.soft_cap_tokens}) cannot exceed "
                f"hard_cap_tokens ({self.hard_cap_tokens})"
            )
        windows = [(r.kind, r.per_seconds) for r in self.rate_limits]
        if len(set(windows)) != len(windows):
            raise ValueError("two rate limits of one kind share a window: keep one of them")
        return self

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Budget:
        """Validate ``data`` into a Budget, raising `InvalidBudget` with every problem named."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidBudget(f"invalid budget: {_problems(exc)}") from None

    @classmethod
    def check_fields(cls, changes: dict[str, Any]) -> None:
        """Validate each non-None field on its own (type, range, enum), before any I/O.

        The cross-field rule (soft ≤ hard) needs the stored budget; `merged` checks it.
        """
        for name, value in changes.items():
            if value is None:
                continue
            field = cls.model_fields.get(name)
            if field is None:
                raise InvalidBudget(f"unknown budget field: {name}")
            if name == "rate_limits" and isinstance(value, list):
                value = tuple(value)
            # Annotated needs at least one annotation; None is a harmless one.
            annotated: Any = Annotated[field.annotation, *(field.metadata or [None])]
            adapter: TypeAdapter[Any] = TypeAdapter(annotated, config=ConfigDict(strict=True))
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                raise InvalidBudget(f"invalid budget: {name}: {_problems(exc)}") from None

    def merged(self, **changes: Any) -> Budget:
        """This budget with the non-None ``changes`` applied, validated as a whole."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise InvalidBudget(f"unknown budget field(s): {', '.join(sorted(unknown))}")
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return self.parse(data)


class Decision(NamedTuple):
    """The answer to "may this port spend ~N tokens?".

    ``remaining`` is None when the budget is disabled (no cap applies).
    ``reservation_id`` is set only by a successful `Gate.reserve`.
    ``degraded`` is True when Redis could not be asked and the port's outage policy
    decided (reason ``unavailable`` when it refused); the counts are then 0 and
    ``remaining`` None, as nothing is known of the port's usage.

    A named tuple, like `UsageResult`, rather than a frozen dataclass: as immutable, and
    built in ~0.3 µs instead of ~1.3 (a frozen dataclass sets each field through
    ``object.__setattr__``). Every gate call builds one, and `Gate.check_many` one per
    port, where it was a fifth of the client's time.
    """

    ok: bool
    reason: Reason | None
    used_tokens: int
    remaining: int | None
    cap_tokens: int
    soft_cap: bool
    reserved_tokens: int
    enabled: bool
    period: Period
    reservation_id: str | None = None
    degraded: bool = False
    #: For ``rate-limited``: ms until asking again is admitted (exact to the bucket).
    retry_after_ms: int | None = None
    #: Each rate limit of the port after this decision (empty without limits).
    rate: tuple[RateState, ...] = ()

    def headers(self) -> dict[str, str]:
        """OpenAI-style rate-limit headers: ``x-ratelimit-{limit,remaining,reset}-
        {requests,tokens}`` (the most constrained limit of each kind), and ``retry-after``
        (whole seconds) when rate-limited."""
        out: dict[str, str] = {}
        for kind in ("requests", "tokens"):
            states = [s for s in self.rate if s.kind == kind]
            if states:
                tight = min(states, key=lambda s: (s.remaining, -s.reset_ms))
                out[f"x-ratelimit-limit-{kind}"] = str(tight.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(tight.remaining)
                out[f"x-ratelimit-reset-{kind}"] = duration(tight.reset_ms)
        if self.retry_after_ms is not None:
            out["retry-after"] = str(max(1, ceil_div(self.retry_after_ms, 1000)))
            out["retry-after-ms"] = str(self.retry_after_ms)
        return out


class RateState(NamedTuple):
    """One rate limit's bucket after a decision."""

    kind: RateKind
    limit: int
    per_seconds: int
    remaining: int  # requests or tokens a call could take now
    reset_ms: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Status:
    """What a banner needs: usage against the caps of the port's current period."""

    port_id: str
    enabled: bool
    period: Period
    used_tokens: int
    reserved_tokens: int
    soft_cap_tokens: int
    hard_cap_tokens: int
    period_start: datetime
    resets_at: datetime
    state: State


class UsageResult(NamedTuple):
    """The outcome of `Gate.record` or `Gate.commit`.

    ``stored`` is False only when neither Redis, Postgres nor the local spool took the
    event; it was then logged at ERROR in full so it can be replayed.
    ``duplicate`` is True when the request_id (or reservation) was already counted.
    ``backend`` says where the event went: ``redis``, ``postgres``, ``spool`` (a local
    file, fsync'd, replayed into Postgres once it answers) or ``none``.
    ``lease_expired`` (commit) is True when the reservation's hold had already been
    returned because its lease ended; the usage is counted in full either way.
    """

    stored: bool
    duplicate: bool
    backend: Literal["redis", "postgres", "spool", "none"]
    total_tokens: int
    used_tokens: int | None = None
    soft_cap_alert: bool = False
    lease_expired: bool = False
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One LLM call's usage, as appended to the stream and stored in the ledger."""

    event_id: str
    port_id: str
    user_id: str | None
    feature: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    request_id: str | None
    occurred_at: datetime

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class SoftCapAlert:
    """A port went above its soft cap; emitted once per port per period."""

    port_id: str
    period: Period
    period_start: datetime
    used_tokens: int
    soft_cap_tokens: int


@dataclass(frozen=True, slots=True)
class BudgetChange:
    """One row of a port's budget history."""

    port_id: str
    changed_by: str
    changed_at: datetime
    before: Budget | None
    after: Budget

    def fields_changed(self) -> list[tuple[str, Any, Any]]:
        """(field, before, after) of each field this change set: every field when the
        budget was created (before None)."""
        after = self.after.model_dump()
        before = self.before.model_dump() if self.before else {}
        return [(k, before.get(k), v) for k, v in after.items() if not before or before[k] != v]


@dataclass(frozen=True, slots=True)
class FeatureUsage:
    """Tokens and calls of one feature over a period (from the Postgres ledger)."""

    feature: str
    tokens: int
    calls: int


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens and calls of one provider's model over a period (from the daily rollups)."""

    provider: str
    model: str
    tokens: int
    calls: int


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """Tokens and calls of one feature on one UTC day (from the Postgres ledger)."""

    day: date
    feature: str
    tokens: int
    calls: int
