"""examples/fastapi_app.py in-process, through httpx's ASGI transport: requests are
gated, a spent budget answers 429 with Retry-After, usage is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import Engine

from quota import Gate, RateLimit, Settings
from quota.housekeeping import forget_prefix


@pytest.fixture
def env(
    settings: Settings, pg: Engine, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    monkeypatch.setenv("QUOTA_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("QUOTA_SPOOL_DIR", str(settings.spool_dir))
    monkeypatch.setenv("EXAMPLE_LLM_SECONDS", "0.01")
    yield settings
    forget_prefix(r, settings.key_prefix)


def test_the_example_app_gates_each_call(env: Settings) -> None:
    from examples import fastapi_app

    with Gate(env) as admin:
        admin.set_budget(
            "p1", enabled=True, soft_cap_tokens=300, hard_cap_tokens=600, updated_by="t"
        )

    async def main() -> tuple[list[httpx.Response], int]:
        app = fastapi_app.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                body = {"prompt": "x" * 40, "max_tokens": 100}  # estimate 111, spends 61
                responses = await asyncio.gather(
                    *(client.post("/ports/p1/completions", json=body) for _ in range(12))
                )
                used = await app.state.gate.current_period_tokens("p1")
        return list(responses), used

    responses, used = asyncio.run(main())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 12
    assert ok
    assert refused  # the cap was met
    assert used == 61 * len(ok) <= 600
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert {r.json()["reason"] for r in refused} <= {"estimated-exceeds-cap", "hard-cap-exceeded"}


def test_a_rate_limited_request_answers_429_with_openai_style_headers(env: Settings) -> None:
    from examples import fastapi_app

    with Gate(env) as admin:
        admin.set_budget("p2", enabled=False, updated_by="t",
                         rate_limits=[RateLimit(requests=2, per_seconds=60)])  # fmt: skip

    async def main() -> list[httpx.Response]:
        app = fastapi_app.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                body = {"prompt": "hello", "max_tokens": 10}
                return [await client.post("/ports/p2/completions", json=body) for _ in range(3)]

    first, second, third = asyncio.run(main())
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert third.json()["reason"] == "rate-limited"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(third.headers["retry-after"]) <= 30  # a request drains every 30 s
    assert int(third.headers["retry-after-ms"]) > 0
