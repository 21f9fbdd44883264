"""The `adserve` command line: serve, demo, migrate, keys …"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from adserve.errors import UserError
from adserve.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["main"]

log = logging.getLogger("adserve")


def app_from_env():
    """Uvicorn worker factory: each worker process builds its app from the environment."""
    from adserve.app import create_app

    return create_app(load_settings())


def _migrate(settings: Settings) -> str:
    """Upgrades the schema to head; returns the database URL (starting the embedded server if needed)."""
    from adserve.db import migrate
    from adserve.db.engine import resolve_database_url

    url, _embedded = resolve_database_url(settings)
    migrate.upgrade(url)
    return url


def _with_session(settings: Settings, url: str, work: Callable[[AsyncSession], Awaitable[object]]) -> object:
    from adserve.db.engine import create_engine, sessionmaker_for

    async def run() -> object:
        engine = create_engine(url, settings)
        try:
            async with sessionmaker_for(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    url = _migrate(settings)
    # Workers are separate processes: hand them the resolved URL so they share this database.
    os.environ["ADSERVE_DATABASE_URL"] = url
    default_public = f"http://127.0.0.1:{settings.server.port}"
    if "ADSERVE_SERVER_PUBLIC_URL" not in os.environ and settings.server.public_url == default_public:
        # Tracking URLs must point at the port actually served when --host/--port override it.
        public_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        os.environ["ADSERVE_SERVER_PUBLIC_URL"] = f"http://{public_host}:{port}"
    uvicorn.run(
        "adserve.__main__:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    _serve(
        settings,
        args.host or settings.server.host,
        args.port or settings.server.port,
        args.workers or settings.server.workers,
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.jobs.scheduler import run_worker

    signal.signal(signal.SIGTERM, _terminated)
    url = _migrate(settings)
    asyncio.run(run_worker(url, settings))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _migrate(settings)
    print("database schema is at head")
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.admin import schemas
    from adserve.admin.services import ApiKeyService

    url = _migrate(settings)
    body = schemas.ApiKeyCreate(role=args.role, advertiser_id=args.advertiser, name=args.name or "")

    async def create(session: AsyncSession) -> object:
        key, row = await ApiKeyService(session, None).create(body)
        return key, row.id

    key, key_id = _with_session(settings, url, create)  # type: ignore[misc]
    print(f"created {args.role} key #{key_id}; it is shown only once:")
    print(key)
    return 0


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


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM ends a command the way Ctrl-C does: by unwinding, so child processes are stopped
    and the embedded Postgres is shut down (pgserver stops it at interpreter exit). Uvicorn
    handles SIGTERM (graceful shutdown) and then raises it again; without a handler of ours that
    second SIGTERM killed the process outright, leaving Postgres up."""
    raise SystemExit(128 + signum)


