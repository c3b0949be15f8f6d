"""The one boundary where Redis and Postgres errors become quota's own exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions
import sqlalchemy.exc

from quota._exceptions import DatabaseUnavailable, RedisUnavailable


@contextmanager
def redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise RedisUnavailable(f"Redis failed: {exc}") from exc


@contextmanager
def database_errors() -> Iterator[None]:
    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as exc:
        # The first line of a DBAPI error is the server's message; the rest is SQL.
        message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DatabaseUnavailable(f"Postgres failed: {message}") from exc
