"""The shard count each deployment (key prefix) runs with, recorded by its first gate:
a process with another QUOTA_SHARDS would look for its ports' keys in other shards.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE deployments (
            key_prefix text PRIMARY KEY,
            shards integer NOT NULL CHECK (shards > 0),
            changed_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE deployments;")
