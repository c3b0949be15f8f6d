"""The read-only dashboard: server-rendered pages over quota/serve/readings.py.

A page is shown to a ``read`` or ``admin`` token, presented as a bearer header or as
the signed cookie the login form sets (HttpOnly, SameSite=Strict; Secure over HTTPS).
Every page route is a GET; /login and /logout only set or clear that cookie."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from quota._exceptions import InvalidInput
from quota.models import BudgetChange
from quota.serve import readings
from quota.serve.auth import SESSION_SECONDS, ApiToken, Sessions, Tokens

router = APIRouter(include_in_schema=False)
NONE = "\N{EN DASH}"  # a figure not known
COOKIE = "quota_session"


def _num(value: int | float | None) -> str:
    return NONE if value is None else f"{value:,.0f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _dt(value: datetime | date) -> str:
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(), UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _changes(change: BudgetChange) -> str:
    moved = change.fields_changed()
    if change.before is None:
        return "created: " + ", ".join(f"{k} {_shown(a)}" for k, _, a in moved)
    return ", ".join(f"{k} {_shown(b)} → {_shown(a)}" for k, b, a in moved) or "no change"


def _shown(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "on", False: "off", None: "default"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, tuple | list):
        return "[" + "; ".join(_shown(v) for v in value) + "]" if value else "none"
    if isinstance(value, dict):
        items = [f"{k}={_shown(v)}" for k, v in value.items()]
        return "{" + ", ".join(items) + "}" if value else "none"
    return str(value)


env = Environment(
    loader=PackageLoader("quota.serve", "templates"), autoescape=select_autoescape(["html"])
)
env.filters.update(
    num=_num,
    age=_age,
    dt=_dt,
    isodt=lambda s: _dt(datetime.fromisoformat(s)),
    pct=lambda x: f"{math.floor(x * 100)}%",  # 99.8% is not yet 100%
    plural=lambda n, word: f"{n:,} {word}{'' if n == 1 else 's'}",
    changes=_changes,
)


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("who", None)
    context.setdefault("read_at", None)
    return HTMLResponse(env.get_template(name).render(**context), status)


def _login_page(status: int, message: str | None, next_url: str) -> HTMLResponse:
    return page("login.html", status, title="Log in", message=message, next=next_url)


def viewer(request: Request) -> ApiToken | HTMLResponse:
    """The token the page is shown to, or the page to answer instead: the login form
    (401) for no or a bad token, a 403 page for a token that may not see it."""
    tokens: Tokens = request.app.state.tokens
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, presented = header.partition(" ")
        token = tokens.find(presented.strip()) if scheme.lower() == "bearer" else None
        message: str | None = "unknown token"
    else:
        cookie = request.cookies.get(COOKIE)
        token = Sessions(tokens).read(cookie) if cookie else None
        message = "your session ended: log in again" if cookie else None
    if token is None:
        return _login_page(401, message, request.url.path)
    if not token.may("dashboard"):
        return page(
            "error.html",
            403,
            title="Forbidden",
            message=f"token {token.name!r} ({token.scope}) may not view the dashboard: "
            "it needs scope read or admin",
        )
    return token


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    who = viewer(request)
    if isinstance(who, Response):
        return who
    o = await readings.overview(request.app.state.gate)
    return page("overview.html", title="Overview", who=who, o=o, read_at=o.read_at, lag=o.lag)


@router.get("/ports/{port:path}", response_class=HTMLResponse)
async def port_detail(request: Request, port: str) -> Response:
    who = viewer(request)
    if isinstance(who, Response):
        return who
    try:
        p = await readings.port_page(request.app.state.gate, port)
    except InvalidInput as exc:
        return page("error.html", 404, title="No such port", message=str(exc), who=who)
    chart = {
        "x": [datetime.combine(d.day, time(), UTC).timestamp() for d in p.days],
        "y": [d.tokens for d in p.days],
    }
    return page(
        "port.html", title=f"Port {p.port}", who=who, p=p, chart=chart, read_at=p.read_at,
        lag=p.lag,
    )  # fmt: skip


@router.get("/reconcile", response_class=HTMLResponse)
async def reconcile(request: Request) -> Response:
    who = viewer(request)
    if isinstance(who, Response):
        return who
    report = await readings.last_reconcile(request.app.state.gate)
    return page("reconcile.html", title="Reconciliation", who=who, r=report)


@router.get("/login", response_class=HTMLResponse)
async def login_form(next: str = "/") -> Response:
    return _login_page(200, None, _local(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    presented = (form.get("token") or [""])[0].strip()
    next_url = _local((form.get("next") or ["/"])[0])
    tokens: Tokens = request.app.state.tokens
    token = tokens.find(presented) if presented else None
    if token is None:
        return _login_page(401, "unknown token", next_url)
    if not token.may("dashboard"):
        message = f"token {token.name!r} ({token.scope}) may not view the dashboard"
        return _login_page(403, message, next_url)
    done = RedirectResponse(next_url, 303)
    done.set_cookie(
        COOKIE,
        Sessions(tokens).issue(token),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return done


@router.post("/logout")
async def logout() -> Response:
    done = RedirectResponse("/login", 303)
    done.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return done


def _local(url: str) -> str:
    """Only a path on this server (no scheme, host or //): no open redirect."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"
