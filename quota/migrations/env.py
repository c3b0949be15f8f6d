"""Alembic environment. The URL comes from the caller (`quota.migrate`) or Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from quota.schema import metadata
from quota.settings import Settings, sqlalchemy_url

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().database_url
engine = create_engine(sqlalchemy_url(url))

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
