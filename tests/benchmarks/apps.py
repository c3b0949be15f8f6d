"""The example app's three variants for the `app` benchmark section: no gate, the
AsyncGate of examples/fastapi_app.py, and the sync Gate pushed to Starlette's thread
pool, as an integrator without AsyncGate would write it. Served by uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from examples.fastapi_app import Completion, call_llm, retry_after
from examples.fastapi_app import app as async_app
from quota import Gate, UsageResult

__all__ = ["async_app", "nogate_app", "threadpool_app"]

nogate_app = FastAPI()


@nogate_app.post("/ports/{port}/completions")
async def complete_ungated(port: str, body: Completion) -> JSONResponse:
    tin, tout = await call_llm(body.prompt, body.max_tokens)
    return JSONResponse({"input_tokens": tin, "output_tokens": tout, "used_tokens": None})


@asynccontextmanager
async def _sync_gate(app: FastAPI) -> AsyncIterator[None]:
    with Gate.from_settings() as gate:
        app.state.gate = gate
        yield


threadpool_app = FastAPI(lifespan=_sync_gate)


@threadpool_app.post("/ports/{port}/completions")
async def complete_threadpool(port: str, body: Completion, request: Request) -> JSONResponse:
    gate: Gate = request.app.state.gate
    estimate = len(body.prompt) // 4 + 1 + body.max_tokens
    d = await run_in_threadpool(gate.reserve, port, estimate, "chat", body.user_id)
    if not d.ok or d.reservation_id is None:
        return JSONResponse(
            {"error": "budget", "reason": d.reason}, status_code=429,
            headers={"Retry-After": str(retry_after(d))},
        )  # fmt: skip
    tin, tout = await call_llm(body.prompt, body.max_tokens)
    rid = d.reservation_id

    def commit() -> UsageResult:
        return gate.commit(rid, input_tokens=tin, output_tokens=tout, provider="x", model="echo")

    result = await run_in_threadpool(commit)
    return JSONResponse(
        {"input_tokens": tin, "output_tokens": tout, "used_tokens": result.used_tokens}
    )
