"""Outages: a budget's own outage policy, and the events written straight to Postgres.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- NULL follows QUOTA_OUTAGE_POLICY.
        ALTER TABLE budgets ADD COLUMN outage_policy text
            CHECK (outage_policy IN ('closed', 'open', 'allowance'));

        -- Every event the gate wrote straight to the ledger (Redis down, hung or
        -- timed out), by its event id and request id: the drain drops a stream entry
        -- of the same event or request (a call that timed out may still have run in
        -- Redis), so no event is counted twice whichever backends saw it. Small and
        -- unpartitioned: only fallback writes land here.
        CREATE TABLE ledger_direct (
            event_id     uuid PRIMARY KEY,
            port_id      text NOT NULL,
            request_id   text,
            occurred_at  timestamptz NOT NULL
        );
        CREATE INDEX ledger_direct_request ON ledger_direct (port_id, request_id)
            WHERE request_id IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE ledger_direct;
        ALTER TABLE budgets DROP COLUMN outage_policy;
        """
    )
