"""Operations endpoints of the admin API: scheduled jobs (admin only) and reports from daily_stats.

Reports are scoped like every admin resource: a manager or viewer key sees its own advertiser's
rows only (asking for another advertiser is a 404), admins see all and may filter.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter
from msgspec import Struct
from sqlalchemy import func, select

from adserve.admin.auth import requires_admin
from adserve.admin.params import MAX_ID, CallerDep, DbSession, Limit, Offset
from adserve.db.tables import DailyStat, JobRun
from adserve.errors import InvalidInput, NotFound
from adserve.jobs.runs import process_identity
from adserve.jobs.scheduler import current_leader, job_specs

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["JobsController", "ReportsController"]

JobName = Annotated[str | None, QueryParameter(max_length=64, pattern=r"^[a-z0-9_-]+$")]
GroupBy = Literal["day", "campaign", "creative", "placement"]


class JobRunOut(Struct, kw_only=True):
    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None
    figures: dict


class JobRunPage(Struct, kw_only=True):
    items: list[JobRunOut]
    total: int
    limit: int
    offset: int


class JobOut(Struct, kw_only=True):
    name: str
    interval_s: float
    next_run_at: datetime | None  # exact in the leading process, else one interval after the last start
    last_status: str | None
    last_started_at: datetime | None
    last_duration_s: float | None
    runs_24h: int
    failures_24h: int


class JobsOverview(Struct, kw_only=True):
    leader: str | None  # host:pid of the process running the jobs
    this_process: str
    jobs: list[JobOut]


class ReportRow(Struct, kw_only=True, omit_defaults=True):
    day: date | None = None
    campaign_id: int | None = None
    creative_id: int | None = None
    placement_id: int | None = None
    decisions: int
    impressions: int
    clicks: int  # valid clicks
    invalid_clicks: int
    ctr: float | None  # valid clicks per impression
    spend: float  # billed
    unbilled: float  # delivered beyond the total or daily budget, never billed
    conversions: int
    conversion_value: float


class ReportPage(Struct, kw_only=True):
    group_by: str
    items: list[ReportRow]
    total: int
    limit: int
    offset: int


class JobsController(Controller):
    """The scheduler: which process leads, each job's cadence and last outcome, recent runs."""

    path = "/jobs"
    tags = ["jobs"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @get("/runs", summary="Recent job runs", description="Newest first; filter by job name.")
    async def list_job_runs(
        self, db_session: DbSession, limit: Limit = 50, offset: Offset = 0, job: JobName = None
    ) -> JobRunPage:
        statement = select(JobRun, func.count().over().label("total")).order_by(JobRun.id.desc())
        if job:
            statement = statement.where(JobRun.job == job)
        rows = (await db_session.execute(statement.limit(limit).offset(offset))).all()
        items = [
            JobRunOut(
                id=run.id,
                job=run.job,
                started_at=run.started_at,
                finished_at=run.finished_at,
                status=run.status,
                error=run.error,
                figures=run.figures,
            )
            for run, _ in rows
        ]
        total = rows[0].total if rows else await db_session.scalar(_count_runs(job))
        return JobRunPage(items=items, total=total or 0, limit=limit, offset=offset)

    @get(
        summary="Scheduled jobs",
        description="Which process leads the scheduler, each job's cadence and last outcome.",
    )
    async def list_jobs(self, request: Request, db_session: DbSession) -> JobsOverview:
        async with request.app.state.pool.acquire() as connection:
            leader = await current_leader(connection)
        scheduler = getattr(request.app.state, "jobs", None)
        exact = scheduler.next_run_times() if scheduler is not None and scheduler.is_leader else {}
        since = datetime.now(UTC) - timedelta(days=1)
        summary = {
            row.job: row
            for row in (
                await db_session.execute(
                    select(
                        JobRun.job,
                        func.max(JobRun.started_at).label("last_started_at"),
                        func.count().filter(JobRun.started_at >= since).label("runs"),
                        func.count()
                        .filter(JobRun.started_at >= since, JobRun.status == "failed")
                        .label("failures"),
                    ).group_by(JobRun.job)
                )
            ).all()
        }
        jobs = []
        for spec in job_specs(request.app.state.settings):
            row = summary.get(spec.name)
            last = await _last_run(db_session, spec.name) if row else None
            estimate = row.last_started_at + timedelta(seconds=spec.interval_s) if row else None
            jobs.append(
                JobOut(
                    name=spec.name,
                    interval_s=spec.interval_s,
                    next_run_at=exact.get(spec.name, estimate),
                    last_status=last.status if last else None,
                    last_started_at=row.last_started_at if row else None,
                    last_duration_s=(last.figures or {}).get("duration_s") if last else None,
                    runs_24h=row.runs if row else 0,
                    failures_24h=row.failures if row else 0,
                )
            )
        return JobsOverview(
            leader=leader,
            this_process=process_identity(),
            jobs=jobs,
        )


def _count_runs(job: str | None):
    statement = select(func.count()).select_from(JobRun)
    return statement.where(JobRun.job == job) if job else statement


async def _last_run(session: AsyncSession, job: str) -> JobRun | None:
    return await session.scalar(select(JobRun).where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1))


