"""Every error the API answers, as JSON with a stable ``code``:
``{"error": {"code": "...", "message": "..."}}``. Clients branch on the code; the
message is for people."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from quota._exceptions import (
    DatabaseUnavailable,
    InvalidBudget,
    InvalidInput,
    QuotaError,
    RedisUnavailable,
    UnknownReservation,
)

log = logging.getLogger("quota.serve")

#: Library errors: status and code, most specific first.
_ERRORS: tuple[tuple[type[QuotaError], int, str], ...] = (
    (InvalidBudget, 422, "invalid_budget"),
    (InvalidInput, 422, "invalid_input"),
    (UnknownReservation, 404, "unknown_reservation"),
    (RedisUnavailable, 503, "redis_unavailable"),
    (DatabaseUnavailable, 503, "database_unavailable"),
)
#: Framework errors by status.
_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "refused",
}


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


async def _quota_error(request: Request, exc: Exception) -> JSONResponse:
    for kind, status, code in _ERRORS:
        if isinstance(exc, kind):
            return error(status, code, str(exc))
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return error(500, "quota_error", str(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _invalid_body(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
    ]
    return error(422, "invalid_input", "; ".join(problems) or "invalid request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error(500, "internal", "internal error (logged by the server)")


def install(app: FastAPI) -> None:
    handlers: dict[Any, Any] = {
        QuotaError: _quota_error,
        HTTPException: _http_error,
        RequestValidationError: _invalid_body,
        Exception: _unexpected,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
