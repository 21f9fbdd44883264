"""`adserve demo` against a real server: its simulated shoppers behave like browsers (every click
the simulator draws is a valid click in Postgres), its progress line shows what serves, it learns
on a short cadence, and SIGTERM or SIGINT stops every process it started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import psutil
import pytest
from sqlalchemy import text

from adserve.db.engine import asyncpg_dsn, create_engine, sessionmaker_for
from adserve.db.migrate import upgrade
from adserve.demo import create_admin_key
from adserve.sim.live import real_time_world, seed_sim_catalog, visit_speedup
from adserve.sim.traffic import Traffic
from adserve.sim.world import World, WorldConfig
from tests.e2e.conftest import ROOT, free_port, run_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from adserve.settings import Settings

pytestmark = pytest.mark.slow

LINE = re.compile(
    r"^\[sim\] decisions (?P<n>[\d,]+) · CTR (?P<ctr>[\d.]+)% "
    r"\(oracle (?P<oracle>[\d.]+)%, uniform (?P<uniform>[\d.]+)%\) · "
    r"last (?P<window>[\d,]+) (?P<last>[\d.]+)% \(expected (?P<last_expected>[\d.]+)%, oracle (?P<last_oracle>[\d.]+)%, "
    r"uniform (?P<last_uniform>[\d.]+)%\)"
    r"(?: · among the (?P<eligible_n>[\d,]+) decisions' eligible sets: oracle (?P<eligible_oracle>[\d.]+)%, "
    r"uniform (?P<eligible_uniform>[\d.]+)%, expected [\d.]+× oracle, [\d.]+× uniform"
    r"; revenue per decision (?P<revenue>[\d.]+) \(oracle (?P<revenue_oracle>[\d.]+), "
    r"uniform (?P<revenue_uniform>[\d.]+)\), [\d.]+× revenue oracle, [\d.]+× uniform"
    r"; the revenue oracle's CTR (?P<revenue_oracle_ctr>[\d.]+)%, [\d.]+× oracle"
    r"| · eligible sets not read[^·]*)?"
    r" · clicks drawn (?P<drawn>[\d,]+), fired (?P<fired>[\d,]+) · "
    r"service (?P<impressions>[\d,]+) impressions, (?P<valid>[\d,]+) valid clicks \([\d.]+%\), "
    r"spend [\d,.]+ · serving scorer (?P<scorer>\S+) (?P<scorer_version>\S+)(?P<head> \(click head(?: trained, weight 0)?\))? · "
    r"policy (?P<policy>\S+) (?P<policy_version>\S+)(?: \([\d,]+ learned\))? · objective (?P<objective>\w+)"
)
STOPPED = re.compile(
    r"^\[sim\] stopped: decisions [\d,]+ · clicks drawn (?P<drawn>[\d,]+), fired (?P<fired>[\d,]+)", re.M
)


def number(value: str) -> int:
    return int(value.replace(",", ""))


def progress_lines(output: str) -> list[re.Match[str]]:
    lines = [line for line in output.splitlines() if line.startswith("[sim] decisions")]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m][:3]
    return matches  # type: ignore[return-value]


async def click_counts(url: str) -> dict[str | None, int]:
    """Stored clicks by invalid reason (None: valid)."""
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT invalid_reason, count(*) AS n FROM clicks GROUP BY 1")
    finally:
        await connection.close()
    return {row["invalid_reason"]: row["n"] for row in rows}


async def job_history(url: str) -> str:
    """Every scheduled job run so far, one line each: what a failed wait shows, so a retrain
    slower than its cadence tells itself apart from one the gate rejected."""
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT job, started_at, finished_at, status, error, figures FROM job_runs ORDER BY id"
        )
    finally:
        await connection.close()
    lines = []
    for row in rows:
        took = (row["finished_at"] - row["started_at"]).total_seconds() if row["finished_at"] else None
        figures = json.loads(row["figures"]) if isinstance(row["figures"], str) else row["figures"]
        outcome = figures.get("reason") or figures.get("skipped") or row["error"] or ""
        lines.append(
            f"{row['started_at']:%H:%M:%S} {row['job']} {row['status']}"
            + (f" in {took:.0f} s" if took is not None else "")
            + (f": {str(outcome)[:200]}" if outcome else "")
        )
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def migrated_database(fresh_database, settings: Settings) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A fresh, migrated database and an engine on it (disposed on exit)."""
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url, settings)
    try:
        yield url, engine
    finally:
        await engine.dispose()


