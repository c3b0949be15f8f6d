"""quota: atomic per-tenant LLM token budgets, enforced in Redis, ledgered in Postgres."""

from quota._exceptions import (
    BackendError,
    BudgetExceeded,
    DatabaseUnavailable,
    InvalidBudget,
    InvalidInput,
    QuotaError,
    RedisUnavailable,
    UnknownReservation,
    WrongEventLoop,
)
from quota.async_gate import AsyncGate, AsyncReservation
from quota.gate import Gate, Reservation
from quota.models import (
    Budget,
    BudgetChange,
    DailyUsage,
    Decision,
    FeatureUsage,
    RateLimit,
    RateState,
    SoftCapAlert,
    Status,
    UsageEvent,
    UsageResult,
)
from quota.periods import period_end, period_start
from quota.settings import Settings

__all__ = [
    "AsyncGate",
    "AsyncReservation",
    "BackendError",
    "Budget",
    "BudgetChange",
    "BudgetExceeded",
    "DailyUsage",
    "DatabaseUnavailable",
    "Decision",
    "FeatureUsage",
    "Gate",
    "InvalidBudget",
    "InvalidInput",
    "QuotaError",
    "RateLimit",
    "RateState",
    "RedisUnavailable",
    "Reservation",
    "Settings",
    "SoftCapAlert",
    "Status",
    "UnknownReservation",
    "UsageEvent",
    "UsageResult",
    "WrongEventLoop",
    "period_end",
    "period_start",
]
