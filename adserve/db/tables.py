"""The schema: SQLAlchemy 2 typed ORM models. Alembic migrations mirror this file exactly.

Money is NUMERIC(18, 6) in Postgres (exact sums) and float in Python (JSON-friendly); columns that
accumulate money over an unbounded number of rows (spend, daily totals, conversion values) are
NUMERIC without a precision, which no sum can overflow.
High-volume tables (user_events, decisions, impressions, clicks, conversions) are append-only and
keyed by a client- or server-generated UUID so replays and retries never double count. user_events,
decisions, impressions and clicks are partitioned by day of `ts`, so their keys also hold `ts` (a
replayed row carries the ts of its first copy).

One module, past 450 lines, on purpose: it is the schema; Alembic's autogenerate and the drift check
read one metadata, and a table split across files is easier to miss.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Advertiser",
    "ApiKey",
    "AuditEntry",
    "Base",
    "BudgetReservation",
    "Campaign",
    "Click",
    "Conversion",
    "Creative",
    "DailyStat",
    "Decision",
    "Erasure",
    "Impression",
    "InvalidTrackingHit",
    "JobRun",
    "ModelVersion",
    "Placement",
    "Reward",
    "User",
    "UserEvent",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(18, 6, asdecimal=False)
# A running total: 1,000 purchases of 1e9 already pass NUMERIC(18, 6)'s 10^12.
Total = Numeric(asdecimal=False)


# The log tables are partitioned by day of `ts` (adserve/jobs/partitions.py creates and drops the
# partitions); a unique key of a partitioned table must contain `ts`.
PARTITIONED_BY_TS = {"postgresql_partition_by": "RANGE (ts)"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        uuid.UUID: UUID(as_uuid=True),
    }


def _created() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def _updated() -> Mapped[datetime]:
    return mapped_column(server_default=func.now(), onupdate=func.now())


class Advertiser(Base):
    __tablename__ = "advertisers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (CheckConstraint("status IN ('active', 'paused', 'archived')", name="status"),)


class ApiKey(Base):
    """Keys are shown once; only a SHA-256 digest is stored. The prefix finds the row fast."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    advertiser_id: Mapped[int | None] = mapped_column(ForeignKey("advertisers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), server_default="")
    created_at: Mapped[datetime] = _created()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("role IN ('admin', 'manager', 'viewer', 'site')", name="role"),
        CheckConstraint("role IN ('admin', 'site') OR advertiser_id IS NOT NULL", name="scoped_roles"),
    )


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    pricing: Mapped[str] = mapped_column(String(8))
    bid: Mapped[float] = mapped_column(Money)
    total_budget: Mapped[float | None] = mapped_column(Money)
    daily_budget: Mapped[float | None] = mapped_column(Money)
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    targeting: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    frequency_cap: Mapped[int | None] = mapped_column(Integer)
    frequency_window_s: Mapped[int | None] = mapped_column(Integer)
    spend_total: Mapped[float] = mapped_column(Total, server_default="0")
    spend_today: Mapped[float] = mapped_column(Total, server_default="0")
    spend_day: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        CheckConstraint("status IN ('active', 'paused', 'archived')", name="status"),
        CheckConstraint("pricing IN ('cpc', 'cpm')", name="pricing"),
        CheckConstraint("bid > 0", name="bid_positive"),
        CheckConstraint("total_budget IS NULL OR total_budget >= 0", name="total_budget"),
        CheckConstraint("daily_budget IS NULL OR daily_budget >= 0", name="daily_budget"),
        CheckConstraint("end_at IS NULL OR start_at IS NULL OR end_at > start_at", name="schedule"),
    )


class Creative(Base):
    __tablename__ = "creatives"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    # Copied from the campaign so every admin query is scoped by one indexed column.
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    format: Mapped[str] = mapped_column(String(16), server_default="image")
    width: Mapped[int] = mapped_column(SmallInteger)
    height: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str] = mapped_column(String(200))
    image_url: Mapped[str] = mapped_column(String(2048))
    landing_url: Mapped[str] = mapped_column(String(2048))
    category: Mapped[str | None] = mapped_column(String(100))
    brand: Mapped[str | None] = mapped_column(String(100))
    product_ids: Mapped[list[str]] = mapped_column(ARRAY(String(100)), server_default="{}")
    price: Mapped[float | None] = mapped_column(Money)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        CheckConstraint("status IN ('active', 'paused', 'archived')", name="status"),
        CheckConstraint("landing_url LIKE 'https://%'", name="landing_https"),
    )