GROUP_COLUMNS = {
    "day": DailyStat.day,
    "campaign": DailyStat.campaign_id,
    "creative": DailyStat.creative_id,
    "placement": DailyStat.placement_id,
}
GROUP_FIELDS = {
    "day": "day",
    "campaign": "campaign_id",
    "creative": "creative_id",
    "placement": "placement_id",
}


class ReportsController(Controller):
    """Delivery reports from the daily rollups (local days of each campaign's timezone)."""

    path = "/reports"
    tags = ["reports"]  # noqa: RUF012

    @get(
        summary="Delivery report",
        description="From the daily rollups, by day, campaign, creative or placement; scoped to the caller's advertiser.",
    )
    async def report(
        self,
        db_session: DbSession,
        caller: CallerDep,
        group_by: FromQuery[GroupBy] = "day",
        date_from: Annotated[
            date | None, QueryParameter(name="from", description="first day, inclusive")
        ] = None,
        date_to: Annotated[date | None, QueryParameter(name="to", description="last day, inclusive")] = None,
        advertiser_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> ReportPage:
        if date_from and date_to and date_from > date_to:
            raise InvalidInput("`from` must not be after `to`")
        if not caller.is_admin:
            if advertiser_id is not None and advertiser_id != caller.advertiser_id:
                raise NotFound(f"advertiser {advertiser_id} not found")
            advertiser_id = caller.advertiser_id
        key = GROUP_COLUMNS[group_by]
        impressions, clicks = func.sum(DailyStat.impressions), func.sum(DailyStat.clicks)
        statement = (
            select(
                key.label("key"),
                func.sum(DailyStat.decisions).label("decisions"),
                impressions.label("impressions"),
                clicks.label("clicks"),
                func.sum(DailyStat.invalid_clicks).label("invalid_clicks"),
                func.sum(DailyStat.spend).label("spend"),
                func.sum(DailyStat.unbilled).label("unbilled"),
                func.sum(DailyStat.conversions).label("conversions"),
                func.sum(DailyStat.conversion_value).label("conversion_value"),
                func.count().over().label("total"),
            )
            .group_by(key)
            .order_by(key)
            .limit(limit)
            .offset(offset)
        )
        if advertiser_id is not None:
            statement = statement.where(DailyStat.advertiser_id == advertiser_id)
        if date_from:
            statement = statement.where(DailyStat.day >= date_from)
        if date_to:
            statement = statement.where(DailyStat.day <= date_to)
        rows = (await db_session.execute(statement)).all()
        items = [
            ReportRow(
                **{GROUP_FIELDS[group_by]: row.key},
                decisions=int(row.decisions),
                impressions=int(row.impressions),
                clicks=int(row.clicks),
                invalid_clicks=int(row.invalid_clicks),
                ctr=int(row.clicks) / int(row.impressions) if row.impressions else None,
                spend=float(row.spend),
                unbilled=float(row.unbilled),
                conversions=int(row.conversions),
                conversion_value=float(row.conversion_value),
            )
            for row in rows
        ]
        total = rows[0].total if rows else 0
        return ReportPage(group_by=group_by, items=items, total=total, limit=limit, offset=offset)
