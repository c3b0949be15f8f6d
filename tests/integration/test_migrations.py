"""Migrations that change data, run on a scratch database of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, make_url, text

from quota.migrate import alembic_config, history, upgrade
from quota.settings import Settings, sqlalchemy_url

pytestmark = pytest.mark.standalone


@pytest.fixture
def scratch_url(base_settings: Settings) -> Iterator[str]:
    url = make_url(sqlalchemy_url(base_settings.database_url))
    name = f"quota_mig_{uuid.uuid4().hex[:8]}_test"
    yield url.set(database=name).render_as_string(hide_password=False)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # the database this fixture named, and only it
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_0008_records_the_old_default_for_deployments_with_usage(scratch_url: str) -> None:
    upgrade(scratch_url, "0007")
    engine = create_engine(scratch_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_daily (key_prefix, port_id, day, feature, provider, "
                "model, input_tokens, output_tokens, total_tokens, calls) VALUES "
                "('old', 'p', current_date, 'f', 'x', 'm', 1, 0, 1, 1), "
                "('kept', 'p', current_date, 'f', 'x', 'm', 1, 0, 1, 1)"
            )
        )
        conn.execute(text("INSERT INTO deployments (key_prefix, shards) VALUES ('kept', 64)"))
    upgrade(scratch_url)
    with engine.connect() as conn:
        rows: dict[str, int] = dict(
            conn.execute(text("SELECT key_prefix, shards FROM deployments")).all()
        )
    engine.dispose()
    # Ran on the old default 16 before counts were recorded; a recorded count is kept.
    assert rows == {"old": 16, "kept": 64}


def test_db_commands_say_what_they_did(scratch_url: str) -> None:
    from click.testing import CliRunner

    from quota.cli import main

    cli = CliRunner(env={"QUOTA_DATABASE_URL": scratch_url})
    name = scratch_url.rsplit("/", 1)[1]
    first = cli.invoke(main, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    last = history()[-1][0]
    assert first.stderr.strip() == (
        f"created database {name}; database {name}: migrated from an empty database to "
        f"{last} ({len(history())} migrations)"
    )
    again = cli.invoke(main, ["db", "upgrade"])
    assert again.stderr.strip() == f"database {name} is up to date (schema {last})"
    current = cli.invoke(main, ["db", "current"])
    assert (current.exit_code, current.stdout.strip()) == (0, f"{last} (head): up to date")
    lines = cli.invoke(main, ["db", "history"]).stdout.splitlines()
    assert [line.split()[0] for line in lines] == [r for r, _ in history()]
    assert lines[-1].startswith(f"{last} (current)")
    assert lines[0].startswith("0001  Budgets, their history, soft-cap alerts, and the")
    command.downgrade(alembic_config(scratch_url), "0006")  # an older schema: exit 1
    behind = cli.invoke(main, ["db", "current"])
    assert (behind.exit_code, behind.stdout.strip()) == (
        1, f"0006; newest is {last}: run quota db upgrade")  # fmt: skip
