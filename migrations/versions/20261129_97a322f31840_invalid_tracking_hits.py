"""invalid tracking hits counted per minute

A tracking token that is not ours was stored as a clicks row per request; now each process counts
such hits and adds them here per minute, kind and reason.

Revision ID: 97a322f31840
Revises: 4eff240a6454
Create Date: 2026-11-29 23:00:01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "97a322f31840"
down_revision = "4eff240a6454"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invalid_tracking_hits",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "kind", "reason", name=op.f("pk_invalid_tracking_hits")),
    )


def downgrade() -> None:
    op.drop_table("invalid_tracking_hits")
