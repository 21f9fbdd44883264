"""money totals without a precision

Columns that sum money over an unbounded number of rows overflowed NUMERIC(18, 6) (below 10^12):
1,000 purchases of 1e9 stopped the daily rollup. NUMERIC without a precision cannot overflow;
dropping a precision is a catalogue change in Postgres, no table rewrite.

Revision ID: 4eff240a6454
Revises: 30c13520f8bb
Create Date: 2026-11-29 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "4eff240a6454"
down_revision = "30c13520f8bb"
branch_labels = None
depends_on = None

TOTALS = [
    ("campaigns", "spend_total"),
    ("campaigns", "spend_today"),
    ("rewards", "conversion_value"),
    ("daily_stats", "conversion_value"),
    ("daily_stats", "spend"),
]


def upgrade() -> None:
    for table, column in TOTALS:
        op.alter_column(table, column, type_=sa.Numeric(), existing_type=sa.Numeric(18, 6))


def downgrade() -> None:
    # Fails, rather than truncating, where a total no longer fits NUMERIC(18, 6).
    for table, column in TOTALS:
        op.alter_column(table, column, type_=sa.Numeric(18, 6), existing_type=sa.Numeric())
