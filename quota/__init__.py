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
)
from quota.gate import Gate, Reservation
from quota.models import Budget, Decision, SoftCapAlert, Status, UsageEvent, UsageResult
from quota.periods import period_end, period_start
from quota.settings import Settings

__all__ = [
    "BackendError",
    "Budget",
    "BudgetExceeded",
    "DatabaseUnavailable",
    "Decision",
    "Gate",
    "InvalidBudget",
    "InvalidInput",
    "QuotaError",
    "RedisUnavailable",
    "Reservation",
    "Settings",
    "SoftCapAlert",
    "Status",
    "UnknownReservation",
    "UsageEvent",
    "UsageResult",
    "period_end",
    "period_start",
]
