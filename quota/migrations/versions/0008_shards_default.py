"""QUOTA_SHARDS' default went from 16 to 256 (a cluster of up to ~30 primaries spreads
evenly). A deployment that has usage but never recorded its count ran with the old
default unless it set one: record 16 for it, so an upgraded process left on the new
default is refused (`ShardMismatch`) instead of looking for every port in another
shard. One that set another count records it with `quota shards adopt N --yes`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        INSERT INTO deployments (key_prefix, shards)
        SELECT key_prefix, 16 FROM ledger_daily
        UNION SELECT key_prefix, 16 FROM ledger_direct
        ON CONFLICT (key_prefix) DO NOTHING;
        """
    )


def downgrade() -> None:
    pass  # the rows stay true of their deployments
