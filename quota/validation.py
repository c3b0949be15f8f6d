"""Argument checks for the public API. Pure: no I/O, raises `InvalidInput` only."""

from __future__ import annotations

import re

from quota._exceptions import InvalidInput

#: The characters of every identifier (ports, features, users, labels): no "|", which
#: joins fields on the wire and in reservation ids.
ID_CHAR = "[A-Za-z0-9._:@/-]"
_ID_RE = re.compile(ID_CHAR + "+")


def id_pattern(shortest: int, longest: int) -> str:
    """A regular expression for an identifier of ``shortest`` to ``longest`` characters."""
    return f"{ID_CHAR}{{{shortest},{longest}}}"


#: Per-call token counts above this are certainly a bug (a trillion tokens), and
#: keeping every sum far below 2**53 keeps Lua's doubles exact.
MAX_TOKENS = 10**12
#: Caps above this could not be reached by any real spend and risk Lua overflow.
MAX_CAP_TOKENS = 10**15
PORT_MAX = 128
FEATURE_MAX = 64
LABEL_MAX = 128


# Identifiers seen to be made of ID_CHAR only. Ports, features, providers and models
# repeat on nearly every call, and a set lookup costs a tenth of the regular
# expression. Bounded: past the limit, new ones are checked every time.
_SEEN: set[str] = set()
_SEEN_LIMIT = 100_000


def _identifier(kind: str, value: object, max_len: int) -> str:
    if type(value) is str and value in _SEEN and len(value) <= max_len:
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"{kind} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= max_len or not _ID_RE.fullmatch(value):
        raise InvalidInput(
            f"{kind} {value[:200]!r} is invalid: use 1-{max_len} characters of {ID_CHAR}"
        )
    if type(value) is str and len(_SEEN) < _SEEN_LIMIT:
        _SEEN.add(value)  # not a subclass: its == or hash could differ from a str's
    return value


def port_id(value: object) -> str:
    return _identifier("port id", value, PORT_MAX)


def feature(value: object) -> str:
    return _identifier("feature", value, FEATURE_MAX)


def request_id(value: object) -> str | None:
    return None if value is None else _identifier("request id", value, LABEL_MAX)


def user_id(value: object) -> str | None:
    return None if value is None else _identifier("user id", value, LABEL_MAX)


def label(kind: str, value: object) -> str:
    """Provider and model names: same charset, up to 128 characters."""
    return _identifier(kind, value, LABEL_MAX)


def tokens(kind: str, value: object, maximum: int = MAX_TOKENS) -> int:
    """A non-negative integer token count; bool, float, NaN and str are refused."""
    if type(value) is int and 0 <= value <= maximum:
        return value  # the usual case, in one test (check_many makes one per port)
    # bool is an int subclass: True tokens is a bug, not a count of one.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{kind} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise InvalidInput(f"{kind} must be non-negative, got {value}")
    if value > maximum:
        raise InvalidInput(f"{kind} {value} exceeds the maximum of {maximum}")
    return value
