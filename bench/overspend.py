"""Budget integrity under concurrent traffic from two processes (issue 13, "Budget integrity").

    .venv/bin/python bench/overspend.py [--decisions 20000] [--ttl 60] [--workers 16] [--write]

In one run on this machine it
1. creates a fresh database `adserve_bench_<random>` on the Postgres at 127.0.0.1:5432 (or
   `--database-url`'s server; an embedded Postgres when nothing answers), migrates it, and drops it
   at the end;
2. seeds 10 campaigns with small budgets on one 300×250 placement, one creative each: 5 CPC and
   5 CPM, some with a daily budget below the total. Their time zone is one where the local day is
   75-90 % done, so even pacing (which would hold a daily budget to a share of the day) does not
   keep the budgets from being reached;
3. starts two `adserve serve` processes (prod settings, scheduled jobs off, tracking-token TTL
   `--ttl` seconds) on two ports over that database;
4. sends `--decisions` decision requests, alternating between the processes; for every served
   decision it fires the impression URL and then the click URL (browser user agent) at a random
   process: every decision is clicked, the worst case for a budget. 10 % of impressions and 10 %
   of clicks are fired twice (the replay at the other process, half of them at the same moment);
   10 % of decisions are held back for half the TTL (fired after other traffic has spent the
   budget); 5 % are held back past the TTL (the issue's "hour of delay", simulated with a short
   TTL: the same expiry path, without waiting an hour);
5. prints, per campaign: budget, decisions served, impressions, valid clicks, billed spend,
   unbilled deliveries and the overspend against the bound max(1 % of the budget, one event's
   price); checks the campaign's spend counter and the daily rollup (what reports read) against
   the raw rows. With --write it replaces "## Budget integrity" in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import Server, free_port, open_database, start_server

from adserve.admin import schemas
from adserve.admin.services import (
    AdvertiserService,
    CampaignService,
    CreativeService,
    PlacementService,
)
from adserve.db.engine import asyncpg_dsn, sessionmaker_for, sqlalchemy_url
from adserve.jobs.tasks import rollup_daily_stats

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
PLACEMENT = "overspend-slot"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
USERS = 5000
REPLAY_SHARE = 0.10  # of impressions, and independently of clicks, fired twice
LATE_SHARE = 0.10  # decisions whose URLs are fired half a TTL later
EXPIRED_SHARE = 0.05  # decisions whose URLs are fired after the TTL

# (pricing, bid, total budget, daily budget): CPC bids per click, CPM prices per thousand.
CAMPAIGNS = (
    ("cpc", 0.50, 5.00, 5.00),
    ("cpc", 0.30, 6.00, None),
    ("cpc", 0.20, 4.00, 2.00),
    ("cpc", 0.10, 3.00, 3.00),
    ("cpc", 0.05, 2.00, None),
    ("cpm", 2.00, 8.00, None),
    ("cpm", 3.00, 9.00, 9.00),
    ("cpm", 5.00, 10.00, 5.00),
    ("cpm", 8.00, 24.00, None),
    ("cpm", 10.00, 30.00, 20.00),
)  # room for about 13,000 impressions and 110 clicks: budgets run out within the 20,000 decisions


def late_day_zone(now: datetime) -> str:
    """A whole-hour zone whose local day is 75-90 % done (at least 2.4 h before midnight)."""
    for hours in range(-12, 15):
        name = "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"  # Etc/GMT-5 is UTC+5
        local = now.astimezone(ZoneInfo(name))
        if 0.75 <= (local.hour * 3600 + local.minute * 60 + local.second) / 86400 <= 0.9:
            return name
    raise AssertionError("some whole-hour offset is always 75-90 % into its day")


async def seed(url: str, timezone: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with sessionmaker_for(engine)() as session:
            advertiser = await AdvertiserService(session, None).create(
                schemas.AdvertiserCreate(name="overspend bench")
            )
            for index, (pricing, bid, total, daily) in enumerate(CAMPAIGNS):
                body = {
                    "name": f"{pricing} {bid:g} budget {total:g}" + (f"/{daily:g} a day" if daily else ""),
                    "pricing": pricing,
                    "bid": bid,
                    "total_budget": total,
                    "daily_budget": daily,
                    "timezone": timezone,
                }
                campaign = await CampaignService(session, None).create(
                    msgspec.convert(body, schemas.CampaignCreate), advertiser.id
                )
                await CreativeService(session, None).create(
                    schemas.CreativeCreate(
                        campaign_id=campaign.id,
                        title=f"ad {index}",
                        width=300,
                        height=250,
                        image_url="https://cdn.example/ad.png",
                        landing_url=f"https://shop.example/landing/{index}",
                        category=f"category{index % 4}",
                    )
                )
            await PlacementService(session, None).create(
                schemas.PlacementCreate(key=PLACEMENT, width=300, height=250)
            )
    finally:
        await engine.dispose()


# --- traffic --------------------------------------------------------------------------------------


@dataclass
class Traffic:
    decisions: int = 0
    served: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "<kind> <status>"
    errors: Counter[str] = field(default_factory=Counter)  # transport errors after one retry
    retried: int = 0  # requests retried once after a transport error (keep-alive races)
    groups: Counter[str] = field(default_factory=Counter)
    replays: Counter[str] = field(default_factory=Counter)


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def run_traffic(ports: list[int], args: argparse.Namespace, rng: random.Random) -> Traffic:
    traffic = Traffic()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60.0, limits=limits) for port in ports
    ]
    tracking_slots = asyncio.Semaphore(args.workers * 2)
    # Backpressure: at most this many prompt deliveries outstanding, so the client fires URLs
    # within seconds of their decision rather than falling behind into the TTL.
    backlog = asyncio.Semaphore(args.workers * 8)
    deliveries: list[asyncio.Task[None]] = []

    async def send(kind: str, call) -> httpx.Response | None:
        for attempt in (1, 2):
            try:
                return await call()
            except httpx.TransportError as exc:
                if attempt == 2:
                    traffic.errors[f"{kind} {type(exc).__name__}"] += 1
                    return None
                traffic.retried += 1
        return None

    async def hit(kind: str, process: int, path: str) -> None:
        headers = {"user-agent": BROWSER}
        async with tracking_slots:
            response = await send(
                kind, partial(clients[process].get, path, headers=headers, follow_redirects=False)
            )
        if response is not None:
            traffic.statuses[f"{kind} {response.status_code}"] += 1

    async def fire(kind: str, path: str, replay: bool) -> None:
        process = rng.randrange(2)
        if not replay:
            await hit(kind, process, path)
            return
        traffic.replays[kind] += 1
        if rng.random() < 0.5:  # both at once, one per process
            await asyncio.gather(hit(kind, process, path), hit(kind, 1 - process, path))
        else:
            await hit(kind, process, path)
            await hit(kind, 1 - process, path)

    async def deliver(decision: dict, delay_s: float, prompt: bool) -> None:
        try:
            await asyncio.sleep(delay_s)  # the browser's delay (the tag waits for viewability)
            await fire("impression", _path(decision["impression_url"]), rng.random() < REPLAY_SHARE)
            await asyncio.sleep(rng.uniform(0.05, 1.0))  # reading before the click
            await fire("click", _path(decision["click_url"]), rng.random() < REPLAY_SHARE)
        finally:
            if prompt:
                backlog.release()

    counter = iter(range(args.decisions))

    async def decide_worker(worker: int) -> None:
        for n in counter:
            body = {
                "user_id": f"user-{rng.randrange(USERS)}",
                "placements": [PLACEMENT],
                "consent": True,
                "context": {"device": "desktop", "geo": "FR", "page_category": f"category{n % 4}"},
            }
            await backlog.acquire()
            response = await send("decision", partial(clients[n % 2].post, "/v1/decisions", json=body))
            if response is None:
                backlog.release()
                continue
            traffic.decisions += 1
            traffic.statuses[f"decision {response.status_code}"] += 1
            if response.status_code != 200:
                backlog.release()
                continue
            decision = response.json()["decisions"][0]
            if decision["creative"] is None:
                backlog.release()
                continue
            traffic.served += 1
            draw = rng.random()
            if draw < EXPIRED_SHARE:
                group, delay = "expired", args.ttl + 5.0 + rng.uniform(0, 5)
            elif draw < EXPIRED_SHARE + LATE_SHARE:
                group, delay = "late", args.ttl / 2 + rng.uniform(-3, 3)
            else:
                group, delay = "prompt", rng.uniform(0.05, 1.0)
            traffic.groups[group] += 1
            if group != "prompt":
                backlog.release()
            deliveries.append(asyncio.create_task(deliver(decision, delay, group == "prompt")))

    started = time.monotonic()

    async def progress() -> None:
        while True:
            await asyncio.sleep(15)
            done = sum(task.done() for task in deliveries)
            print(
                f"  {time.monotonic() - started:5.0f} s: {traffic.decisions:,} decisions "
                f"({traffic.served:,} served), deliveries {done:,}/{len(deliveries):,} done, "
                f"errors {sum(traffic.errors.values())}",
                flush=True,
            )

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(decide_worker(w) for w in range(args.workers)))
        await asyncio.gather(*deliveries)
    finally:
        reporter.cancel()
        for client in clients:
            await client.aclose()
    return traffic


# --- results --------------------------------------------------------------------------------------

RESULTS_SQL = """
WITH delivered AS (
    SELECT campaign_id, cost, unbilled, 0 AS click FROM impressions
    UNION ALL
    SELECT campaign_id, cost, unbilled, 1 FROM clicks WHERE valid
)
SELECT c.id, c.pricing, c.bid::float8 AS bid, c.total_budget::float8 AS total_budget,
       c.daily_budget::float8 AS daily_budget, c.spend_total::float8 AS spend_total,
       (SELECT count(*) FROM decisions d WHERE d.campaign_id = c.id) AS decisions,
       count(*) FILTER (WHERE x.click = 0) AS impressions,
       count(*) FILTER (WHERE x.click = 1) AS valid_clicks,
       coalesce(sum(x.cost), 0)::float8 AS billed,
       count(*) FILTER (WHERE x.unbilled > 0) AS unbilled_deliveries,
       coalesce(sum(x.unbilled), 0)::float8 AS unbilled
