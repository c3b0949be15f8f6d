"""Unit tests run without servers: their gates get settings that reach none."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Nothing listens on these ports: every call that is not canned would fail.
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        database_url="postgresql://nobody@127.0.0.1:1/none_test",
        key_prefix="qt-unit",
        spool_dir=tmp_path,
    )