async def test_demo_driver_clicks_are_valid_and_its_progress_line_shows_what_serves(
    fresh_database, settings: Settings, tmp_path: Path
) -> None:
    world = World(WorldConfig(seed=7))
    async with migrated_database(fresh_database, settings) as (url, engine):
        async with sessionmaker_for(engine)() as session:
            assert await seed_sim_catalog(session, world) == len(world.creatives)
            key = await create_admin_key(session, "demo-test")
            assert await seed_sim_catalog(session, world) == 0  # idempotent

        with run_server(url, tmp_path) as server:
            serving = httpx.get(f"{server.url}/ready", timeout=5.0).json()["serving"]
            command = [sys.executable, "-m", "adserve.sim.live", "--url", server.url, "--key", key,
                       "--rate", "40", "--every", "2", "--max-seconds", "14"]  # fmt: skip
            done = await asyncio.to_thread(
                subprocess.run,
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=150,
                env={**os.environ, "ADSERVE_DEMO_DATABASE_URL": url},
            )
            assert done.returncode == 0, done.stderr[-3000:]
            lines = progress_lines(done.stdout)
            assert len(lines) >= 3, done.stdout + done.stderr[-3000:]
            last = lines[-1]
            assert number(last["n"]) > 20
            assert float(last["oracle"]) > float(last["uniform"]) > 0
            assert "errors" not in last.string, last.string
            # after the drain every decision's row is read: its eligible set holds the served ad
            # and is a subset of what the targeting allows, so its oracle lies between the two
            assert number(last["eligible_n"]) == number(last["window"]), last.string
            assert (
                float(last["last_expected"]) <= float(last["eligible_oracle"]) <= float(last["last_oracle"])
            )
            assert float(last["eligible_uniform"]) > 0
            # the same for expected revenue, judged against the revenue oracle of the same sets
            assert 0 < float(last["revenue_uniform"]) <= float(last["revenue_oracle"])
            assert float(last["revenue"]) <= float(last["revenue_oracle"])
            # the revenue oracle's pick is one of the set's creatives: its CTR is at most the CTR oracle's
            assert 0 < float(last["revenue_oracle_ctr"]) <= float(last["eligible_oracle"]), last.string
            assert last["objective"] == serving["policy"]["objective"] == settings.bandit.objective
            # what the pipeline serves, read from /ready's `serving` object
            assert (last["scorer"], last["scorer_version"]) == (
                serving["scorer"]["kind"],
                serving["scorer"]["version"],
            )
            assert (last["policy"], last["policy_version"]) == (
                serving["policy"]["kind"],
                serving["policy"]["version"],
            )

        drawn = number(last["drawn"])
        assert drawn > 0, last.string  # 14 s at 40 pages/s draws clicks from the oracle
        assert number(last["fired"]) == drawn  # the run drains its queue of pending clicks
        # the service's own count, as of the last line, at most the last few writes behind
        assert drawn - 3 <= number(last["valid"]) <= drawn
        # the server has stopped (its writer flushed): the browser-like shopper's clicks all count
        assert await click_counts(url) == {None: drawn}
        async with sessionmaker_for(engine)() as session:
            decisions = (await session.execute(text("SELECT count(*) FROM decisions"))).scalar()
            impressions = (await session.execute(text("SELECT count(*) FROM impressions"))).scalar()
        assert impressions == number(last["n"]) and decisions >= impressions