FROM campaigns c LEFT JOIN delivered x ON x.campaign_id = c.id
GROUP BY c.id ORDER BY c.id
"""
REPORT_SQL = """
SELECT campaign_id, sum(spend)::float8 AS spend, sum(unbilled)::float8 AS unbilled
FROM daily_stats GROUP BY 1
"""
INVALID_SQL = "SELECT invalid_reason, count(*) AS n FROM clicks WHERE NOT valid GROUP BY 1 ORDER BY 1"


@dataclass
class Row:
    campaign: int
    pricing: str
    bid: float
    total: float
    daily: float | None
    decisions: int
    impressions: int
    valid_clicks: int
    billed: float
    counter: float
    unbilled_deliveries: int
    unbilled: float
    report_spend: float
    report_unbilled: float

    @property
    def budget(self) -> float:
        """What may be billed in this run: the total, or the daily budget when smaller (one day)."""
        return min(self.total, self.daily) if self.daily is not None else self.total

    @property
    def event_price(self) -> float:
        return self.bid if self.pricing == "cpc" else self.bid / 1000.0

    @property
    def bound(self) -> float:
        return max(0.01 * self.budget, self.event_price)

    @property
    def overspend(self) -> float:
        return self.billed - self.budget


async def collect(url: str) -> tuple[list[Row], dict[str, int]]:
    pool = await asyncpg.create_pool(**asyncpg_dsn(url), min_size=1, max_size=2)
    try:
        await rollup_daily_stats(pool, days=1)
        report = {row["campaign_id"]: row for row in await pool.fetch(REPORT_SQL)}
        rows = []
        for row in await pool.fetch(RESULTS_SQL):
            rolled = report.get(row["id"])
            rows.append(
                Row(
                    campaign=row["id"],
                    pricing=row["pricing"],
                    bid=row["bid"],
                    total=row["total_budget"],
                    daily=row["daily_budget"],
                    decisions=row["decisions"],
                    impressions=row["impressions"],
                    valid_clicks=row["valid_clicks"],
                    billed=row["billed"],
                    counter=row["spend_total"],
                    unbilled_deliveries=row["unbilled_deliveries"],
                    unbilled=row["unbilled"],
                    report_spend=rolled["spend"] if rolled else 0.0,
                    report_unbilled=rolled["unbilled"] if rolled else 0.0,
                )
            )
        invalid = {row["invalid_reason"]: row["n"] for row in await pool.fetch(INVALID_SQL)}
    finally:
        await pool.close()
    return rows, invalid


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} cores"


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def markdown(
    args: argparse.Namespace,
    rows: list[Row],
    invalid: dict[str, int],
    traffic: Traffic,
    context: dict[str, str],
) -> str:
    worst = max(rows, key=lambda row: row.overspend)
    consistent = all(
        abs(row.counter - row.billed) < 1e-6
        and abs(row.report_spend - row.billed) < 1e-6
        and abs(row.report_unbilled - row.unbilled) < 1e-6
        for row in rows
    )
    held = all(row.overspend <= row.bound + 1e-9 for row in rows)
    statuses = ", ".join(f"{key} → {n:,}" for key, n in sorted(traffic.statuses.items()))
    lines = [
        "## Budget integrity",
        "",
        f"Machine: {context['machine']}; {context['date']}. {context['postgres']}, {context['database']}.",
        "Both `adserve serve` processes, the client and Postgres share the machine's cores, which other",
        f"work was also using (load average {context['loadavg']} before the run). Run time {context['elapsed']}.",
        "",
        f"`{args.command}`",
        "",
        f"Workload: two `adserve serve` processes (prod settings, jobs off, `serving.token_ttl_s = {args.ttl}`)",
        f"over one fresh database; 10 campaigns on one placement (time zone {context['zone']}, local day",
        f"75-90 % done so pacing does not hide the budgets); {traffic.decisions:,} decision requests alternating",
        f"between the processes, {traffic.served:,} served. For every served decision the impression URL and",
        "then the click URL were fired at a random process with a browser user agent (every decision",
        f"clicked); {traffic.replays['impression']:,} impressions and {traffic.replays['click']:,} clicks fired twice (the",
        f"replay at the other process, half at the same moment); {traffic.groups['late']:,} decisions' URLs held back",
        f"half a TTL (after other traffic spent the budgets); {traffic.groups['expired']:,} held back past the TTL (the",
        "hour of delay, with a short TTL).",
        "",
        "| campaign | pricing, bid | budget total / daily | decisions | impressions | valid clicks "
        "| billed spend | unbilled deliveries (value) | overspend | bound |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        price = f"CPC {row.bid:.2f}" if row.pricing == "cpc" else f"CPM {row.bid:.2f}"
        lines.append(
            f"| {row.campaign} | {price} | {_money(row.total)} / {_money(row.daily)} | {row.decisions:,} "
            f"| {row.impressions:,} | {row.valid_clicks:,} | {row.billed:,.4f} "
            f"| {row.unbilled_deliveries:,} ({row.unbilled:,.4f}) | {row.overspend:+.4f} | {row.bound:.4f} |"
        )
    lines += [
        "",
        f"**Maximum overspend: {worst.overspend:+.4f}** (campaign {worst.campaign}; bound "
        f"max(1 % of the budget, one event's price): {'held' if held else 'NOT held'} for every campaign). "
        f"Billed spend in total {sum(r.billed for r in rows):,.4f} of {sum(r.budget for r in rows):,.2f} "
        f"budgeted; deliveries beyond a budget {sum(r.unbilled_deliveries for r in rows):,} worth "
        f"{sum(r.unbilled for r in rows):,.4f}, recorded and never billed (before this change they were "
        "all charged). Each campaign's spend counter, the sum of its billed rows and the daily rollup "
        f"that reports read {'agree' if consistent else 'DISAGREE'}.",
        "",
        "Reading: billed spend never passes a budget because the log writer bills under the campaign's",
        "row lock and stores what does not fit as unbilled; reservations decide how much is delivered",
        "beyond it. Unbilled deliveries are CPC clicks: every decision here is clicked while a decision",
        "reserves bid × the scorer's P(click), which starts near 1 % and only learns the 100 % rate as",
        "click counts refresh, so CPC campaigns are served past their budget for a while (the worst case",
        "by construction). CPM decisions reserve their full price, so CPM campaigns stop with none; they",
        "end a few per cent under budget because the decisions whose URLs were held past the TTL kept",
        "their reservations until those lapsed, after the last decision.",
        "",
        f"Responses: {statuses}. Invalid clicks stored: "
        + (", ".join(f"{reason} {n:,}" for reason, n in invalid.items()) or "none")
        + f". Client-side transport errors: {sum(traffic.errors.values())}"
        + (f" ({dict(traffic.errors)})" if traffic.errors else "")
        + f" after {traffic.retried} requests retried once (keep-alive races on a loaded machine).",
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replaces "## Budget integrity" in BENCHMARKS.md, or adds it before the generated "## Latest
    raw runs" (or at the end)."""
    text = path.read_text()
    match = re.search(r"^## Budget integrity\n", text, flags=re.M)
    if match is None:
        raw = re.search(r"^## Latest raw runs\n", text, flags=re.M)
        if raw is None:
            path.write_text(text.rstrip("\n") + "\n\n" + section)
        else:
            path.write_text(text[: raw.start()] + section + "\n" + text[raw.start() :])
        return
    after = re.search(r"^## ", text[match.end() :], flags=re.M)
    end = match.end() + after.start() if after else len(text)
    path.write_text(text[: match.start()] + section + ("\n" if after else "") + text[end:])