class Placement(Base):
    __tablename__ = "placements"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    width: Mapped[int] = mapped_column(SmallInteger)
    height: Mapped[int] = mapped_column(SmallInteger)
    page_type: Mapped[str] = mapped_column(String(100), server_default="any")
    position: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (CheckConstraint("status IN ('active', 'paused', 'archived')", name="status"),)


class User(Base):
    """A pseudonymous user: `id` is a keyed hash of the site's user id, never the raw id."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    consent: Mapped[bool] = mapped_column(Boolean, server_default="false")
    segments: Mapped[list[str]] = mapped_column(ARRAY(String(64)), server_default="{}")
    created_at: Mapped[datetime] = _created()
    last_seen_at: Mapped[datetime] = _created()
    erased_at: Mapped[datetime | None]


class UserEvent(Base):
    __tablename__ = "user_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column(primary_key=True)
    item_id: Mapped[str | None] = mapped_column(String(100))
    category: Mapped[str | None] = mapped_column(String(100))
    price: Mapped[float | None] = mapped_column(Money)
    query: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime] = _created()

    __table_args__ = (
        Index("ix_user_events_user_id_ts", "user_id", "ts"),
        Index("ix_user_events_ts", "ts"),
        PARTITIONED_BY_TS,
    )


class Decision(Base):
    """Everything needed to learn from a decision later without train/serve skew."""

    __tablename__ = "decisions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ts: Mapped[datetime] = mapped_column(primary_key=True)
    request_id: Mapped[uuid.UUID]
    placement_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[str | None] = mapped_column(String(64))
    context: Mapped[dict[str, Any]]
    candidate_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    scores: Mapped[list[float]] = mapped_column(ARRAY(Float))
    pmf: Mapped[list[float]] = mapped_column(ARRAY(Float))
    chosen_creative_id: Mapped[int | None] = mapped_column(BigInteger)
    campaign_id: Mapped[int | None] = mapped_column(BigInteger)
    propensity: Mapped[float | None] = mapped_column(Float)
    explored: Mapped[bool] = mapped_column(Boolean, server_default="false")
    scorer_version: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    # Expected cost held against the campaign's budget while the decision's tokens are valid
    # (CPC: bid × P(click); CPM: price / 1000); 0 for campaigns without a budget.
    reserved: Mapped[float] = mapped_column(Money, server_default="0")

    __table_args__ = (
        Index("ix_decisions_ts", "ts"),
        Index("ix_decisions_user_id_ts", "user_id", "ts"),
        PARTITIONED_BY_TS,
    )


class Impression(Base):
    """At most one impression per decision: the decision id (with its ts, the partition key) is
    the key, and the log writer stores no second impression of a decision. `cost` is what was billed;
    `unbilled` what the impression was worth but could not be billed (the budget was spent)."""

    __tablename__ = "impressions"

    decision_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ts: Mapped[datetime] = mapped_column(primary_key=True)
    creative_id: Mapped[int] = mapped_column(BigInteger)
    campaign_id: Mapped[int] = mapped_column(BigInteger)
    placement_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[str | None] = mapped_column(String(64))
    cost: Mapped[float] = mapped_column(Money, server_default="0")
    unbilled: Mapped[float] = mapped_column(Money, server_default="0")

    __table_args__ = (
        Index("ix_impressions_user_id_campaign_id_ts", "user_id", "campaign_id", "ts"),
        Index("ix_impressions_ts", "ts"),
        PARTITIONED_BY_TS,
    )


class Click(Base):
    """Every click is stored; only one valid click per decision counts (the log writer demotes a
    later one; the partial unique index holds it within a ts, the partition key).
    A valid click's `cost` is what was billed, `unbilled` what it was worth beyond the budget."""

    __tablename__ = "clicks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    decision_id: Mapped[uuid.UUID | None]
    ts: Mapped[datetime] = mapped_column(primary_key=True)
    creative_id: Mapped[int | None] = mapped_column(BigInteger)
    campaign_id: Mapped[int | None] = mapped_column(BigInteger)
    placement_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[str | None] = mapped_column(String(64))
    valid: Mapped[bool] = mapped_column(Boolean)
    invalid_reason: Mapped[str | None] = mapped_column(String(32))
    cost: Mapped[float] = mapped_column(Money, server_default="0")
    unbilled: Mapped[float] = mapped_column(Money, server_default="0")

    __table_args__ = (
        Index(
            "uq_clicks_valid_decision_id",
            "decision_id",
            "ts",
            unique=True,
            postgresql_where=text("valid"),
        ),
        Index("ix_clicks_ts", "ts"),
        Index("ix_clicks_user_id_ts", "user_id", "ts"),
        PARTITIONED_BY_TS,
    )


