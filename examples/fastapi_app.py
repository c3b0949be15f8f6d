"""A FastAPI service that gates every LLM call with quota's `AsyncGate`.

One `AsyncGate` for the app, made in the lifespan (one per event loop: each uvicorn
worker process has its own). Each request reserves its estimate, makes the call, and
commits what the call really spent; a refused reservation answers 429 with
`Retry-After`. The LLM here is a stand-in that sleeps ``LLM_SECONDS``.

    QUOTA_KEY_PREFIX=example uvicorn examples.fastapi_app:app --workers 2
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from quota import AsyncGate, Decision, period_end

LLM_SECONDS = float(os.environ.get("EXAMPLE_LLM_SECONDS", "0.05"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncGate.from_settings() as gate:
        app.state.gate = gate
        yield


app = FastAPI(lifespan=lifespan)


class Completion(BaseModel):
    prompt: str
    max_tokens: int = Field(default=100, ge=1, le=100_000)
    user_id: str | None = None


async def call_llm(prompt: str, max_tokens: int) -> tuple[int, int]:
    """The stand-in LLM: (input tokens, output tokens)."""
    await asyncio.sleep(LLM_SECONDS)
    return len(prompt) // 4 + 1, max_tokens // 2


def retry_after(d: Decision) -> int:
    """Seconds until asking again can succeed: the bucket's wait for a rate limit, the
    period's end for a spent budget, a second when the gate could not decide."""
    if d.retry_after_ms is not None:
        return max(1, math.ceil(d.retry_after_ms / 1000))
    if d.reason == "unavailable":
        return 1
    now = datetime.now(UTC)
    return max(1, math.ceil((period_end(d.period, now) - now).total_seconds()))


@app.post("/ports/{port}/completions")
async def complete(port: str, body: Completion, request: Request) -> JSONResponse:
    gate: AsyncGate = request.app.state.gate
    estimate = len(body.prompt) // 4 + 1 + body.max_tokens
    d = await gate.reserve(port, estimate, feature="chat", user_id=body.user_id)
    if not d.ok or d.reservation_id is None:
        return JSONResponse(
            {"error": "budget", "reason": d.reason, "used_tokens": d.used_tokens},
            status_code=429,
            headers={**d.headers(), "retry-after": str(retry_after(d))},
        )
    try:
        tin, tout = await call_llm(body.prompt, body.max_tokens)
    except BaseException:
        await gate.release(d.reservation_id)  # the call failed: its hold comes back
        raise
    result = await gate.commit(
        d.reservation_id, input_tokens=tin, output_tokens=tout, provider="stand-in", model="echo"
    )
    return JSONResponse(
        {"input_tokens": tin, "output_tokens": tout, "used_tokens": result.used_tokens},
        headers=d.headers(),  # x-ratelimit-* for a port with rate limits
    )
