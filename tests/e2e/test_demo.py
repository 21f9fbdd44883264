"""`adserve demo`'s simulated shoppers against a real server: progress lines, served decisions."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from adserve.db.engine import create_engine, sessionmaker_for
from adserve.db.migrate import upgrade
from adserve.demo import create_admin_key
from adserve.sim.live import seed_sim_catalog
from adserve.sim.world import World, WorldConfig
from tests.e2e.conftest import ROOT, run_server

if TYPE_CHECKING:
    from pathlib import Path

    from adserve.settings import Settings

pytestmark = pytest.mark.slow

LINE = re.compile(
    r"^\[sim\] decisions (?P<n>[\d,]+) · CTR (?P<ctr>[\d.]+)% · last \d+ [\d.]+% · "
    r"oracle (?P<oracle>[\d.]+)% · uniform (?P<uniform>[\d.]+)% · interest \S+.* · bandit \S+"
)


async def test_demo_driver_prints_progress_against_a_real_server(
    fresh_database, settings: Settings, tmp_path: Path
) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    world = World(WorldConfig(seed=7))
    engine = create_engine(url, settings)
    try:
        async with sessionmaker_for(engine)() as session:
            assert await seed_sim_catalog(session, world) == len(world.creatives)
            key = await create_admin_key(session, "demo-test")
            assert await seed_sim_catalog(session, world) == 0  # idempotent

        with run_server(url, tmp_path) as server:
            command = [sys.executable, "-m", "adserve.sim.live", "--url", server.url, "--key", key,
                       "--rate", "40", "--every", "2", "--max-seconds", "14"]  # fmt: skip
            done = await asyncio.to_thread(
                subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=45
            )
            assert done.returncode == 0, done.stderr[-3000:]
            lines = [line for line in done.stdout.splitlines() if line.startswith("[sim] decisions")]
            assert len(lines) >= 3, done.stdout + done.stderr[-3000:]
            last = LINE.match(lines[-1])
            assert last, lines[-1]
            assert int(last["n"].replace(",", "")) > 20
            assert float(last["oracle"]) > float(last["uniform"]) > 0
            assert "errors" not in lines[-1], lines[-1]

        async with sessionmaker_for(engine)() as session:
            decisions = (await session.execute(text("SELECT count(*) FROM decisions"))).scalar()
            impressions = (await session.execute(text("SELECT count(*) FROM impressions"))).scalar()
        assert decisions > 20 and impressions > 20
    finally:
        await engine.dispose()