def _stop_child(child: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.demo import create_admin_key
    from adserve.sim.live import seed_sim_catalog
    from adserve.sim.world import World, WorldConfig

    # Uvicorn handles SIGTERM (graceful shutdown) and then raises it again; without a handler of
    # ours that second SIGTERM killed the process outright, leaving the shoppers and Postgres up.
    signal.signal(signal.SIGTERM, _terminated)
    for name, value in DEMO_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    url = _migrate(settings)
    world = World(WorldConfig(seed=settings.demo.seed))

    async def seed(session: AsyncSession) -> object:
        created = await seed_sim_catalog(session, world)
        return created, await create_admin_key(session, "demo")

    created, key = _with_session(settings, url, seed)  # type: ignore[misc]
    host, port = args.host or settings.server.host, args.port or settings.server.port
    print(f"demo catalogue: {created} creatives created" if created else "demo catalogue already present")
    print(f"admin key (shown once): {key}")
    print(f"admin API: http://{host}:{port}/admin/v1/campaigns  ·  OpenAPI: http://{host}:{port}/schema")
    print(f"shop page: http://{host}:{port}/demo")
    print(
        "learning: reward window {ADSERVE_BANDIT_REWARD_WINDOW_S} s, bandit every {ADSERVE_JOBS_BANDIT_S} s, "
        "interest model retrained every {ADSERVE_JOBS_RETRAIN_S} s".format(**os.environ)
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
            driver = subprocess.Popen(command)
        sys.stdout.flush()
        _serve(settings, host, port, 1)
    except KeyboardInterrupt:
        return 130
    finally:
        # A second Ctrl-C or SIGTERM must not interrupt the clean-up.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if driver is not None:
            _stop_child(driver)
    return 0


def _database_url(settings: Settings) -> str:
    from adserve.db.engine import resolve_database_url

    url, _embedded = resolve_database_url(settings)
    return url


def cmd_import_events(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.learning.services import import_events
    from adserve.serving.identity import UserKeys

    url = _migrate(settings)
    stored = asyncio.run(import_events(url, Path(args.file), UserKeys(settings.secret_key)))
    print(f"imported {stored} new behaviour events from {args.file}")
    return 0


def _register(settings: Settings, url: str, kind: str, path: Path, metrics: dict, promote: bool) -> str:
    """Records a new version; the first version of a kind becomes champion at once."""
    from adserve.learning.registry import Registry

    async def register(session: AsyncSession) -> object:
        registry = Registry(session)
        row = await registry.register(kind, path.name, str(path), metrics)  # type: ignore[arg-type]
        if promote or await registry.champion(kind) is None:  # type: ignore[arg-type]
            await registry.promote(kind, path.name, "promoted from the command line")  # type: ignore[arg-type]
            return "champion"
        return row.status

    return str(_with_session(settings, url, register))


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.interest.evaluation import format_report
    from adserve.learning.services import load_training_data, train_interest_version

    url = _migrate(settings)
    data = asyncio.run(load_training_data(url, args.days))
    if not data.sequences:
        print(
            "adserve: no behaviour events to train on (import some with `adserve import events FILE`)",
            file=sys.stderr,
        )
        return 2
    print(
        f"training on {sum(map(len, data.sequences.values()))} events of {len(data.sequences)} users "
        f"and {len(data.click_examples)} impressions"
    )
    path, metrics = train_interest_version(data, settings, seed=args.seed, max_epochs=args.epochs)
    status = _register(settings, url, "interest", path, metrics, args.promote)
    print(format_report(metrics))
    print(f"wrote {path} ({status})")
    return 0


def _latest_interest_version(settings: Settings, url: str) -> str:
    from adserve.learning.registry import Registry

    async def latest(session: AsyncSession) -> object:
        rows = await Registry(session).list("interest", limit=1)
        champion = await Registry(session).champion("interest")
        return (champion or (rows[0] if rows else None)).path if (champion or rows) else None

    path = _with_session(settings, url, latest)
    if path is None:
        raise UserError("no interest model yet: run `adserve train` first")
    return str(path)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.interest.evaluation import format_report
    from adserve.interest.training import evaluate_checkpoint
    from adserve.learning.services import load_training_data

    url = _migrate(settings)
    path = args.model or _latest_interest_version(settings, url)
    data = asyncio.run(load_training_data(url, args.days))
    report = evaluate_checkpoint(path, data.sequences, data.click_examples, precision=args.precision)
    print(f"model {path}")
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


def cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.db.engine import open_database
    from adserve.learning.learner import learn_once
    from adserve.learning.rewards import join_rewards_once

    url = _migrate(settings)

    async def learn():
        async with open_database(url, settings) as database:
            joined = await join_rewards_once(database, reward_window_s=settings.bandit.reward_window_s)
            return joined, await learn_once(database, settings, seed=args.seed)

    joined, step = asyncio.run(learn())
    print(
        f"reward join: {joined.joined} decisions labelled (reward window {settings.bandit.reward_window_s:g} s)"
    )
    row = step.registered
    if row is None:
        print("nothing new to learn (no un-learned rewarded decisions, or another learner is running)")
        return 0
    metrics = row.metrics
    print(
        f"learned {metrics['examples']} decisions ({metrics['clicks']} clicks, revenue {metrics['revenue']:.4f}) "
        f"on top of {metrics['base_version'] or 'a fresh policy'}; "
        f"{metrics['examples_learned']} examples in this model"
    )
    for name, gate in (metrics.get("gate") or {}).items():
        snips = gate["snips_revenue"]
        print(f"  gate {name:8} SNIPS revenue/decision {snips['value']} [{snips['low']}, {snips['high']}]")
    print(f"bandit {row.version}: {row.status} ({row.reason}) at {row.path}")
    return 0


def cmd_ope(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.bandit.obd import format_table, run_obd

    if not args.obd:
        return _ope_logs(args, settings)
    result = run_obd(Path(args.obd), seed=args.seed)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
        print(f"wrote {args.json}")
    return 0


def _ope_logs(args: argparse.Namespace, settings: Settings) -> int:
    """`adserve ope` without --obd: the bandit's logged decisions in Postgres (last --days)."""
    from datetime import UTC, datetime, timedelta

    from adserve.bandit.ope import format_table
    from adserve.db.engine import open_database
    from adserve.learning.ope import ope_from_logs

    url = _migrate(settings)
    until = datetime.now(UTC)
    since = until - timedelta(days=args.days)

    async def evaluate():
        async with open_database(url, settings) as database:
            return await ope_from_logs(
                database, since, until, args.challenger, args.interest_model, seed=args.seed
            )

    report = asyncio.run(evaluate())
    print(f"{report.n} rewarded decisions from {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC")
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.admin.audit import audited_champion_change
    from adserve.learning.registry import Registry

    url = _migrate(settings)

    async def act(session: AsyncSession) -> object:
        if args.models_command == "promote":
            await audited_champion_change(
                session, None, args.kind, "promote", lambda r: r.promote(args.kind, args.version, args.reason)
            )
        elif args.models_command == "rollback":
            await audited_champion_change(
                session, None, args.kind, "rollback", lambda r: r.rollback(args.kind, args.reason)
            )
        registry = Registry(session)
        return [(r.kind, r.version, r.status, r.reason or "") for r in await registry.list(args.kind)]

    for kind, version, status, reason in _with_session(settings, url, act):  # type: ignore[union-attr]
        print(f"{kind:8} {version:28} {status:9} {reason}")
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.sim.compare import (
        CompareConfig,
        compare,
        format_table,
        load_runs,
        summary_rows,
        write_outputs,
    )

    if not args.compare:
        print("adserve: simulate needs --compare (the in-process policy comparison)", file=sys.stderr)
        return 2
    policies = tuple(args.policies.split(",")) if args.policies else None
    extra = {"policies": policies} if policies else {}
    config = CompareConfig.from_settings(settings, decisions=args.decisions, seed=args.seed, **extra)
    if args.merge:
        runs = load_runs([Path(d) for d in args.merge])
    else:
        runs = compare(config, progress=lambda line: print(line, flush=True))
    paths = write_outputs(runs, config, Path(args.out))
    print(format_table(summary_rows(runs)))
    print(f"wrote {paths['csv']}, {paths['png']} and {paths['summary']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adserve", description="Self-hosted ad-targeting service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service (migrates first)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(run=cmd_serve)

    demo = commands.add_parser("demo", help="seed a demo catalogue and run the service")
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.add_argument("--no-sim", action="store_true", help="serve without the simulated shoppers")
    demo.add_argument("--sim-rate", type=float, default=20.0, help="simulated pages per second")
    demo.set_defaults(run=cmd_demo)

    worker = commands.add_parser("worker", help="run the scheduled jobs only (migrates first)")
    worker.set_defaults(run=cmd_worker)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(run=cmd_migrate)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", required=True, choices=["admin", "manager", "viewer", "site"])
    create.add_argument("--advertiser", type=int, help="advertiser id (manager and viewer keys)")
    create.add_argument("--name", help="a label for the key")
    create.set_defaults(run=cmd_keys_create)

    importer = commands.add_parser("import", help="import historical data").add_subparsers(
        dest="import_command", required=True
    )
    events = importer.add_parser("events", help="behaviour events from CSV or Parquet")
    events.add_argument("file", help="columns user_id, item_id, timestamp [, type, category, price]")
    events.set_defaults(run=cmd_import_events)

    train = commands.add_parser("train", help="train an interest model from Postgres")
    train.add_argument("--days", type=float, help="rolling window of logs (default: all)")
    train.add_argument("--epochs", type=int, help="maximum epochs (default: early stopping decides)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--promote", action="store_true", help="make the new version champion")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate an interest model beside baselines")
    evaluate.add_argument("--model", help="version folder (default: the champion, else the newest)")
    evaluate.add_argument("--days", type=float)
    evaluate.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    evaluate.add_argument("--json", help="also write the report as JSON here")
    evaluate.set_defaults(run=cmd_evaluate)

    ope = commands.add_parser("ope", help="off-policy evaluation")
    ope.add_argument("--obd", help="an Open Bandit Dataset campaign folder")
    ope.add_argument("--json", help="also write the estimates as JSON here")
    ope.add_argument("--seed", type=int, default=0)
    ope.add_argument(
        "--days", type=float, default=7.0, help="without --obd: logged decisions of the last N days"
    )
    ope.add_argument("--challenger", help="without --obd: a saved bandit policy folder to evaluate")
    ope.add_argument("--interest-model", help="without --obd: an interest model folder as DR's reward model")
    ope.set_defaults(run=cmd_ope)

    learn = commands.add_parser("learn", help="bandit: reward join and one learning step")
    learn.add_argument("--seed", type=int, default=0)
    learn.set_defaults(run=cmd_learn)

    models = commands.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True
    )
    listing = models.add_parser("list")
    listing.add_argument("--kind", choices=["interest", "bandit"])
    promote = models.add_parser("promote")
    promote.add_argument("kind", choices=["interest", "bandit"])
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by an operator")
    rollback = models.add_parser("rollback")
    rollback.add_argument("kind", choices=["interest", "bandit"])
    rollback.add_argument("--reason", default="rolled back by an operator")
    for sub in (listing, promote, rollback):
        sub.set_defaults(run=cmd_models)

    simulate = commands.add_parser("simulate", help="run policies against the simulated market in-process")
    simulate.add_argument("--compare", action="store_true", help="every policy on the same world and seed")
    simulate.add_argument("--decisions", type=int, default=200_000)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--out", default="bench/results/sim", help="folder for the CSV, PNG and summary")
    simulate.add_argument("--policies", help="comma-separated subset (default: all)")
    simulate.add_argument("--merge", nargs="+", metavar="DIR", help="combine the runs saved in these folders")
    simulate.set_defaults(run=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"adserve: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("pgserver", "alembic", "apscheduler"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return args.run(args, settings)
    except UserError as exc:
        print(f"adserve: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
