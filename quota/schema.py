"""Postgres tables, as SQLAlchemy Core objects. The DDL lives in the Alembic migrations
(quota/migrations); these objects are what the code queries with."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

budgets = Table(
    "budgets",
    metadata,
    Column("port_id", Text, primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("soft_cap_tokens", BigInteger, nullable=False),
    Column("hard_cap_tokens", BigInteger, nullable=False),
    Column("period", Text, nullable=False),
    Column("outage_policy", Text),
    Column("rate_limits", JSONB, nullable=False, server_default="[]"),
    Column("feature_caps", JSONB, nullable=False, server_default="{}"),
    Column("version", BigInteger, nullable=False),
    Column("updated_by", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

budget_history = Table(
    "budget_history",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("port_id", Text, nullable=False),
    Column("changed_by", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("before", JSONB),
    Column("after", JSONB, nullable=False),
)

soft_cap_alerts = Table(
    "soft_cap_alerts",
    metadata,
    Column("port_id", Text, primary_key=True),
    Column("period", Text, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("used_tokens", BigInteger, nullable=False),
    Column("soft_cap_tokens", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Partitioned by month on occurred_at (see the migration); the primary key is
# (event_id, occurred_at) because a partitioned table's unique keys must include
# the partition key.
ledger = Table(
    "ledger",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("occurred_at", DateTime(timezone=True), primary_key=True),
    Column("port_id", Text, nullable=False),
    Column("user_id", Text),
    Column("feature", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("request_id", Text),
    Column("source", Text, nullable=False),
    Column("stream_ms", BigInteger),
    Column("stream_seq", BigInteger),
    Column("key_prefix", Text, nullable=False),
)

ledger_daily = Table(
    "ledger_daily",
    metadata,
    Column("key_prefix", Text, primary_key=True),
    Column("port_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("feature", Text, primary_key=True),
    Column("provider", Text, primary_key=True),
    Column("model", Text, primary_key=True),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("calls", BigInteger, nullable=False),
)

# Events written straight to the ledger (fallback): the drain skips their stream twins.
ledger_direct = Table(
    "ledger_direct",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("port_id", Text, nullable=False),
    Column("request_id", Text),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("key_prefix", Text, nullable=False),
    Column("reconciled", Boolean, nullable=False),
)

# The shard count each deployment (key prefix) runs with (quota/shards.py).
deployments = Table(
    "deployments",
    metadata,
    Column("key_prefix", Text, primary_key=True),
    Column("shards", Integer, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

#: Every table quota owns (for the demo's reset and the tests' clean slate).
TABLES = (
    "budgets",
    "budget_history",
    "soft_cap_alerts",
    "ledger",
    "ledger_daily",
    "ledger_direct",
    "deployments",
)