async def test_demo_catalogue_budgets_and_caps_follow_the_shoppers_visit_rate(
    fresh_database, settings: Settings
) -> None:
    world = World(WorldConfig(seed=7))
    async with (
        migrated_database(fresh_database, settings) as (_, engine),
        sessionmaker_for(engine)() as session,
    ):
        assert await seed_sim_catalog(session, world, visit_speedup=40.0) == len(world.creatives)
        rows = (
            await session.execute(
                text("SELECT name, daily_budget, total_budget, frequency_window_s FROM campaigns")
            )
        ).all()
    stored = {row.name: row for row in rows}
    capped = 0
    for campaign in world.campaigns:
        row = stored[campaign.name]
        assert float(row.daily_budget) == pytest.approx(campaign.daily_budget * 40, abs=0.01)
        assert float(row.total_budget) == pytest.approx(campaign.total_budget * 40, abs=0.01)
        if campaign.frequency_cap:
            capped += 1
            assert row.frequency_window_s == round(campaign.frequency_window_s / 40)
    assert capped > 0


def test_the_demo_world_runs_on_the_wall_clock_at_the_asked_rate() -> None:
    now = 1_790_000_000.0  # any instant: the rate is set for its hour
    world = real_time_world(7, rate=20.0, now=now)
    assert world.catalogue() == World(WorldConfig(seed=7)).catalogue()  # the same shop
    assert visit_speedup(20.0, now) == pytest.approx(
        world.config.sessions_per_user_per_day / WorldConfig().sessions_per_user_per_day
    )
    times = []
    for page in Traffic(world):
        if page.ts >= now + 120:
            break
        times.append(page.ts)
    live = [t for t in times if t >= now]  # the minutes after the shop's history
    assert times[0] < now - 600  # the shop's history starts before the ad server does
    assert 15.0 <= len(live) / 120.0 <= 25.0, len(live) / 120.0


# -- `adserve demo` itself ------------------------------------------------------------------------


class Demo:
    def __init__(self, root: Path, port: int, process: subprocess.Popen, log_path: Path) -> None:
        self.root, self.port, self.process, self.log_path = root, port, process, log_path
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(f"{self.url}/ready", timeout=2.0)
            if response.status_code == 200:
                return response.json()
        return None

    def wait_for(self, condition, timeout_s: float, what: str, explain=None) -> Any:
        """Polls `condition` once a second until it is truthy; on timeout the failure shows the
        log's tail and what `explain()` returns."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"adserve demo exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            value = condition()
            if value:
                return value
            time.sleep(1.0)
        detail = f"\n{explain()}" if explain is not None else ""
        raise AssertionError(f"no {what} after {timeout_s:.0f} s:{detail}\n{self.log()[-4000:]}")

    def processes(self) -> list[psutil.Process]:
        """The demo's descendants, and every process that runs on its temporary folder (the
        embedded Postgres daemonises: it is nobody's child)."""
        found = {p.pid: p for p in psutil.Process(self.process.pid).children(recursive=True)}
        for process in psutil.process_iter(attrs=["cmdline"]):
            if str(self.root) in " ".join(process.info["cmdline"] or []):
                found[process.pid] = process
                with contextlib.suppress(psutil.Error):
                    found |= {child.pid: child for child in process.children(recursive=True)}
        found.pop(self.process.pid, None)
        return list(found.values())


@contextlib.contextmanager
def run_demo(extra_env: dict[str, str], sim_rate: float = 10.0) -> Iterator[Demo]:
    # Not under pytest's basetemp: the `pgserver` system user (Postgres as root) must read it.
    root = Path(tempfile.mkdtemp(prefix="adserve-demo-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADSERVE_JOBS_")}
    env.pop("ADSERVE_DATABASE_URL", None)
    env |= {
        "ADSERVE_DATABASE_EMBEDDED_DIR": str(root / "pg"),
        "ADSERVE_VAR_DIR": str(root / "var"),
        "ADSERVE_WRITER_SPOOL_DIR": str(root / "spool"),
        "ADSERVE_MODELS_DIR": str(root / "models"),
        "ADSERVE_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "ADSERVE_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    log_path = root / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "adserve", "demo", "--port", str(port), "--sim-rate", str(sim_rate)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    demo = Demo(root, port, process, log_path)
    seen: list[psutil.Process] = []
    try:
        yield demo
    finally:
        with contextlib.suppress(psutil.Error):
            seen = demo.processes()
        if process.poll() is None:
            process.kill()
            process.wait()
        for leftover in seen:  # never leave a process behind, even when the test failed
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_demo_stops_the_shoppers_and_the_embedded_postgres(signum: int) -> None:
    with run_demo({}, sim_rate=5.0) as demo:
        demo.wait_for(
            lambda: "[sim] decisions" in demo.log() and demo.ready(), 180, "progress line from the shoppers"
        )
        children = demo.processes()
        commands = [" ".join(p.cmdline()) for p in children]
        assert any("adserve.sim.live" in c for c in commands), commands
        assert any("postgres" in c and str(demo.root) in c for c in commands), commands

        demo.process.send_signal(signum)
        try:
            returncode = demo.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"adserve demo did not stop within 60 s:\n{demo.log()[-4000:]}")
        # unwound (exit status 128 + signal, or 130 for Ctrl-C), not killed by the signal
        assert returncode in (0, 128 + signum), (returncode, demo.log()[-3000:])
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [" ".join(p.cmdline()) for p in alive if p.is_running()]
        assert "[sim] stopped" in demo.log()


