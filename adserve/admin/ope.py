"""Off-policy evaluation of the bandit on the logged decisions (admin only).

`GET /admin/v1/ope?days=7`: the value (CTR and revenue per decision) of the logging policy,
uniform random, greedy, and the registered bandit champion, each with IPS, SNIPS and DR, a
bootstrap 95% interval and the effective sample size (`adserve.learning.ope.ope_from_logs`).
A challenger file is evaluated with `adserve ope --challenger DIR` only: the API never opens paths.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar import Controller, Request, get
from litestar.params import QueryParameter
from msgspec import Struct

from adserve.admin.auth import requires_admin
from adserve.learning.ope import ope_from_logs

__all__ = ["OpeController", "OpeInterval", "OpePolicy", "OpeResponse"]


class OpeInterval(Struct, kw_only=True):
    value: float | None  # null where the estimator is undefined (no weight on any logged choice)
    low: float | None
    high: float | None


class OpePolicy(Struct, kw_only=True):
    n: int
    ess: float
    estimates: dict[str, dict[str, OpeInterval]]  # estimator (ips, snips, dr) → metric (ctr, revenue)


class OpeResponse(Struct, kw_only=True):
    since: datetime
    until: datetime
    n: int
    n_bootstrap: int
    interval: str
    metrics: list[str]
    policies: dict[str, OpePolicy]


class OpeController(Controller):
    path = "/ope"
    tags = ["models"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @get(
        summary="Off-policy evaluation",
        description="IPS, SNIPS and DR estimates with bootstrap intervals of candidate policies on the logged decisions.",
    )
    async def off_policy_evaluation(
        self,
        request: Request,
        days: Annotated[
            float, QueryParameter(gt=0, le=90, description="Logged decisions of the last N days")
        ] = 7.0,
        seed: Annotated[int, QueryParameter(ge=0, le=2**31 - 1)] = 0,
    ) -> OpeResponse:
        until = datetime.now(UTC)
        since = until - timedelta(days=days)
        report = await ope_from_logs(request.app.state.database, since, until, seed=seed)
        data = report.to_dict()
        return OpeResponse(
            since=since,
            until=until,
            n=data["n"],
            n_bootstrap=data["n_bootstrap"],
            interval=data["interval"],
            metrics=data["metrics"],
            policies={
                name: OpePolicy(
                    n=policy["n"],
                    ess=policy["ess"],
                    estimates={
                        estimator: {metric: OpeInterval(**values) for metric, values in by_metric.items()}
                        for estimator, by_metric in policy["estimates"].items()
                    },
                )
                for name, policy in data["policies"].items()
            },
        )
