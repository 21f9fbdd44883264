"""erasure audit

Revision ID: 30c13520f8bb
Revises: 6a558741db20
Create Date: 2026-11-28 05:09:26.710192
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "30c13520f8bb"
down_revision = "6a558741db20"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("requested_by_key_id", sa.BigInteger(), nullable=True),
        sa.Column("requested_by_role", sa.String(length=16), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column(
            "counts",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_index(op.f("ix_erasures_user_id"), "erasures", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_erasures_user_id"), table_name="erasures")
    op.drop_table("erasures")
