"""Budgets, their history, soft-cap alerts, and the monthly-partitioned usage ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE budgets (
            port_id          text PRIMARY KEY,
            enabled          boolean NOT NULL,
            soft_cap_tokens  bigint  NOT NULL CHECK (soft_cap_tokens >= 0),
            hard_cap_tokens  bigint  NOT NULL CHECK (hard_cap_tokens >= 0),
            period           text    NOT NULL CHECK (period IN ('day', 'week', 'month')),
            version          bigint  NOT NULL,
            updated_by       text    NOT NULL,
            updated_at       timestamptz NOT NULL DEFAULT now(),
            CHECK (soft_cap_tokens <= hard_cap_tokens)
        );

        CREATE TABLE budget_history (
            id          bigserial PRIMARY KEY,
            port_id     text NOT NULL,
            changed_by  text NOT NULL,
            changed_at  timestamptz NOT NULL DEFAULT now(),
            before      jsonb,
            after       jsonb NOT NULL
        );
        CREATE INDEX budget_history_port ON budget_history (port_id, changed_at);

        CREATE TABLE soft_cap_alerts (
            port_id          text NOT NULL,
            period           text NOT NULL,
            period_start     timestamptz NOT NULL,
            used_tokens      bigint NOT NULL,
            soft_cap_tokens  bigint NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (port_id, period, period_start)
        );

        CREATE TABLE ledger (
            event_id       uuid        NOT NULL,
            occurred_at    timestamptz NOT NULL,
            port_id        text        NOT NULL,
            user_id        text,
            feature        text        NOT NULL,
            provider       text        NOT NULL,
            model          text        NOT NULL,
            input_tokens   bigint      NOT NULL CHECK (input_tokens >= 0),
            output_tokens  bigint      NOT NULL CHECK (output_tokens >= 0),
            total_tokens   bigint      NOT NULL,
            request_id     text,
            source         text        NOT NULL,
            PRIMARY KEY (event_id, occurred_at)
        ) PARTITION BY RANGE (occurred_at);
        CREATE INDEX ledger_port_time ON ledger (port_id, occurred_at);
        CREATE INDEX ledger_port_request ON ledger (port_id, request_id)
            WHERE request_id IS NOT NULL;

        -- Creates the month partition holding `ts` if it is missing. Called ahead of
        -- time by `quota db upgrade` and the workers, and by the direct-write path.
        CREATE FUNCTION quota_ensure_ledger_partition(ts timestamptz) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            lo timestamptz := date_trunc('month', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
            hi timestamptz := lo + interval '1 month';
            name text := 'ledger_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
        BEGIN
            IF to_regclass(name) IS NULL THEN
                -- Concurrent creators serialise here; the loser sees the table and stops.
                PERFORM pg_advisory_xact_lock(hashtext(name));
                IF to_regclass(name) IS NULL THEN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF ledger FOR VALUES FROM (%L) TO (%L)',
                        name, lo, hi);
                END IF;
            END IF;
            RETURN name;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION quota_ensure_ledger_partition(timestamptz);
        DROP TABLE ledger;
        DROP TABLE soft_cap_alerts;
        DROP TABLE budget_history;
        DROP TABLE budgets;
        """
    )
