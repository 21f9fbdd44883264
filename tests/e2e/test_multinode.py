"""The compose topology as processes: one migration, two `adserve serve` nodes and one
`adserve worker` on one Postgres database. Traffic is spread over both nodes as a balancer would;
one node is SIGKILLed mid-load and the balancer's retries go to the other, which must answer
every request; frequency caps and budgets hold across nodes; one process leads the jobs; every
decision answered 2xx has its row in Postgres, except, by the decision log's contract, those the
killed node answered within its last flush window (queued, not yet committed)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from adserve.db.engine import asyncpg_dsn, create_engine, sessionmaker_for
from adserve.jobs.scheduler import LEADER_LOCK_KEY, current_leader
from adserve.settings import load_settings
from tests.e2e.conftest import ROOT, run_server
from tests.integration.serving.catalog_builder import CatalogBuilder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

USERS = 60
REQUESTS_PER_USER = 4  # each user's requests in order, alternating nodes; users run concurrently
CONCURRENCY = 6
KILL_AFTER = USERS * REQUESTS_PER_USER // 3  # responses before node A is killed
CPM_PRICE = 50.0  # per thousand: 0.05 an impression
BUDGET = 0.25  # five impressions
DEADLINE_S = 60.0


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adserve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@contextmanager
def run_worker(database_url: str, tmp_path: Path) -> Iterator[subprocess.Popen]:
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "ADSERVE_DATABASE_URL": database_url,
        "ADSERVE_VAR_DIR": str(tmp_path / "var-worker"),
        "ADSERVE_MODELS_DIR": str(tmp_path / "models"),
        "ADSERVE_JOBS_ENABLED": "true",
        "ADSERVE_JOBS_LEADER_POLL_S": "0.5",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "adserve", "worker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def leader_holders(connection: asyncpg.Connection) -> int:
    return await connection.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0 AND objid = $1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        LEADER_LOCK_KEY,
    )


async def wait_for_leader(connection: asyncpg.Connection, pid: int) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        leader = await current_leader(connection)
        if leader and leader.endswith(f":{pid}"):
            return leader
        await asyncio.sleep(0.1)  # polling interval of a condition wait
    raise TimeoutError("the worker never took the jobs lock")


async def wait_until_served(client: httpx.AsyncClient, url: str, key: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        response = await client.post(f"{url}/v1/decisions", json={"user_id": "probe", "placements": [key]})
        if response.status_code == 200 and response.json()["decisions"][0]["creative"]:
            return
        await asyncio.sleep(0.05)  # polling interval of a condition wait
    raise TimeoutError(f"{url} never served {key}")


@dataclass
class Load:
    """What a balancer in front of the two nodes saw."""

    sent: Counter = field(default_factory=Counter)  # requests per "node kind" ("a decisions")
    answered: Counter = field(default_factory=Counter)  # 2xx
    failed: Counter = field(default_factory=Counter)  # non-2xx or broken off
    rerouted: int = 0  # refused by the dead node, sent to the other
    decision_ids: list[uuid.UUID] = field(default_factory=list)
    answered_at: dict[uuid.UUID, tuple[str, float]] = field(default_factory=dict)  # node, monotonic
    killed_at: float = 0.0
    impressions: list[uuid.UUID] = field(default_factory=list)
    served_by_user: dict[str, list[int]] = field(default_factory=dict)


async def test_two_nodes_and_a_worker_survive_a_node_kill(fresh_database, tmp_path) -> None:
    url = await fresh_database()
    env = {**os.environ, "ADSERVE_DATABASE_URL": url, "ADSERVE_VAR_DIR": str(tmp_path / "var-migrate")}
    migrated = run_cli(["migrate"], env)  # the compose file's one-shot migration service
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    settings = load_settings(environ=env)
    engine = create_engine(url, settings)
    async with sessionmaker_for(engine)() as session:
        builder = CatalogBuilder(session)
        capped = await builder.campaign("capped", bid=9.0, frequency_cap={"impressions": 1, "window_s": 3600})
        budgeted = await builder.campaign("budgeted", pricing="cpm", bid=CPM_PRICE, total_budget=BUDGET)
        await builder.campaign("filler", bid=0.5)
        key = await builder.placement("multinode")
    await engine.dispose()

    db = await asyncpg.connect(**asyncpg_dsn(url))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    extra = {"ADSERVE_SERVING_EPSILON": "0"}
    load = Load()
    try:
        with (
            run_worker(url, tmp_path) as worker,
            run_server(url, tmp_path / "a", extra) as node_a,
            run_server(url, tmp_path / "b", extra) as node_b,
        ):
            leader = await wait_for_leader(db, worker.pid)
            nodes = {"a": node_a, "b": node_b}
            async with httpx.AsyncClient(timeout=10.0) as client:
                for node in nodes.values():
                    await wait_until_served(client, node.url, key)
                killed = asyncio.Event()
                done = 0
                leaders_seen: set[int] = set()

                async def send(name: str, method: str, path: str, **kwargs) -> httpx.Response | None:
                    """A balancer's view: a node known dead gets nothing; a refused connection,
                    or a GET the node broke off, is retried on the other node; a POST the node
                    took and never answered is a failure of that node."""
                    if name == "a" and killed.is_set():
                        load.rerouted += 1
                        name = "b"
                    counted = f"{name} {'decisions' if method == 'POST' else 'impressions'}"
                    load.sent[counted] += 1
                    try:
                        response = await client.request(method, f"{nodes[name].url}{path}", **kwargs)
                    except httpx.TransportError as error:
                        load.failed[counted] += 1
                        retry = isinstance(error, httpx.ConnectError) or method == "GET"
                        if name == "a" and retry:
                            load.rerouted += 1
                            return await send("b", method, path, **kwargs)
                        return None
                    if response.status_code // 100 != 2:
                        load.failed[counted] += 1
                        return None
                    load.answered[counted] += 1
                    return response

                async def decide(name: str, user: str) -> None:
                    body = {"user_id": user, "consent": True, "placements": [key]}
                    response = await send(name, "POST", "/v1/decisions", json=body)
                    if response is None:
                        return
                    decision = response.json()["decisions"][0]
                    if decision["decision_id"]:
                        load.decision_ids.append(uuid.UUID(decision["decision_id"]))
                        answered_by = next(
                            n for n, node in nodes.items() if node.url.endswith(f":{response.url.port}")
                        )
                        load.answered_at[uuid.UUID(decision["decision_id"])] = (answered_by, time.monotonic())
                        load.served_by_user.setdefault(user, []).append(decision["creative"]["campaign_id"])
                        # the impression pixel, through the balancer too, to the other node
                        pixel = decision["impression_url"].split("/i/", 1)[1]
                        hit = await send("b" if name == "a" else "a", "GET", f"/i/{pixel}")
                        if hit is not None:
                            load.impressions.append(uuid.UUID(decision["decision_id"]))

                async def user_session(index: int, gate: asyncio.Semaphore) -> None:
                    nonlocal done
                    user = f"mn-{index}-{uuid.uuid4().hex[:6]}"
                    async with gate:
                        for turn in range(REQUESTS_PER_USER):
                            await decide("a" if (index + turn) % 2 == 0 else "b", user)
                            done += 1

                async def kill_node_a() -> None:
                    deadline = time.monotonic() + DEADLINE_S
                    while done < KILL_AFTER and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)  # polling interval of a condition wait
                    load.killed_at = time.monotonic()
                    node_a.process.send_signal(signal.SIGKILL)
                    node_a.process.wait()
                    killed.set()

                async def watch_leaders() -> None:
                    while not killed.is_set() or done < USERS * REQUESTS_PER_USER:
                        leaders_seen.add(await leader_holders(db))
                        await asyncio.sleep(0.2)  # sampling interval, not a synchronisation

                gate = asyncio.Semaphore(CONCURRENCY)
                watcher = asyncio.create_task(watch_leaders())
                try:
                    await asyncio.gather(kill_node_a(), *(user_session(i, gate) for i in range(USERS)))
                finally:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
                assert await current_leader(db) == leader

            print(
                f"\nrequests per node: sent {sorted(load.sent.items())}\n"
                f"answered {sorted(load.answered.items())}\nfailed {sorted(load.failed.items())}\n"
                f"sent to the other node once node a was killed (after {KILL_AFTER} decisions): "
                f"{load.rerouted}"
            )
            # Traffic reached both nodes; the survivor answered everything it was sent.
            assert load.answered["a decisions"] > 0 and load.answered["b decisions"] > 0
            assert load.failed["b decisions"] == load.failed["b impressions"] == 0
            # only the requests in flight when it died
            assert load.failed["a decisions"] + load.failed["a impressions"] <= CONCURRENCY
            assert load.rerouted > 0
            # Exactly one leader all along: the worker, which alone ran the jobs.
            assert leaders_seen == {1}, leaders_seen
            runs = await db.fetch("SELECT job, figures->>'leader' AS leader FROM job_runs")
            print(
                f"jobs: {len(runs)} runs ({sorted({r['job'] for r in runs})}), by {sorted({r['leader'] for r in runs})}"
            )
            assert runs and {r["leader"] for r in runs} == {leader}

            # The decision log's contract (README): a served decision's row is committed within
            # writer.flush_ms, so only the killed node's decisions of its last flush window may be
            # missing; every other 2xx decision and every recorded impression is stored.
            window_s = (
                load_settings("prod", environ={"ADSERVE_SECRET_KEY": "x" * 40}).writer.flush_ms / 1000 + 1.0
            )
            survivors = {d for d, (node, _) in load.answered_at.items() if node == "b"}
            deadline = time.monotonic() + window_s  # the survivor's last rows are still in its flush window
            while True:
                stored_ids = {
                    row["id"]
                    for row in await db.fetch(
                        "SELECT id FROM decisions WHERE id = ANY($1::uuid[])", load.decision_ids
                    )
                }
                if survivors <= stored_ids or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)  # polling interval of a condition wait
            stored = len(stored_ids)
            missing = [load.answered_at[d] for d in load.decision_ids if d not in stored_ids]
            assert all(node == "a" and load.killed_at - at < window_s for node, at in missing), missing
            impressions = await db.fetchval(
                "SELECT count(*) FROM impressions WHERE decision_id = ANY($1::uuid[])", load.impressions
            )
            total = await db.fetchval(
                "SELECT count(*) FROM decisions WHERE placement_id = $1",
                builder.built.placements["multinode"],
            )
            print(
                f"rows: {len(load.decision_ids)} decisions answered 2xx, {stored} stored "
                f"({total} on the placement, probes included); {len(load.impressions)} impressions, "
                f"{impressions} stored"
            )
            print(
                f"missing: {len(missing)} decisions, all answered by node a within {window_s:.1f} s of its kill"
            )
            assert impressions == len(load.impressions)

            # The frequency cap held across nodes: the capped campaign at most once per user.
            capped_counts = Counter(
                user for user, campaigns in load.served_by_user.items() for c in campaigns if c == capped
            )
            assert capped_counts and max(capped_counts.values()) == 1
            # The budget held across nodes: billed spend within it, delivered beyond it unbilled.
            spend = await db.fetchrow(
                "SELECT c.spend_total::float8 AS spend, (SELECT sum(cost)::float8 FROM impressions "
                "WHERE campaign_id = c.id) AS billed FROM campaigns c WHERE c.id = $1",
                budgeted,
            )
            print(
                f"capped campaign served to {len(capped_counts)} users, at most once each; "
                f"budgeted campaign billed {spend['spend']:.2f} of {BUDGET:.2f}"
            )
            assert 0 < spend["spend"] <= BUDGET + 1e-9
            assert spend["billed"] == pytest.approx(spend["spend"])
    finally:
        await db.close()
