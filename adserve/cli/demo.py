"""`adserve demo`: seed the simulated market, print an admin key, serve, drive simulated shoppers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from adserve.cli.common import migrated_url, run_with_database, stop_child, terminated
from adserve.cli.serve import serve_http
from adserve.demo import create_admin_key
from adserve.settings import load_settings
from adserve.sim.live import seed_sim_catalog, visit_speedup
from adserve.sim.world import World, WorldConfig

if TYPE_CHECKING:
    import argparse

    from adserve.db.engine import Database
    from adserve.settings import Settings

__all__ = ["DEMO_ENVIRONMENT", "register"]

# `adserve demo` learns while you watch: rewards close a minute after the decision, the bandit
# learns every 30 s and the interest model retrains every 2.5 min on the last day of logs with a
# short schedule, so within minutes a model with a trained click head serves. Rollups every
# minute keep the dashboard's reports moving. Explicit ADSERVE_* settings in the environment win.
DEMO_ENVIRONMENT = {
    "ADSERVE_JOBS_ENABLED": "true",
    "ADSERVE_BANDIT_REWARD_WINDOW_S": "60",
    "ADSERVE_JOBS_BANDIT_S": "30",
    "ADSERVE_JOBS_RETRAIN_S": "150",
    "ADSERVE_JOBS_RETRAIN_DAYS": "1",
    "ADSERVE_JOBS_RETRAIN_MAX_EPOCHS": "5",
    "ADSERVE_JOBS_RETRAIN_TIMEOUT_S": "600",
    "ADSERVE_JOBS_ROLLUP_RECENT_S": "60",
    # every simulated shopper calls from 127.0.0.1: a per-address limit would throttle the demo
    "ADSERVE_SERVER_RATE_LIMIT_PER_MINUTE": "0",
}


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    # Uvicorn handles SIGTERM (graceful shutdown) and then raises it again; without a handler of
    # ours that second SIGTERM killed the process outright, leaving the shoppers and Postgres up.
    signal.signal(signal.SIGTERM, terminated)
    settings = load_settings(environ={**DEMO_ENVIRONMENT, **os.environ})
    url = migrated_url(settings)
    world = World(WorldConfig(seed=settings.demo.seed))

    async def seed(database: Database) -> tuple[int, str]:
        async with database.sessionmaker() as session:
            # budgets and caps sized for the shoppers' visit rate (see seed_sim_catalog)
            speedup = 1.0 if args.no_sim else visit_speedup(args.sim_rate)
            created = await seed_sim_catalog(session, world, speedup)
            return created, await create_admin_key(session, "demo")

    created, key = run_with_database(url, settings, seed)
    host, port = args.host or settings.server.host, args.port or settings.server.port
    print(f"demo catalogue: {created} creatives created" if created else "demo catalogue already present")
    print(f"admin key (shown once): {key}")
    print(f"admin API: http://{host}:{port}/admin/v1/campaigns  ·  OpenAPI: http://{host}:{port}/schema")
    print(f"shop page: http://{host}:{port}/demo")
    print(
        f"learning: reward window {settings.bandit.reward_window_s:g} s, bandit every "
        f"{settings.jobs.bandit_s:g} s, interest model retrained every {settings.jobs.retrain_s:g} s"
    )
    driver = None
    try:
        if not args.no_sim:
            client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            command = [sys.executable, "-m", "adserve.sim.live", "--url", f"http://{client_host}:{port}",
                       "--key", key, "--seed", str(settings.demo.seed), "--rate", str(args.sim_rate),
                       "--parent-pid", str(os.getpid())]  # fmt: skip
            print(
                f"simulated shoppers: {args.sim_rate:g} pages/s in the background; a progress line every 5 s"
            )
            sys.stdout.flush()
            # the shoppers read each decision's eligible set from the log (their progress line's
            # fair oracle); in the environment, not argv, where `ps` would show a password
            driver = subprocess.Popen(command, env={**os.environ, "ADSERVE_DEMO_DATABASE_URL": url})
        sys.stdout.flush()
        serve_http(settings, host, port, 1)
    except KeyboardInterrupt:
        return 130
    finally:
        # A second Ctrl-C or SIGTERM must not interrupt the clean-up.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if driver is not None:
            stop_child(driver)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="seed a demo catalogue and run the service")
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.add_argument("--no-sim", action="store_true", help="serve without the simulated shoppers")
    demo.add_argument("--sim-rate", type=float, default=20.0, help="simulated pages per second")
    demo.set_defaults(run=cmd_demo)
