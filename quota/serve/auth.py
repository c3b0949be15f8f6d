"""Bearer tokens and what each scope may do (`quota serve`).

Tokens come from QUOTA_API_TOKENS (JSON) or QUOTA_API_TOKENS_FILE: a list of
``{"name", "token", "scope", "ports"?}``. A scope grants a set of operations; a
``gate`` token with ``ports`` is also held to those ports. Tokens are compared in
constant time and never logged or echoed: errors name the token's position or name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from quota._exceptions import InvalidInput
from quota.settings import Settings

Scope = Literal["gate", "read", "admin"]

#: The operations of the API and the dashboard, by the scopes that may run them
#: (admin may run every one).
OPERATIONS: dict[str, frozenset[Scope]] = {
    "check": frozenset({"gate", "admin"}),
    "reserve": frozenset({"gate", "admin"}),
    "commit": frozenset({"gate", "admin"}),
    "release": frozenset({"gate", "admin"}),
    "record": frozenset({"gate", "admin"}),
    "status": frozenset({"gate", "read", "admin"}),
    "breakdown": frozenset({"read", "admin"}),
    "budget": frozenset({"read", "admin"}),
    "set_budget": frozenset({"admin"}),
    "dashboard": frozenset({"read", "admin"}),
}


class ApiToken(BaseModel):
    """One bearer token: who holds it (``name``, the ``updated_by`` of its budget
    changes), what it may do, and for a ``gate`` token, optionally, which ports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    token: SecretStr
    scope: Scope
    ports: frozenset[str] | None = None

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (make one: openssl rand -hex 24)")
        return value

    def may(self, operation: str, ports: Iterable[str] = ()) -> bool:
        """Whether this token may run ``operation`` on every one of ``ports``."""
        if self.scope not in OPERATIONS[operation]:
            return False
        return self.ports is None or all(p in self.ports for p in ports)


class Tokens:
    """The configured tokens, looked up in constant time by the secret presented."""

    def __init__(self, tokens: list[ApiToken]) -> None:
        self._tokens = [(t.token.get_secret_value().encode(), t) for t in tokens]

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        """Read and validate the tokens; `InvalidInput` naming every problem, else."""
        if settings.api_tokens is not None:
            raw, where = settings.api_tokens.get_secret_value(), "QUOTA_API_TOKENS"
        elif settings.api_tokens_file is not None:
            path = settings.api_tokens_file.expanduser()
            try:
                raw, where = path.read_text(), f"QUOTA_API_TOKENS_FILE ({path})"
            except OSError as exc:
                raise InvalidInput(f"cannot read QUOTA_API_TOKENS_FILE: {exc}") from None
        else:
            raise InvalidInput(
                "quota serve needs bearer tokens: set QUOTA_API_TOKENS (JSON) or "
                "QUOTA_API_TOKENS_FILE (README: quota serve)"
            )
        return cls(parse_tokens(raw, where))

    def named(self, name: str) -> ApiToken | None:
        return next((t for _, t in self._tokens if t.name == name), None)

    def session_key(self) -> bytes:
        """The key dashboard cookies are signed with: derived from every secret, so it
        is the same in every worker and changes (ending all sessions) with the tokens."""
        secrets = sorted(secret for secret, _ in self._tokens)
        return hashlib.sha256(b"quota-session\0" + b"\0".join(secrets)).digest()

    def find(self, presented: str) -> ApiToken | None:
        """The token whose secret is ``presented``; every one is compared, in constant
        time, so the answer's timing says nothing about which (or how much) matched."""
        given = presented.encode()
        found = None
        for secret, token in self._tokens:
            if hmac.compare_digest(secret, given):
                found = token
        return found


def parse_tokens(raw: str, where: str) -> list[ApiToken]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where} is not JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(data, list) or not data:
        raise InvalidInput(f"{where} must be a non-empty JSON list of tokens")
    problems, tokens = [], []
    for i, item in enumerate(data):
        label = f"token {i}" + (
            f" ({item['name']!r})" if isinstance(item, dict) and "name" in item else ""
        )
        try:
            tokens.append(ApiToken.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                field = ".".join(str(x) for x in err["loc"]) or "token"
                problems.append(f"{label}: {field}: {err['msg']}")
    names = [t.name for t in tokens]
    problems += [
        f"name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    secrets = [t.token.get_secret_value() for t in tokens]
    if len(set(secrets)) != len(secrets):
        problems.append("two tokens share one secret")
    if problems:
        raise InvalidInput(f"{where}: " + "; ".join(problems))
    return tokens


#: How long a dashboard login lasts.
SESSION_SECONDS = 8 * 3600


class Sessions:
    """Dashboard logins as signed cookies: ``<name>.<expiry>.<hmac>``. The cookie
    carries no secret, only the token's name, and is refused once altered or expired
    or once its token is gone."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens
        self._key = tokens.session_key()

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, token: ApiToken, now: float | None = None) -> str:
        name = base64.urlsafe_b64encode(token.name.encode()).decode().rstrip("=")
        body = f"{name}.{int((now or time.time()) + SESSION_SECONDS)}"
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str, now: float | None = None) -> ApiToken | None:
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        body = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(body), parts[2]):
            return None
        if int(parts[1]) < (now or time.time()):
            return None
        try:
            name = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
        except ValueError:
            return None
        return self._tokens.named(name)
