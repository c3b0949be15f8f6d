"""The ASGI app of `quota serve`: the JSON API and the dashboard over one `AsyncGate`
per process (made in the lifespan: each uvicorn worker has its own)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from quota.async_gate import AsyncGate
from quota.serve import api, dashboard, errors
from quota.serve.auth import Tokens
from quota.settings import Settings


def create_app(settings: Settings | None = None, *, freeze_heap: bool = False) -> FastAPI:
    """The app, configured from ``settings`` (default: the QUOTA_* variables). Refuses
    to build without bearer tokens (`InvalidInput`). ``freeze_heap`` (a process of its
    own, as `quota serve`'s workers): `gc.freeze` once started, so the collector's full
    passes skip the imported modules' objects: the overview allocates several objects
    per port, and those passes were a large share of its time (docs/BENCHMARKS.md)."""
    settings = settings or Settings()
    tokens = Tokens.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncGate(settings) as gate:
            app.state.gate = gate
            if freeze_heap:
                gc.freeze()
            yield

    app = FastAPI(
        title="quota",
        summary="Per-tenant LLM token budgets and rate limits",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.tokens = tokens
    app.state.settings = settings
    errors.install(app)
    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app


def served_app() -> FastAPI:
    """The app as `quota serve` runs it (uvicorn's factory): the process is its own."""
    return create_app(freeze_heap=True)


def _version() -> str:
    from importlib.metadata import version

    return version("quota")
