"""budget integrity: reservations, billed and unbilled deliveries

Budgets were checked only at decision time against spend so far and charging had no cap: 40
decisions served while a 1.00 campaign had budget, all clicked, charged 20.00. Now

- a served decision reserves its expected cost (`decisions.reserved`), summed per campaign and
  minute in `budget_reservations`, until its tracking tokens expire;
- an impression or click that would take billed spend past the total or daily budget is stored as
  delivered but not billed: `cost` 0 and its price in `unbilled` (impressions, clicks), and the
  rollup keeps `daily_stats.unbilled` beside the billed `spend`.

New columns are NOT NULL with a constant default: a catalogue change in Postgres, no rewrite.

Revision ID: b7d2e91c4a05
Revises: 97a322f31840
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b7d2e91c4a05"
down_revision = "97a322f31840"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(precision=18, scale=6, asdecimal=False)


def upgrade() -> None:
    op.create_table(
        "budget_reservations",
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("served_minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Numeric(asdecimal=False), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "served_minute", name=op.f("pk_budget_reservations")),
    )
    op.add_column("decisions", sa.Column("reserved", MONEY, server_default="0", nullable=False))
    op.add_column("impressions", sa.Column("unbilled", MONEY, server_default="0", nullable=False))
    op.add_column("clicks", sa.Column("unbilled", MONEY, server_default="0", nullable=False))
    op.add_column(
        "daily_stats",
        sa.Column("unbilled", sa.Numeric(asdecimal=False), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("daily_stats", "unbilled")
    op.drop_column("clicks", "unbilled")
    op.drop_column("impressions", "unbilled")
    op.drop_column("decisions", "reserved")
    op.drop_table("budget_reservations")
