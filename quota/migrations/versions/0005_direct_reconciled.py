"""Direct writes wait in ledger_direct until reconciliation has counted them in Redis.

The drain job reconciles the ports of direct rows not yet reconciled after every run,
whichever process wrote them (a fallback write, a spool replay), so the counters take
that usage within seconds even if the writer died.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE ledger_direct ADD COLUMN reconciled boolean NOT NULL DEFAULT false;
        CREATE INDEX ledger_direct_pending ON ledger_direct (key_prefix)
            WHERE NOT reconciled;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX ledger_direct_pending;
        ALTER TABLE ledger_direct DROP COLUMN reconciled;
        """
    )