class Conversion(Base):
    """A purchase attributed to a clicked decision; the purchase event id makes it idempotent."""

    __tablename__ = "conversions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    decision_id: Mapped[uuid.UUID]
    click_id: Mapped[uuid.UUID | None]
    ts: Mapped[datetime]
    user_id: Mapped[str | None] = mapped_column(String(64))
    campaign_id: Mapped[int | None] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Money, server_default="0")

    __table_args__ = (Index("ix_conversions_decision_id", "decision_id"),)


class Reward(Base):
    """A decision's joined outcome once its reward window closed (or a valid click arrived)."""

    __tablename__ = "rewards"

    decision_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    decision_ts: Mapped[datetime]
    clicked: Mapped[bool] = mapped_column(Boolean)
    conversion_value: Mapped[float] = mapped_column(Total, server_default="0")
    revenue: Mapped[float] = mapped_column(Money, server_default="0")
    joined_at: Mapped[datetime] = _created()
    learned: Mapped[bool] = mapped_column(Boolean, server_default="false")

    __table_args__ = (Index("ix_rewards_learned_decision_ts", "learned", "decision_ts"),)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), server_default="candidate")
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    promoted_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('interest', 'bandit')", name="kind"),
        CheckConstraint("status IN ('candidate', 'champion', 'rejected', 'retired')", name="status"),
        Index("uq_model_versions_kind_version", "kind", "version", unique=True),
        Index(
            "uq_model_versions_one_champion",
            "kind",
            unique=True,
            postgresql_where=text("status = 'champion'"),
        ),
    )


class JobRun(Base):
    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    figures: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))

    __table_args__ = (Index("ix_job_runs_job_started_at", "job", "started_at"),)


class DailyStat(Base):
    """Rollup per day, campaign, creative and placement; reports read only this table."""

    __tablename__ = "daily_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    creative_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    placement_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    advertiser_id: Mapped[int] = mapped_column(BigInteger)
    decisions: Mapped[int] = mapped_column(BigInteger, server_default="0")
    impressions: Mapped[int] = mapped_column(BigInteger, server_default="0")
    clicks: Mapped[int] = mapped_column(BigInteger, server_default="0")
    invalid_clicks: Mapped[int] = mapped_column(BigInteger, server_default="0")
    conversions: Mapped[int] = mapped_column(BigInteger, server_default="0")
    conversion_value: Mapped[float] = mapped_column(Total, server_default="0")
    spend: Mapped[float] = mapped_column(Total, server_default="0")  # billed
    unbilled: Mapped[float] = mapped_column(Total, server_default="0")  # delivered beyond the budget

    __table_args__ = (Index("ix_daily_stats_advertiser_id_day", "advertiser_id", "day"),)


class BudgetReservation(Base):
    """Expected cost of served decisions whose tracking tokens are still valid, summed per campaign
    and minute of serving. A bucket counts against the budget until its tokens expire
    (`serving.token_ttl_s` after its minute ends); a billed-or-unbilled delivery takes its
    decision's share back out. Written by the log writer (adserve/events/writer.py)."""

    __tablename__ = "budget_reservations"

    campaign_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    served_minute: Mapped[datetime] = mapped_column(primary_key=True)
    amount: Mapped[float] = mapped_column(Total)


class InvalidTrackingHit(Base):
    """Tracking hits whose token is not ours, counted per minute, kind and reason instead of a row
    per request (adserve/events/invalid_hits.py)."""

    __tablename__ = "invalid_tracking_hits"

    minute: Mapped[datetime] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    hits: Mapped[int] = mapped_column(BigInteger)


class Erasure(Base):
    """Audit of a user's erasure: when, by which key, and how many rows were removed or unlinked."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    requested_by_key_id: Mapped[int | None] = mapped_column(BigInteger)
    requested_by_role: Mapped[str] = mapped_column(String(16))
    erased_at: Mapped[datetime] = _created()
    counts: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class AuditEntry(Base):
    """One admin write: who (the API key's id and role; 'system' for the CLI and jobs, never the
    secret), what (resource, id, action), when, and the row before and after as JSON.

    No foreign keys: the trail outlives the advertisers, keys and rows it describes.
    `advertiser_id` is the advertiser the resource belongs to (NULL for placements, models and
    admin or site keys), so a manager or viewer reads its own advertiser's trail only."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = _created()
    key_id: Mapped[int | None] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(16))
    advertiser_id: Mapped[int | None] = mapped_column(BigInteger)
    resource: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(16))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]

    __table_args__ = (
        CheckConstraint(
            "action IN ('create', 'update', 'delete', 'archive', 'revoke', 'promote', 'rollback')",
            name="action",
        ),
        Index("ix_audit_log_advertiser_id_id", "advertiser_id", "id"),
        Index("ix_audit_log_resource_resource_id", "resource", "resource_id"),
    )
