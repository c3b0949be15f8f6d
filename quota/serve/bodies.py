"""Request bodies of the JSON API, named as the library's arguments. They check shape
only; the gate validates values (its one-line `InvalidInput` becomes a 422)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckBody(_Body):
    estimated_tokens: int


class ReserveBody(_Body):
    estimated_tokens: int
    feature: str
    user_id: str | None = None


class CommitBody(_Body):
    input_tokens: int
    output_tokens: int
    provider: str
    model: str
    request_id: str | None = None


class RecordBody(_Body):
    feature: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    user_id: str | None = None
    request_id: str | None = None


class ManyItem(_Body):
    port_id: str
    estimated_tokens: int


class CheckManyBody(_Body):
    requests: list[ManyItem] = Field(max_length=10_000)


class BudgetBody(_Body):
    """A partial update: fields left out keep their stored values (rate limits and
    feature caps are replaced whole when given, as `set_budget` does)."""

    enabled: bool | None = None
    soft_cap_tokens: int | None = None
    hard_cap_tokens: int | None = None
    period: str | None = None
    outage_policy: str | None = None
    rate_limits: list[dict[str, Any]] | None = None
    feature_caps: dict[str, int] | None = None
