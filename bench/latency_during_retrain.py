"""Decision latency while the interest model retrains vs idle, in one run.

    .venv/bin/python bench/latency_during_retrain.py [--users 1000] [--rate 100] [--duration 20] [--write]

1. a fresh database (as bench/serving.py: a server on 127.0.0.1:5432 when one answers, else an
   embedded Postgres), the serving benchmark's catalogue (100 creatives) and N users × 50 events;
2. `adserve serve` (1 worker, jobs disabled: this script plays the scheduler);
3. idle: open-loop decisions at a fixed rate for D seconds (latency from each request's scheduled
   send time);
4. retrain: the retrain job itself (`adserve.jobs.tasks.retrain_interest`: a child process at
   lower priority with `jobs.retrain_threads` torch threads) starts, and the same load runs again
   while it trains; the job is cancelled (its child killed) once the window closes;
5. prints p50/p99 of both and, with --write, replaces "## Learning loop" in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving as base

from adserve.db.engine import asyncpg_dsn, create_engine, sessionmaker_for
from adserve.jobs.tasks import JobContext, retrain_interest
from adserve.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Learning loop"


def replace_section(path: Path, body: str) -> None:
    text = path.read_text()
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        path.write_text(text.rstrip("\n") + f"\n\n{SECTION}\n\n{body}")
        return
    after = text.find("\n## ", start + 1)
    tail = text[after:] if after >= 0 else "\n"
    path.write_text(text[: start + 1] + f"{SECTION}\n\n{body}" + tail)


async def measure(port: int, users: int, rate: float, seconds: float) -> base.RateResult:
    return await base.open_loop(port, "/v1/decisions", users, b'"creative":{', rate, seconds)


def row(label: str, result: base.RateResult) -> str:
    return (
        f"| {label} | {result.sent} | {result.errors} | {result.percentile(50):.1f} | "
        f"{result.percentile(99):.1f} |"
    )


async def bench(args: argparse.Namespace) -> str:
    secret_key = "bench-secret-" + secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="adserve-bench-retrain-"))
    database = await base.open_database(args.database_url)
    server = None
    try:
        await base.seed_catalog(database.url)
        events = await base.seed_users(database.url, secret_key, args.users)
        env = {
            "ADSERVE_ENV": "prod",
            "ADSERVE_SECRET_KEY": secret_key,
            "ADSERVE_DATABASE_URL": database.url,
            "ADSERVE_VAR_DIR": str(work / "var"),
            "ADSERVE_WRITER_SPOOL_DIR": str(work / "spool"),
            "ADSERVE_MODELS_DIR": str(work / "models"),
            "ADSERVE_JOBS_ENABLED": "false",
            "ADSERVE_SERVER_RATE_LIMIT_PER_MINUTE": "0",  # the load generator is one client address
        }
        os.environ.update(env)  # the training child reads its settings from the environment
        port = base.free_port()
        server_env = {**os.environ, "ADSERVE_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}"}
        argv = [sys.executable, "-m", "adserve", "serve", "--host", "127.0.0.1", "--port", str(port)]
        server = base.start_server("adserve", argv, server_env, port, "/ready", work)
        settings = load_settings()
        await measure(port, args.users, args.rate, 3)  # warm-up

        idle = await measure(port, args.users, args.rate, args.duration)
        pool = await asyncpg.create_pool(**asyncpg_dsn(database.url), min_size=1, max_size=2)
        engine = create_engine(database.url, settings)
        context = JobContext(database.url, settings, pool, sessionmaker_for(engine))
        retrain = asyncio.create_task(retrain_interest(context))
        started = time.perf_counter()
        busy = await measure(port, args.users, args.rate, args.duration)
        trained_throughout = not retrain.done()
        if retrain.done() and retrain.exception():
            raise RuntimeError(f"retrain failed: {retrain.exception()}")
        retrain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrain
        await pool.close()
        await engine.dispose()
        window = time.perf_counter() - started
        ratio = busy.percentile(99) / idle.percentile(99)
        verdict = "within" if ratio <= 1.5 else "NOT within"
        lines = [
            f"Decision latency with an interest-model retrain running vs idle, one run of "
            f"`bench/latency_during_retrain.py` on {datetime.now(UTC):%Y-%m-%d} "
            f"({base.machine()}; Postgres {'embedded' if database.embedded else 'on 127.0.0.1:5432'}; "
            f"{args.users} users, {events:,} behaviour events).",
            "",
            f"Open-loop client at {args.rate:.0f} decisions/s for {args.duration:.0f} s per phase, latency from "
            "each request's scheduled send time; `adserve serve` with 1 worker. The retrain is the scheduled "
            "job itself: a child process (`nice` 19, `jobs.retrain_threads` = "
            f"{settings.jobs.retrain_threads} torch thread) training on the whole window"
            f"{', still training when the window closed' if trained_throughout else ' (it finished early)'}.",
            "",
            "| phase | requests | errors | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
            row("idle", idle),
            row("retraining", busy),
            "",
            f"Errors by kind: idle {idle.error_kinds or 'none'}, retraining {busy.error_kinds or 'none'}. "
            f"p99 during retrain / idle = {ratio:.2f} ({verdict} the 1.5× goal; window {window:.0f} s). "
            "Client, server, Postgres and trainer share this machine's cores.",
            "",
        ]
        return "\n".join(lines)
    finally:
        if server is not None:
            server.stop()
        await database.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="a Postgres server to create the bench database on")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--write", action="store_true", help=f"replace '{SECTION}' in BENCHMARKS.md")
    args = parser.parse_args()
    section = asyncio.run(bench(args))
    print(section)
    if args.write:
        replace_section(ROOT / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
