"""The JSON API (`/v1/...`), backed by one `AsyncGate` per worker process.

Each route names the operation its token must be allowed (quota/serve/auth.py); a
port-limited token is also held to the route's ports (the path's, the reservation
id's, or every port of a check_many). A refused decision answers 429 with the
decision as body and `Retry-After` and `x-ratelimit-*` headers."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text

from quota._exceptions import InvalidBudget
from quota.async_gate import AsyncGate
from quota.models import Decision, RateLimit, UsageResult
from quota.periods import period_end
from quota.reservations import parse_reservation_id
from quota.serve import refusals
from quota.serve.auth import ApiToken, Tokens
from quota.serve.bodies import (
    BudgetBody,
    CheckBody,
    CheckManyBody,
    CommitBody,
    RecordBody,
    ReserveBody,
)

router = APIRouter(prefix="/v1")
_bearer = HTTPBearer(auto_error=False, description="A token of QUOTA_API_TOKENS")


def token_of(request: Request, presented: str | None) -> ApiToken:
    """The token presented, else 401 (none, or not one of ours)."""
    tokens: Tokens = request.app.state.tokens
    token = tokens.find(presented) if presented else None
    if token is None:
        raise HTTPException(
            401,
            "a bearer token is required" if not presented else "unknown token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


def allowed(token: ApiToken, operation: str, ports: Iterable[str] = ()) -> ApiToken:
    if not token.may(operation, ports):
        what = f"{operation} on {', '.join(sorted(set(ports)))}" if ports else operation
        raise HTTPException(403, f"token {token.name!r} ({token.scope}) may not {what}")
    return token


def caller(operation: str) -> Callable[..., Awaitable[ApiToken]]:
    """A dependency: the request's token, allowed ``operation`` on the route's port."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiToken:
        token = token_of(request, bearer.credentials if bearer else None)
        params = request.path_params
        if "port" in params:
            return allowed(token, operation, [params["port"]])
        if "reservation_id" in params:
            # The id names its port under a seal: an altered id is unknown (404).
            return allowed(token, operation, [parse_reservation_id(params["reservation_id"]).port])
        return allowed(token, operation)

    return dependency


def gate(request: Request) -> AsyncGate:
    return request.app.state.gate  # type: ignore[no-any-return]


Gate = Annotated[AsyncGate, Depends(gate)]


def decision_json(d: Decision) -> dict[str, Any]:
    out = d._asdict()
    out["rate"] = [r._asdict() for r in d.rate]
    return out


def usage_json(result: UsageResult) -> dict[str, Any]:
    return result._asdict()


def retry_after(d: Decision, now: datetime | None = None) -> int:
    """Seconds until asking again can succeed: the bucket's wait for a rate limit, a
    second when the gate could not decide, else the end of the budget's period."""
    if d.retry_after_ms is not None:
        return max(1, math.ceil(d.retry_after_ms / 1000))
    if d.reason == "unavailable":
        return 1
    now = now or datetime.now(UTC)
    return max(1, math.ceil((period_end(d.period, now) - now).total_seconds()))


async def decided(g: AsyncGate, d: Decision) -> JSONResponse:
    """200 with the decision, or 429 with it and the headers a client backs off by."""
    headers = d.headers()
    if d.ok:
        return JSONResponse(decision_json(d), headers=headers)
    await refusals.count(g, [d.reason or "refused"])
    headers["retry-after"] = str(retry_after(d))
    return JSONResponse(decision_json(d), 429, headers=headers)


@router.post("/ports/{port}/check", summary="Decide without holding anything")
async def check(
    port: str, body: CheckBody, g: Gate, _: Annotated[ApiToken, Depends(caller("check"))]
) -> JSONResponse:
    return await decided(g, await g.check(port, body.estimated_tokens))