async def bench(args: argparse.Namespace) -> str:
    loadavg = "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    started = time.monotonic()
    now = datetime.now(UTC)
    zone = late_day_zone(now)
    secret_key = "bench-secret-" + secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="adserve-overspend-"))
    database = await open_database(args.database_url)
    servers: list[Server] = []
    try:
        connection = await asyncpg.connect(**asyncpg_dsn(database.url))
        try:
            version = await connection.fetchval("SHOW server_version")
        finally:
            await connection.close()
        await seed(database.url, zone)
        ports = [free_port(), free_port()]
        for index, port in enumerate(ports):
            env = {
                **os.environ,
                "ADSERVE_ENV": "prod",
                "ADSERVE_SECRET_KEY": secret_key,
                "ADSERVE_DATABASE_URL": database.url,
                "ADSERVE_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "ADSERVE_VAR_DIR": str(work / f"var{index}"),
                "ADSERVE_WRITER_SPOOL_DIR": str(work / "spool"),
                "ADSERVE_MODELS_DIR": str(work / "models"),
                "ADSERVE_JOBS_ENABLED": "false",
                "ADSERVE_SERVING_TOKEN_TTL_S": str(args.ttl),
                "ADSERVE_LOG_LEVEL": "WARNING",
                "ADSERVE_SERVER_RATE_LIMIT_PER_MINUTE": "0",  # the load generator is one client address
            }
            argv = [sys.executable, "-m", "adserve", "serve", "--host", "127.0.0.1", "--port", str(port)]
            servers.append(
                start_server(f"adserve-{index}", [*argv, "--workers", "1"], env, port, "/ready", work)
            )
        print(f"servers up on ports {ports}; campaigns in {zone}", flush=True)
        traffic = await run_traffic(ports, args, random.Random(args.seed))
        rows, invalid = await collect(database.url)
    finally:
        for server in servers:
            server.stop()
        await database.close()
    elapsed = time.monotonic() - started
    context = {
        "machine": machine(),
        "date": f"{now:%Y-%m-%d %H:%M} UTC",
        "postgres": f"PostgreSQL {version}",
        "database": "embedded (pgserver)" if database.embedded else "server on 127.0.0.1:5432",
        "loadavg": loadavg,
        "elapsed": f"{elapsed / 60:.1f} min",
        "zone": zone,
    }
    return markdown(args, rows, invalid, traffic, context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--ttl", type=int, default=180, help="serving.token_ttl_s of both processes (s)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent decision requests")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", default=None, help="a server to create the fresh database on")
    parser.add_argument("--write", action="store_true", help="replace '## Budget integrity' in BENCHMARKS.md")
    args = parser.parse_args()
    args.command = " ".join([".venv/bin/python bench/overspend.py", shlex.join(sys.argv[1:])]).strip()
    text = asyncio.run(bench(args))
    print()
    print(text)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
