"""Who may do what: every route of the API walked with no token, an unknown one and
each scope (a port-limited gate token on its port and on another), against the
scopes the API promises (README: quota serve). Tokens never reach the logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import BaseRoute

from quota import InvalidInput, Settings
from quota.cli import main
from quota.serve.auth import Tokens
from tests.serve.conftest import BEARER, TOKENS

ALL = {"ops", "viewer", "svc", "svc-p1"}
GATE = {"ops", "svc", "svc-p1"}  # svc-p1 only for p1: walked on p2 below
#: (method, path) -> the tokens allowed, as promised; None: no token needed.
PROMISED: dict[tuple[str, str], set[str] | None] = {
    ("POST", "/v1/ports/{port}/check"): GATE,
    ("POST", "/v1/ports/{port}/reserve"): GATE,
    ("POST", "/v1/reservations/{reservation_id}/commit"): GATE,
    ("POST", "/v1/reservations/{reservation_id}/release"): GATE,
    ("POST", "/v1/ports/{port}/usage"): GATE,
    ("POST", "/v1/check"): GATE,
    ("GET", "/v1/ports/{port}/status"): ALL,
    ("GET", "/v1/ports/{port}/breakdown"): {"ops", "viewer"},
    ("GET", "/v1/ports/{port}/budget"): {"ops", "viewer"},
    ("PUT", "/v1/ports/{port}/budget"): {"ops"},
    ("GET", "/v1/health"): None,
}
BODIES: dict[str, dict[str, object]] = {
    "/v1/ports/{port}/check": {"estimated_tokens": 1},
    "/v1/ports/{port}/reserve": {"estimated_tokens": 1, "feature": "f"},
    "/v1/reservations/{reservation_id}/commit": {
        "input_tokens": 1, "output_tokens": 1, "provider": "p", "model": "m"},
    "/v1/ports/{port}/usage": {
        "feature": "f", "provider": "p", "model": "m", "input_tokens": 1, "output_tokens": 0},
    "/v1/ports/{port}/budget": {"soft_cap_tokens": 10, "hard_cap_tokens": 10},
}  # fmt: skip


def flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes, those of included routers too (FastAPI ≥ 0.16x keeps an
    included router whole, as one route holding the original)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from flat(inner.routes) if inner is not None else [route]


def _routes(client: TestClient) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in flat(client.app.routes)  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and route.path.startswith("/v1")
        for method in route.methods or ()
    }


def _request(client: TestClient, method: str, path: str, port: str, headers: dict[str, str]) -> int:
    body: dict[str, object] | None = BODIES.get(path) if method != "GET" else None
    if path == "/v1/check":
        body = {"requests": [{"port_id": port, "estimated_tokens": 1}]}
    if "{reservation_id}" in path:
        held = client.post(
            f"/v1/ports/{port}/reserve", json={"estimated_tokens": 1, "feature": "f"},
            headers=BEARER["ops"],
        )  # fmt: skip
        path = path.replace("{reservation_id}", held.json()["reservation_id"])
    got = client.request(method, path.replace("{port}", port), json=body, headers=headers)
    assert got.status_code not in (422, 500), got.text  # the walk's requests are valid
    if got.status_code in (401, 403):
        assert (
            got.json()["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[got.status_code]
        )
    return int(got.status_code)


def test_every_route_times_every_scope(client: TestClient) -> None:
    assert _routes(client) == set(PROMISED)  # a new route must be promised here first
    for (method, path), allowed in PROMISED.items():
        for port in ("p1", "p2"):
            no_token = _request(client, method, path, port, {})
            unknown = _request(
                client, method, path, port, {"Authorization": "Bearer not-a-token-at-all"}
            )
            if allowed is None:
                assert no_token == unknown == 200, path
                continue
            assert no_token == unknown == 401, (method, path)
            for name in sorted(ALL):
                got = _request(client, method, path, port, BEARER[name])
                may = name in allowed and not (name == "svc-p1" and port != "p1")
                assert (got != 403) == may, (method, path, port, name, got)
                assert got != 401


def test_a_gate_token_limited_to_ports_may_not_batch_another(client: TestClient) -> None:
    body = {"requests": [{"port_id": "p1", "estimated_tokens": 1},
                         {"port_id": "p2", "estimated_tokens": 1}]}  # fmt: skip
    got = client.post("/v1/check", json=body, headers=BEARER["svc-p1"])
    assert got.status_code == 403
    assert "p2" in got.json()["error"]["message"]


def test_a_wrong_scheme_is_401_and_asks_for_a_bearer(client: TestClient) -> None:
    got = client.get("/v1/ports/p1/status", headers={"Authorization": "Basic b3BzOng="})
    assert got.status_code == 401
    assert got.headers["www-authenticate"] == "Bearer"


def test_tokens_never_reach_the_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for headers in (BEARER["svc"], BEARER["viewer"], {"Authorization": "Bearer wrong-secret-1"}):
        client.put("/v1/ports/p1/budget", json={"hard_cap_tokens": 1}, headers=headers)
        client.get("/v1/ports/p1/budget", headers=headers)
    secrets = [t["token"] for t in TOKENS] + ["wrong-secret-1"]
    assert caplog.records  # something was logged at DEBUG, and none of it is a secret
    assert not [s for s in secrets if s in caplog.text]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("not json", "QUOTA_API_TOKENS is not JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"name": "a", "token": "short", "scope": "gate"}]',
         "token 0 ('a'): token: Value error, must be at least 16 characters"),
        ('[{"name": "a", "token": "0123456789abcdef", "scope": "root"}, '
         '{"name": "a", "token": "0123456789abcdeg", "scope": "read", "x": 1}]',
         "token 0 ('a'): scope: Input should be 'gate', 'read' or 'admin'; token 1 ('a'): x"),
        ('[{"name": "a", "token": "0123456789abcdef", "scope": "read"}, '
         '{"name": "a", "token": "0123456789abcdef", "scope": "read"}]',
         "name 'a' is used twice; two tokens share one secret"),
    ],
)  # fmt: skip
def test_bad_tokens_are_refused_with_every_problem_named(
    settings: Settings, raw: str, words: str
) -> None:
    with pytest.raises(InvalidInput, match=None) as caught:
        Tokens.from_settings(settings.model_copy(update={"api_tokens": SecretStr(raw)}))
    assert words in str(caught.value)
    assert "0123456789abcde" not in str(caught.value)  # no secret echoed


def test_tokens_from_a_file(settings: Settings, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tokens.json"
    path.write_text(json.dumps(TOKENS))
    tokens = Tokens.from_settings(settings.model_copy(update={"api_tokens_file": path}))
    found = tokens.find("read-token-0123456789")
    assert found is not None
    assert (found.name, found.scope) == ("viewer", "read")
    assert tokens.find("read-token-012345678") is None  # a prefix is not the token


def test_serve_without_tokens_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUOTA_API_TOKENS", raising=False)
    monkeypatch.delenv("QUOTA_API_TOKENS_FILE", raising=False)
    got = CliRunner().invoke(main, ["serve"])
    assert got.exit_code == 2
    assert got.output.strip().splitlines() == [
        "quota: quota serve needs bearer tokens: set QUOTA_API_TOKENS (JSON) or "
        "QUOTA_API_TOKENS_FILE (README: quota serve)"
    ]
