"""`quota serve` tests: the app in-process (Starlette's TestClient runs its lifespan,
so one real AsyncGate per test), on the shared Redis and the test database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

from quota import Settings
from quota.housekeeping import forget_prefix
from quota.serve import create_app

pytestmark = pytest.mark.standalone

#: One token of each kind the tests walk through (secrets: test values only).
TOKENS: list[dict[str, Any]] = [
    {"name": "ops", "token": "admin-token-0123456789", "scope": "admin"},
    {"name": "viewer", "token": "read-token-0123456789", "scope": "read"},
    {"name": "svc", "token": "gate-token-0123456789", "scope": "gate"},
    {"name": "svc-p1", "token": "gate-p1-token-0123456789", "scope": "gate", "ports": ["p1"]},
]
BEARER = {t["name"]: {"Authorization": f"Bearer {t['token']}"} for t in TOKENS}


@pytest.fixture
def served(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": SecretStr(json.dumps(TOKENS))})


@pytest.fixture
def client(served: Settings, pg: Engine, r: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(served)) as c:
        yield c
    forget_prefix(r, served.key_prefix)


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    log: str = ""


@contextmanager
def quota_serve(settings: Settings, workers: int = 1) -> Iterator[Served]:
    """A real `quota serve` (uvicorn, ``workers`` processes) on a free port, for this
    test's prefix; stopped (SIGTERM to its own process group), its stderr kept and its
    keys forgotten."""
    from tests.servers import free_port

    port = free_port()
    env = {
        **os.environ,
        "QUOTA_KEY_PREFIX": settings.key_prefix,
        "QUOTA_REDIS_URL": settings.redis_url,
        "QUOTA_DATABASE_URL": settings.database_url,
        "QUOTA_API_TOKENS": json.dumps(TOKENS),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "quota", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{served.url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "quota serve did not answer in 30 s"
            time.sleep(0.2)
        yield served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group: uvicorn and its workers
        served.log = proc.communicate(timeout=30)[1]
        with redis.Redis.from_url(settings.redis_url) as r:
            forget_prefix(r, settings.key_prefix)  # what the server wrote for this test
