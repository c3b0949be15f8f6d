"""Bad settings are refused in one line each, before anything connects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quota import Settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redis_url", "localhost:6379"),
        ("redis_url", "http://127.0.0.1:6379/0"),
        ("redis_url", "redis://127.0.0.1:port/0"),
        ("database_url", "mysql://root@127.0.0.1/quota"),
        ("database_url", "postgresql://postgres@127.0.0.1:54x/quota"),
        ("redis_timeout", float("inf")),
        ("redis_timeout", float("nan")),
        ("redis_timeout", 0),
        ("database_timeout", float("inf")),
        ("breaker_reset_seconds", float("nan")),
        ("breaker_failures", 0),
        ("outage_policy", "sometimes"),
        ("outage_allowance_tokens", -1),
    ],
)
def test_a_bad_setting_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_good_settings_are_taken(tmp_path: object) -> None:
    s = Settings(
        redis_url="rediss://user:pw@cache.internal:6380/2",
        database_url="postgres://u@db:5433/q",
        outage_policy="allowance",
        spool_dir="~/spool",
    )
    assert s.database_url == "postgresql+psycopg://u@db:5433/q"
    assert "~" not in str(s.spool_dir)


def test_the_cli_names_a_bad_setting_in_one_line() -> None:
    from click.testing import CliRunner

    from quota.cli import main

    r = CliRunner().invoke(main, ["budget", "show", "p"], env={"QUOTA_REDIS_TIMEOUT": "inf"})
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "redis_timeout" in r.stderr
