"""The exceptions `quota` raises. Every one derives from `QuotaError`.

    QuotaError
    ├── InvalidInput (ValueError)          bad argument: nothing was written
    │   └── InvalidBudget                  a budget that would break its invariants
    ├── UnknownReservation (LookupError)   no such reservation (never made, or long gone)
    ├── BudgetExceeded                     `Gate.reservation` was refused (has .decision)
    └── BackendError                       a backend failed; the message says which
        ├── RedisUnavailable
        └── DatabaseUnavailable

Redis and psycopg/SQLAlchemy errors are translated into these at one boundary
(`quota._backend`), with the original chained as ``__cause__``.
"""

from __future__ import annotations


class QuotaError(Exception):
    """Root of every error raised by quota."""


class InvalidInput(QuotaError, ValueError):
    """An argument is out of its domain. Nothing was written."""


class InvalidBudget(InvalidInput):
    """A budget update would break the budget's invariants. Nothing was written."""


class UnknownReservation(QuotaError, LookupError):
    """The reservation id was never issued, or was settled and forgotten long ago."""


class BackendError(QuotaError):
    """Redis or Postgres failed or could not be reached."""


class RedisUnavailable(BackendError):
    """Redis could not be reached or answered with an error."""


class DatabaseUnavailable(BackendError):
    """Postgres could not be reached or answered with an error."""


class BudgetExceeded(QuotaError):
    """Raised by `Gate.reservation` when the reservation is refused; carries the decision."""

    def __init__(self, decision: object) -> None:
        reason = getattr(decision, "reason", None)
        super().__init__(f"reservation refused: {reason}")
        self.decision = decision


class ShardMismatch(QuotaError):
    """QUOTA_SHARDS is not the shard count this deployment's data was written with."""


class WrongEventLoop(QuotaError):
    """An `AsyncGate` was used from an event loop other than the one it runs on (make
    one per loop)."""
