"""admin audit log

Admin changes left no trail: who changed a campaign's bid, revoked a key or promoted a model could
not be told afterwards. Every admin write now adds a row here in the transaction of the change:
the API key's id and role (never the secret), the resource, its id and the action, and the row
before and after as JSON.

Revision ID: 6476fa7db70a
Revises: b7d2e91c4a05
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "6476fa7db70a"
down_revision = "b7d2e91c4a05"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=True),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "action IN ('create', 'update', 'delete', 'archive', 'revoke', 'promote', 'rollback')",
            name=op.f("ck_audit_log_action"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_advertiser_id_id", "audit_log", ["advertiser_id", "id"], unique=False)
    op.create_index(
        "ix_audit_log_resource_resource_id", "audit_log", ["resource", "resource_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_resource_resource_id", table_name="audit_log")
    op.drop_index("ix_audit_log_advertiser_id_id", table_name="audit_log")
    op.drop_table("audit_log")