@router.post("/ports/{port}/reserve", summary="Decide and hold the estimate under a lease")
async def reserve(
    port: str, body: ReserveBody, g: Gate, _: Annotated[ApiToken, Depends(caller("reserve"))]
) -> JSONResponse:
    d = await g.reserve(port, body.estimated_tokens, body.feature, body.user_id)
    return await decided(g, d)


@router.post("/reservations/{reservation_id}/commit", summary="Settle with the actual usage")
async def commit(
    reservation_id: str,
    body: CommitBody,
    g: Gate,
    _: Annotated[ApiToken, Depends(caller("commit"))],
) -> dict[str, Any]:
    result = await g.commit(reservation_id, **body.model_dump())
    return usage_json(result)


@router.post("/reservations/{reservation_id}/release", summary="Return the hold")
async def release(
    reservation_id: str, g: Gate, _: Annotated[ApiToken, Depends(caller("release"))]
) -> dict[str, bool]:
    return {"released": await g.release(reservation_id)}


@router.post("/ports/{port}/usage", summary="Record usage that had no reservation")
async def record(
    port: str, body: RecordBody, g: Gate, _: Annotated[ApiToken, Depends(caller("record"))]
) -> dict[str, Any]:
    return usage_json(await g.record(port_id=port, **body.model_dump()))


@router.get("/ports/{port}/status", summary="Usage against the caps this period")
async def status(
    port: str, g: Gate, _: Annotated[ApiToken, Depends(caller("status"))]
) -> dict[str, Any]:
    return jsonable_encoder(await g.status(port))  # type: ignore[no-any-return]


@router.get("/ports/{port}/breakdown", summary="Tokens and calls per feature this period")
async def breakdown(
    port: str, g: Gate, _: Annotated[ApiToken, Depends(caller("breakdown"))]
) -> list[dict[str, Any]]:
    return jsonable_encoder(await g.breakdown(port))  # type: ignore[no-any-return]


@router.get("/ports/{port}/budget", summary="The stored budget (defaults if none)")
async def get_budget(
    port: str, g: Gate, _: Annotated[ApiToken, Depends(caller("budget"))]
) -> dict[str, Any]:
    return (await g.get_budget(port)).model_dump(mode="json")


@router.put("/ports/{port}/budget", summary="Change the budget (partial; by the token's name)")
async def set_budget(
    port: str,
    body: BudgetBody,
    g: Gate,
    token: Annotated[ApiToken, Depends(caller("set_budget"))],
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    if "rate_limits" in changes and changes["rate_limits"] is not None:
        changes["rate_limits"] = rate_limits(changes["rate_limits"])
    budget = await g.set_budget(port, updated_by=token.name, **changes)
    return budget.model_dump(mode="json")


def rate_limits(items: list[dict[str, Any]]) -> list[RateLimit]:
    """The body's limits, or `InvalidBudget` naming the problems of every bad one."""
    limits, problems = [], []
    for i, item in enumerate(items):
        try:
            limits.append(RateLimit(**item))
        except InvalidBudget as exc:
            problems.append(f"rate_limits.{i}: {str(exc).removeprefix('invalid rate limit: ')}")
    if problems:
        raise InvalidBudget("invalid budget: " + "; ".join(problems))
    return limits


@router.post("/check", summary="check for many ports in one round trip per shard")
async def check_many(
    request: Request,
    body: CheckManyBody,
    g: Gate,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> dict[str, Any]:
    token = token_of(request, bearer.credentials if bearer else None)
    allowed(token, "check", [item.port_id for item in body.requests])
    decisions = await g.check_many((i.port_id, i.estimated_tokens) for i in body.requests)
    await refusals.count(g, [d.reason or "refused" for d in decisions if not d.ok])
    return {"decisions": [decision_json(d) for d in decisions]}


@router.get("/health", summary="Redis and Postgres answer (no token needed)")
async def health(g: Gate) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await g.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure is the answer here
        checks["redis"] = f"failed: {type(exc).__name__}"
    try:
        async with g.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failed: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"ok": ok, **checks}, 200 if ok else 503)
