"""Drain support: stream positions on ledger rows, and the daily rollup.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The Redis Stream entry id (ms-seq) an event was drained from; NULL for events
        -- written directly while Redis was down. Reconciliation cuts the ledger at one
        -- stream position with these.
        ALTER TABLE ledger ADD COLUMN stream_ms bigint, ADD COLUMN stream_seq bigint;

        -- Per (port, UTC day, feature, provider, model); updated in the same statement as
        -- the ledger insert, from the rows actually inserted, so redelivery adds nothing.
        CREATE TABLE ledger_daily (
            port_id        text   NOT NULL,
            day            date   NOT NULL,
            feature        text   NOT NULL,
            provider       text   NOT NULL,
            model          text   NOT NULL,
            input_tokens   bigint NOT NULL,
            output_tokens  bigint NOT NULL,
            total_tokens   bigint NOT NULL,
            calls          bigint NOT NULL,
            PRIMARY KEY (port_id, day, feature, provider, model)
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE ledger_daily;
        ALTER TABLE ledger DROP COLUMN stream_ms, DROP COLUMN stream_seq;
        """
    )