def test_demo_learns_on_a_short_cadence_and_its_clicks_are_valid(postgres_server_url: str) -> None:
    """The mission, in minutes: an interest model with a trained click head and a learned VW
    policy both serve, and every click the shoppers fired is a valid click in Postgres."""

    async def fresh() -> tuple[str, str]:
        name = f"adserve_demo_{os.getpid()}_{int(time.time())}"
        connection = await asyncpg.connect(**asyncpg_dsn(postgres_server_url))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        base, _, query = postgres_server_url.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else ""), name

    url, name = asyncio.run(fresh())
    cadence = {
        "ADSERVE_DATABASE_URL": url,
        "ADSERVE_SERVING_SCORER": "interest",  # the default; configs/test.toml sets empirical
        "ADSERVE_BANDIT_REWARD_WINDOW_S": "20",
        "ADSERVE_JOBS_BANDIT_S": "10",
        "ADSERVE_JOBS_RETRAIN_S": "60",
        "ADSERVE_JOBS_RETRAIN_MAX_EPOCHS": "3",
        "ADSERVE_SERVING_MODEL_POLL_S": "2",
    }
    try:
        with run_demo(cadence, sim_rate=20.0) as demo:

            def both_serve() -> dict[str, Any] | None:
                serving = (demo.ready() or {}).get("serving") or {}
                scorer, policy = serving.get("scorer") or {}, serving.get("policy") or {}
                interest = scorer.get("kind") == "interest" and scorer.get("click_trained") is True
                vw = policy.get("kind") == "vw" and policy.get("version") not in (None, "untrained")
                return serving if interest and vw else None

            serving = demo.wait_for(
                both_serve,
                540,
                "interest model with a click head and a VW policy serving",
                explain=lambda: f"serving: {demo.ready()}\njob runs:\n{asyncio.run(job_history(url))}",
            )
            demo.wait_for(
                lambda: progress_lines(demo.log())[-1]["head"], 30, "progress line with the click head"
            )
            last = progress_lines(demo.log())[-1]
            assert last["scorer"] == "interest" and last["policy"] == "vw", last.string
            assert serving["champions_loaded"].get("interest") == serving["scorer"]["version"]
            # a whole window of 2,000 decisions served by the learned models beats uniform random
            served_from = number(last["n"])
            demo.wait_for(
                lambda: number(progress_lines(demo.log())[-1]["n"]) >= served_from + 2_000 or None,
                240,
                "2,000 decisions served by the learned models",
            )
            window = progress_lines(demo.log())[-1]
            print(window.string)  # the figure in CI's log (pytest -rP), pass or fail
            assert float(window["last_expected"]) > float(window["last_uniform"]), window.string
            demo.process.send_signal(signal.SIGTERM)
            demo.process.wait(timeout=60)
            stopped = STOPPED.search(demo.log())
            assert stopped, demo.log()[-3000:]
        # every click the shoppers fired counts; none was judged a bot or early
        assert asyncio.run(click_counts(url)) == {None: number(stopped["fired"])}
        assert number(stopped["fired"]) > 0
    finally:

        async def drop() -> None:
            connection = await asyncpg.connect(**asyncpg_dsn(postgres_server_url))
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()

        asyncio.run(drop())
