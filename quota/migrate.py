"""`quota db upgrade|current|history`: create the database if it is missing, apply
migrations, and say where the schema stands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
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


@dataclass(frozen=True)
class Upgraded:
    """What `upgrade` did: whether it created the database, and the schema's revision
    before (None: no schema) and after."""

    database: str
    created: bool
    before: str | None
    after: str | None

    def describe(self) -> str:
        made = f"created database {self.database}; " if self.created else ""
        if self.before == self.after:
            return f"{made}database {self.database} is up to date (schema {self.after})"
        steps = len(revisions(self.before, self.after))
        start = "an empty database" if self.before is None else self.before
        return (
            f"{made}database {self.database}: migrated from {start} to {self.after} "
            f"({steps} migration{'' if steps == 1 else 's'})"
        )


def upgrade(url: str, revision: str = "head") -> Upgraded:
    """Create the database if needed, migrate it, and create ledger partitions ahead."""
    created = create_database(url)
    before = current(url)
    with database_errors():
        command.upgrade(alembic_config(url), revision)
        ensure_partitions(url)
    return Upgraded(make_url(sqlalchemy_url(url)).database or "", created, before, current(url))


def current(url: str) -> str | None:
    """The schema's revision (None: no schema yet)."""
    engine = create_engine(sqlalchemy_url(url))
    try:
        with database_errors(), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def history() -> list[tuple[str, str]]:
    """Every migration, oldest first: (revision, its docstring's first sentence)."""
    scripts = ScriptDirectory.from_config(alembic_config("postgresql://unused/unused"))
    out = [(r.revision, _sentence(r.doc or "")) for r in scripts.walk_revisions()]
    return list(reversed(out))


def _sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def revisions(after: str | None, upto: str | None) -> list[str]:
    """The revisions applied going from ``after`` (exclusive) to ``upto`` (inclusive)."""
    names = [r for r, _ in history()]
    start = 0 if after is None else names.index(after) + 1
    return names[start : names.index(upto) + 1] if upto else []


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
