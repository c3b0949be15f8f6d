"""`quota db upgrade`: create the database if it is missing, then apply migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, text

from quota._backend import database_errors
from quota.periods import period_end, period_start
from quota.settings import sqlalchemy_url

#: Ledger partitions are kept this many months ahead of today.
MONTHS_AHEAD = 3


def create_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. True if created."""
    target = make_url(sqlalchemy_url(url))
    name = target.database
    if not name:
        raise ValueError("the database URL names no database")
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with database_errors(), admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "quota:migrations")
    # '%' would be read as interpolation by configparser.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create the database if needed, migrate it, and create ledger partitions ahead."""
    create_database(url)
    with database_errors():
        command.upgrade(alembic_config(url), revision)
        ensure_partitions(url)


def ensure_partitions(url: str, now: datetime | None = None) -> list[str]:
    """Make sure ledger partitions exist from last month to ``MONTHS_AHEAD`` ahead."""
    month = period_start("month", now or datetime.now(UTC))
    months = [period_start("month", month - timedelta(days=1))]
    for _ in range(MONTHS_AHEAD + 1):
        months.append(month)
        month = period_end("month", month)
    engine = create_engine(sqlalchemy_url(url))
    try:
        with database_errors(), engine.begin() as conn:
            return [
                conn.execute(
                    text("SELECT quota_ensure_ledger_partition(:ts)"), {"ts": m}
                ).scalar_one()
                for m in months
            ]
    finally:
        engine.dispose()
