"""Rate limits and feature caps, stored with the budget (JSON, validated by the model).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE budgets ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '[]';
        ALTER TABLE budgets ADD COLUMN feature_caps jsonb NOT NULL DEFAULT '{}';
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE budgets DROP COLUMN feature_caps;
        ALTER TABLE budgets DROP COLUMN rate_limits;
        """
    )
