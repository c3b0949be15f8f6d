"""The ledger knows the key prefix (deployment) each event belongs to.

Two deployments (key prefixes) may share a database: reconciliation, the gate's
rebuild of a lost port and the reports then read only their own rows. Rows from
before this revision belong to the default prefix, 'quota'.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE ledger ADD COLUMN key_prefix text NOT NULL DEFAULT 'quota';
        ALTER TABLE ledger ALTER COLUMN key_prefix DROP DEFAULT;
        ALTER TABLE ledger_direct ADD COLUMN key_prefix text NOT NULL DEFAULT 'quota';
        ALTER TABLE ledger_direct ALTER COLUMN key_prefix DROP DEFAULT;
        ALTER TABLE ledger_daily ADD COLUMN key_prefix text NOT NULL DEFAULT 'quota';
        ALTER TABLE ledger_daily ALTER COLUMN key_prefix DROP DEFAULT;
        ALTER TABLE ledger_daily DROP CONSTRAINT ledger_daily_pkey;
        ALTER TABLE ledger_daily
            ADD PRIMARY KEY (key_prefix, port_id, day, feature, provider, model);
        DROP INDEX ledger_direct_request;
        CREATE INDEX ledger_direct_request ON ledger_direct (key_prefix, port_id, request_id)
            WHERE request_id IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM ledger_daily WHERE key_prefix <> 'quota') THEN
                RAISE EXCEPTION 'the ledger holds prefixes other than quota: not merging them';
            END IF;
        END $$;
        DROP INDEX ledger_direct_request;
        CREATE INDEX ledger_direct_request ON ledger_direct (port_id, request_id)
            WHERE request_id IS NOT NULL;
        ALTER TABLE ledger_daily DROP CONSTRAINT ledger_daily_pkey;
        ALTER TABLE ledger_daily ADD PRIMARY KEY (port_id, day, feature, provider, model);
        ALTER TABLE ledger_daily DROP COLUMN key_prefix;
        ALTER TABLE ledger_direct DROP COLUMN key_prefix;
        ALTER TABLE ledger DROP COLUMN key_prefix;
        """
    )
