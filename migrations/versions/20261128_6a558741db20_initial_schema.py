"""initial schema

Revision ID: 6a558741db20
Revises:
Create Date: 2026-11-28 04:11:50.666044
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "6a558741db20"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "advertisers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_advertisers_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advertisers")),
        sa.UniqueConstraint("name", name=op.f("uq_advertisers_name")),
    )
    op.create_table(
        "clicks",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("decision_id", sa.UUID(), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("creative_id", sa.BigInteger(), nullable=True),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("placement_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("invalid_reason", sa.String(length=32), nullable=True),
        sa.Column(
            "cost", sa.Numeric(precision=18, scale=6, asdecimal=False), server_default="0", nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clicks")),
    )
    op.create_index("ix_clicks_ts", "clicks", ["ts"], unique=False)
    op.create_index("ix_clicks_user_id_ts", "clicks", ["user_id", "ts"], unique=False)
    op.create_index(
        "uq_clicks_valid_decision_id",
        "clicks",
        ["decision_id"],
        unique=True,
        postgresql_where=sa.text("valid"),
    )
    op.create_table(
        "conversions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("decision_id", sa.UUID(), nullable=False),
        sa.Column("click_id", sa.UUID(), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "value", sa.Numeric(precision=18, scale=6, asdecimal=False), server_default="0", nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversions")),
    )
    op.create_index("ix_conversions_decision_id", "conversions", ["decision_id"], unique=False)
    op.create_table(
        "daily_stats",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("creative_id", sa.BigInteger(), nullable=False),
        sa.Column("placement_id", sa.BigInteger(), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=False),
        sa.Column("decisions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("impressions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("clicks", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("invalid_clicks", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("conversions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "conversion_value",
            sa.Numeric(precision=18, scale=6, asdecimal=False),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "spend", sa.Numeric(precision=18, scale=6, asdecimal=False), server_default="0", nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "day", "campaign_id", "creative_id", "placement_id", name=op.f("pk_daily_stats")
        ),
    )
    op.create_index("ix_daily_stats_advertiser_id_day", "daily_stats", ["advertiser_id", "day"], unique=False)
    op.create_table(
        "decisions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("placement_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("context", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("candidate_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("scores", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("pmf", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("chosen_creative_id", sa.BigInteger(), nullable=True),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("propensity", sa.Float(), nullable=True),
        sa.Column("explored", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("scorer_version", sa.String(length=64), nullable=False),
        sa.Column("policy_version", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
    )
    op.create_index("ix_decisions_ts", "decisions", ["ts"], unique=False)
    op.create_index("ix_decisions_user_id_ts", "decisions", ["user_id", "ts"], unique=False)
    op.create_table(
        "impressions",
        sa.Column("decision_id", sa.UUID(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("creative_id", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("placement_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column(
            "cost", sa.Numeric(precision=18, scale=6, asdecimal=False), server_default="0", nullable=False
        ),
        sa.PrimaryKeyConstraint("decision_id", name=op.f("pk_impressions")),
    )
    op.create_index("ix_impressions_ts", "impressions", ["ts"], unique=False)
    op.create_index(
        "ix_impressions_user_id_campaign_id_ts", "impressions", ["user_id", "campaign_id", "ts"], unique=False
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "figures",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    op.create_index("ix_job_runs_job_started_at", "job_runs", ["job", "started_at"], unique=False)
    op.create_table(
        "model_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="candidate", nullable=False),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('interest', 'bandit')", name=op.f("ck_model_versions_kind")),
        sa.CheckConstraint(
            "status IN ('candidate', 'champion', 'rejected', 'retired')",
            name=op.f("ck_model_versions_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
    )
    op.create_index("uq_model_versions_kind_version", "model_versions", ["kind", "version"], unique=True)
    op.create_index(
        "uq_model_versions_one_champion",
        "model_versions",
        ["kind"],
        unique=True,
        postgresql_where=sa.text("status = 'champion'"),
    )
    op.create_table(
        "placements",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("width", sa.SmallInteger(), nullable=False),
        sa.Column("height", sa.SmallInteger(), nullable=False),
        sa.Column("page_type", sa.String(length=100), server_default="any", nullable=False),
        sa.Column("position", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_placements_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_placements")),
        sa.UniqueConstraint("key", name=op.f("uq_placements_key")),
    )
    op.create_table(
        "rewards",
        sa.Column("decision_id", sa.UUID(), nullable=False),
        sa.Column("decision_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("clicked", sa.Boolean(), nullable=False),
        sa.Column(
            "conversion_value",
            sa.Numeric(precision=18, scale=6, asdecimal=False),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "revenue", sa.Numeric(precision=18, scale=6, asdecimal=False), server_default="0", nullable=False
        ),
        sa.Column("joined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("learned", sa.Boolean(), server_default="false", nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name=op.f("pk_rewards")),
    )
    op.create_index("ix_rewards_learned_decision_ts", "rewards", ["learned", "decision_ts"], unique=False)
    op.create_table(
        "user_events",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("item_id", sa.String(length=100), nullable=True),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("price", sa.Numeric(precision=18, scale=6, asdecimal=False), nullable=True),
        sa.Column("query", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_events")),
    )
    op.create_index("ix_user_events_ts", "user_events", ["ts"], unique=False)
    op.create_index("ix_user_events_user_id_ts", "user_events", ["user_id", "ts"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("consent", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("segments", postgresql.ARRAY(sa.String(length=64)), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column(
            "last_seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('admin', 'manager', 'viewer', 'site')", name=op.f("ck_api_keys_role")),
        sa.CheckConstraint(
            "role IN ('admin', 'site') OR advertiser_id IS NOT NULL", name=op.f("ck_api_keys_scoped_roles")
        ),
        sa.ForeignKeyConstraint(
            ["advertiser_id"],
            ["advertisers.id"],
            name=op.f("fk_api_keys_advertiser_id_advertisers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("pricing", sa.String(length=8), nullable=False),
        sa.Column("bid", sa.Numeric(precision=18, scale=6, asdecimal=False), nullable=False),
        sa.Column("total_budget", sa.Numeric(precision=18, scale=6, asdecimal=False), nullable=True),
        sa.Column("daily_budget", sa.Numeric(precision=18, scale=6, asdecimal=False), nullable=True),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column(
            "targeting",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("frequency_cap", sa.Integer(), nullable=True),
        sa.Column("frequency_window_s", sa.Integer(), nullable=True),
        sa.Column(
            "spend_total",
            sa.Numeric(precision=18, scale=6, asdecimal=False),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "spend_today",
            sa.Numeric(precision=18, scale=6, asdecimal=False),
            server_default="0",
            nullable=False,
        ),
        sa.Column("spend_day", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("pricing IN ('cpc', 'cpm')", name=op.f("ck_campaigns_pricing")),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_campaigns_status")),
        sa.CheckConstraint("bid > 0", name=op.f("ck_campaigns_bid_positive")),
        sa.CheckConstraint(
            "daily_budget IS NULL OR daily_budget >= 0", name=op.f("ck_campaigns_daily_budget")
        ),
        sa.CheckConstraint(
            "end_at IS NULL OR start_at IS NULL OR end_at > start_at", name=op.f("ck_campaigns_schedule")
        ),
        sa.CheckConstraint(
            "total_budget IS NULL OR total_budget >= 0", name=op.f("ck_campaigns_total_budget")
        ),
        sa.ForeignKeyConstraint(
            ["advertiser_id"],
            ["advertisers.id"],
            name=op.f("fk_campaigns_advertiser_id_advertisers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index(op.f("ix_campaigns_advertiser_id"), "campaigns", ["advertiser_id"], unique=False)
    op.create_table(
        "creatives",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("advertiser_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("format", sa.String(length=16), server_default="image", nullable=False),
        sa.Column("width", sa.SmallInteger(), nullable=False),
        sa.Column("height", sa.SmallInteger(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("image_url", sa.String(length=2048), nullable=False),
        sa.Column("landing_url", sa.String(length=2048), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("brand", sa.String(length=100), nullable=True),
        sa.Column(
            "product_ids", postgresql.ARRAY(sa.String(length=100)), server_default="{}", nullable=False
        ),
        sa.Column("price", sa.Numeric(precision=18, scale=6, asdecimal=False), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("landing_url LIKE 'https://%'", name=op.f("ck_creatives_landing_https")),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_creatives_status")),
        sa.ForeignKeyConstraint(
            ["advertiser_id"],
            ["advertisers.id"],
            name=op.f("fk_creatives_advertiser_id_advertisers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_creatives_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_creatives")),
    )
    op.create_index(op.f("ix_creatives_advertiser_id"), "creatives", ["advertiser_id"], unique=False)
    op.create_index(op.f("ix_creatives_campaign_id"), "creatives", ["campaign_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_creatives_campaign_id"), table_name="creatives")
    op.drop_index(op.f("ix_creatives_advertiser_id"), table_name="creatives")
    op.drop_table("creatives")
    op.drop_index(op.f("ix_campaigns_advertiser_id"), table_name="campaigns")
    op.drop_table("campaigns")
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_index("ix_user_events_user_id_ts", table_name="user_events")
    op.drop_index("ix_user_events_ts", table_name="user_events")
    op.drop_table("user_events")
    op.drop_index("ix_rewards_learned_decision_ts", table_name="rewards")
    op.drop_table("rewards")
    op.drop_table("placements")
    op.drop_index(
        "uq_model_versions_one_champion",
        table_name="model_versions",
        postgresql_where=sa.text("status = 'champion'"),
    )
    op.drop_index("uq_model_versions_kind_version", table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_index("ix_job_runs_job_started_at", table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_index("ix_impressions_user_id_campaign_id_ts", table_name="impressions")
    op.drop_index("ix_impressions_ts", table_name="impressions")
    op.drop_table("impressions")
    op.drop_index("ix_decisions_user_id_ts", table_name="decisions")
    op.drop_index("ix_decisions_ts", table_name="decisions")
    op.drop_table("decisions")
    op.drop_index("ix_daily_stats_advertiser_id_day", table_name="daily_stats")
    op.drop_table("daily_stats")
    op.drop_index("ix_conversions_decision_id", table_name="conversions")
    op.drop_table("conversions")
    op.drop_index("uq_clicks_valid_decision_id", table_name="clicks", postgresql_where=sa.text("valid"))
    op.drop_index("ix_clicks_user_id_ts", table_name="clicks")
    op.drop_index("ix_clicks_ts", table_name="clicks")
    op.drop_table("clicks")
    op.drop_table("advertisers")
