"""Serving-path benchmark: decision throughput against a plain Litestar endpoint, and decision latency.

    .venv/bin/python bench/serving.py [--users 5000] [--duration 15] [--rate 200] [--write]

In one run on this machine it
1. uses Postgres: a fresh database `adserve_bench_<random>` on the server named by
   `--database-url` (default: postgresql://postgres@127.0.0.1:5432/test when something answers on
   127.0.0.1:5432), dropped at the end; otherwise an embedded Postgres in a temporary folder;
   and migrates it;
2. seeds one 300×250 placement with 100 eligible creatives (20 campaigns × 5, CPC and CPM,
   generous budgets, a generous frequency cap on every campaign that never binds) and N consented users with 50
   behaviour events each (asyncpg COPY into user_events under the server's pseudonymous key);
3. starts `adserve serve` (1 worker) and bench/plain_app.py (same uvicorn settings) on two ports;
4. measures max throughput with wrk (closed loop, fixed connections and duration, after a
   warm-up; rounds alternate between the two endpoints) and latency at a fixed rate with an
   open-loop asyncio client (latency counted from each request's scheduled send time, so a
   stalled server cannot hide queueing). Every response must be 2xx and every decision must
   carry a creative, or the run is reported invalid.
5. prints a Markdown table; with --write replaces "### Decisions" under "## Serving path" in
   BENCHMARKS.md.

Client, servers and Postgres share this machine's cores: the figures are a ratio within one run,
not a capacity claim.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import re
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from serving_models import ServingModels, models_serving, serving_status, visit_every_user, warm_models

from adserve.admin import schemas
from adserve.admin.services import AdvertiserService, CampaignService, CreativeService, PlacementService
from adserve.db.engine import EmbeddedPostgres, asyncpg_dsn, sessionmaker_for, sqlalchemy_url
from adserve.db.migrate import upgrade
from adserve.signing.identity import UserKeys

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("serving.lua")
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
PLACEMENT = "bench-slot"
CATEGORIES = ("shoes", "electronics", "garden", "books", "toys")
EVENT_TYPES = ("page_view", "product_view", "add_to_cart", "purchase", "search")
EVENTS_PER_USER = 50
# A shopper's behaviour leans to the category whose ads they click most (bench/serving_models.py),
# so a trained model has a signal to find: with events drawn uniformly, 8,000 logged decisions
# left the first interest model at chance (AUC 0.50-0.53) and the gate rejected it in one run of
# two, and then the benchmark measured nothing.
FAVOURITE_SHARE = 0.4
# Every campaign carries a frequency cap (one that never binds), so every serve publishes its serve
# to the serving processes before it answers, whichever creative the trained model prefers (until
# that publication, every serve waited for its row's commit): with caps on 5 campaigns of
# 20 the share of capped serves followed the model (0 % to 99 % between runs of the same code) and
# moved a decision's cost by a third.
CAPPED_EVERY = 1
CAMPAIGNS = 20
CREATIVES_PER_CAMPAIGN = 5
CLIENT_KEEPALIVE_S = 4.0  # under uvicorn's 5 s keep-alive timeout


# --- Postgres -----------------------------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


async def _admin_execute(server_url: str, statement: str) -> None:
    connection = await asyncpg.connect(**asyncpg_dsn(server_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@dataclass
class Database:
    url: str
    server_url: str | None = None  # set when we created a database on a server: drop it at the end
    name: str | None = None
    embedded: EmbeddedPostgres | None = None
    embedded_dir: Path | None = None

    async def close(self) -> None:
        if self.server_url and self.name:
            await _admin_execute(self.server_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if self.embedded is not None:
            self.embedded.stop()
        if self.embedded_dir is not None:
            shutil.rmtree(self.embedded_dir, ignore_errors=True)


async def open_database(server_url: str | None) -> Database:
    if server_url is None and _answers("127.0.0.1", 5432):
        server_url = DEFAULT_SERVER
    if server_url is None:
        folder = Path(tempfile.mkdtemp(prefix="adserve-bench-pg-"))
        embedded = EmbeddedPostgres(folder)
        url = await asyncio.to_thread(embedded.start)
        database = Database(url=url, embedded=embedded, embedded_dir=folder)
    else:
        name = f"adserve_bench_{secrets.token_hex(4)}"
        await _admin_execute(server_url, f'CREATE DATABASE "{name}"')
        database = Database(url=_with_database(server_url, name), server_url=server_url, name=name)
    await asyncio.to_thread(upgrade, database.url)
    return database


# --- catalogue and users ------------------------------------------------------------------------


async def seed_catalog(url: str) -> None:
    """20 campaigns × 5 creatives on one 300×250 placement; all eligible for every request."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with sessionmaker_for(engine)() as session:
            advertiser = await AdvertiserService(session, None).create(schemas.AdvertiserCreate(name="bench"))
            for c in range(CAMPAIGNS):
                cpc = c % 2 == 0
                body = {
                    "name": f"bench campaign {c}",
                    "pricing": "cpc" if cpc else "cpm",
                    "bid": 0.5 + 0.1 * c if cpc else 2.0 + 0.2 * c,
                    "total_budget": 1e9,
                    "daily_budget": 1e8,
                }
                if c % CAPPED_EVERY == 0:  # a cap that never binds: its serves wait for their commit
                    body["frequency_cap"] = {"impressions": 1000, "window_s": 86400}
                campaign = await CampaignService(session, None).create(
                    msgspec.convert(body, schemas.CampaignCreate), advertiser.id
                )
                for k in range(CREATIVES_PER_CAMPAIGN):
                    await CreativeService(session, None).create(
                        schemas.CreativeCreate(
                            campaign_id=campaign.id,
                            title=f"bench {c}.{k}",
                            width=300,
                            height=250,
                            image_url="https://cdn.example/ad.png",
                            landing_url=f"https://shop.example/landing/{c}/{k}",
                            category=CATEGORIES[(c + k) % len(CATEGORIES)],
                            brand=f"brand{c % 7}",
                            product_ids=[f"p{c}-{k}"],
                            price=9.99 + c,
                        )
                    )
            await PlacementService(session, None).create(
                schemas.PlacementCreate(key=PLACEMENT, width=300, height=250)
            )
    finally:
        await engine.dispose()


async def seed_users(url: str, secret_key: str, users: int, seed: int = 7) -> int:
    """N consented users with 50 behaviour events each over the last week, by COPY."""
    keys = UserKeys(secret_key)
    rng = random.Random(seed)
    now = datetime.now(UTC)
    columns = ("id", "user_id", "event_type", "ts", "item_id", "category", "price", "query")
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    written = 0
    try:
        for start in range(0, users, 1000):
            records = []
            for u in range(start, min(users, start + 1000)):
                key = keys.consented(f"user-{u}")
                favourite = CATEGORIES[u % len(CATEGORIES)]  # the category whose ads they click most
                for _ in range(EVENTS_PER_USER):
                    kind = rng.choice(EVENT_TYPES)
                    category = favourite if rng.random() < FAVOURITE_SHARE else rng.choice(CATEGORIES)
                    records.append(
                        (
                            uuid.uuid4(),
                            key,
                            kind,
                            now - timedelta(seconds=rng.uniform(60, 7 * 86400)),
                            None if kind == "search" else f"item-{rng.randrange(5000)}",
                            category,
                            round(rng.uniform(5, 200), 2) if kind in ("add_to_cart", "purchase") else None,
                            f"{category} deal" if kind == "search" else None,
                        )
                    )
            await connection.copy_records_to_table("user_events", records=records, columns=columns)
            written += len(records)
        await connection.execute("ANALYZE user_events")
    finally:
        await connection.close()
    return written


# --- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    name: str, argv: list[str], env: dict[str, str], port: int, probe: str, work: Path
) -> Server:
    log_path = work / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, port, process, log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            response = probe_request(port, probe)
            if response.status_code == 200:
                return server
        time.sleep(0.1)  # readiness probe interval
    server.stop()
    raise TimeoutError(f"{name} not ready on port {port}:\n{log_path.read_text()[-3000:]}")


def request_body(user: int) -> bytes:
    """The same body as serving.lua's request() builds."""
    category = CATEGORIES[(user + 1) % len(CATEGORIES)]
    return (
        f'{{"user_id":"user-{user}","placements":["{PLACEMENT}"],"consent":true,'
        f'"context":{{"page_url":"https://shop.example/c/{category}?page=2","page_category":"{category}",'
        f'"keywords":["sale","running","new"],"device":"desktop","geo":"FR",'
        f'"referrer":"https://search.example/?q={category}"}}}}'
    ).encode()


@dataclass(frozen=True)
class GCPauses:
    """The server's garbage collections (`adserve_gc_pause_seconds`) over one phase of the run."""

    count: tuple[int, int, int]  # by generation
    seconds: tuple[float, float, float]
    over_5ms: int  # collections of any generation that held the process longer than 5 ms

    def __sub__(self, earlier: GCPauses) -> GCPauses:
        return self._combined(earlier, -1)

    def __add__(self, other: GCPauses) -> GCPauses:
        return self._combined(other, 1)

    def _combined(self, other: GCPauses, sign: int) -> GCPauses:
        return GCPauses(
            tuple(a + sign * b for a, b in zip(self.count, other.count, strict=True)),  # type: ignore[arg-type]
            tuple(a + sign * b for a, b in zip(self.seconds, other.seconds, strict=True)),  # type: ignore[arg-type]
            self.over_5ms + sign * other.over_5ms,
        )

    def describe(self) -> str:
        return (
            ", ".join(
                f"generation {g}: {self.count[g]:,} ({1000 * self.seconds[g]:.1f} ms)" for g in range(3)
            )
            + f"; {self.over_5ms} longer than 5 ms"
        )


def gc_pauses(port: int, token: str) -> GCPauses:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5.0
    ).text
    count, seconds, within_5ms = [0, 0, 0], [0.0, 0.0, 0.0], 0
    for family in text_string_to_metric_families(text):
        if family.name != "adserve_gc_pause_seconds":
            continue
        for sample in family.samples:
            generation = int(sample.labels["generation"])
            if sample.name.endswith("_count"):
                count[generation] = int(sample.value)
            elif sample.name.endswith("_sum"):
                seconds[generation] = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.005:
                within_5ms += int(sample.value)
    return GCPauses(tuple(count), tuple(seconds), sum(count) - within_5ms)  # type: ignore[arg-type]


def probe_request(port: int, path: str) -> httpx.Response:
    if path == "/ready":
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2.0)
    return httpx.post(
        f"http://127.0.0.1:{port}{path}",
        content=request_body(0),
        headers={"content-type": "application/json"},
        timeout=2.0,
    )


# --- load: wrk (throughput) -----------------------------------------------------------------------


@dataclass
class WrkResult:
    endpoint: str
    rps: float
    requests: int
    errors: int  # socket errors, timeouts and non-2xx
    missing: int  # 2xx without the expected content (a decision without a creative)
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float = 0.0  # the server process's CPU time per request (user + system)
    postgres_cpu_ms: float | None = None  # every local postgres process's CPU time per request
    commits_per_request: float | None = None  # transactions the bench database committed per request
    capped_share: float | None = (
        None  # decisions that served a frequency-capped campaign (published the serve before answering)
    )


def _own_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a server so far: the process and its children (uvicorn's workers with
    `--workers N`, which do the serving while the parent only supervises)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    total = _own_cpu_seconds(pid)
    for kid in kids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += _own_cpu_seconds(kid)
    return total


def postgres_cpu_seconds() -> float | None:
    """CPU time so far of every process named `postgres` on this machine (the server and its
    backends); None where none is readable (a remote server)."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            text = stat.read_text()
            if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
                fields = text.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                found = True
    return total if found else None


def _fetchval_now(url: str, query: str, *args: object) -> Any:
    """One value from the bench database, from synchronous code running inside the bench's event
    loop (run_wrk blocks it): on a connection of its own, in a thread with a loop of its own."""

    async def read() -> Any:
        connection = await asyncpg.connect(**asyncpg_dsn(url))
        try:
            return await connection.fetchval(query, *args)
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def database_commits(url: str) -> int:
    """Transactions committed in the bench database so far (`pg_stat_database`; backends report
    theirs at most a second late, small against a run's thousands)."""
    return _fetchval_now(url, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")


def capped_share(url: str, start: datetime, end: datetime) -> float | None:
    """The share of the decisions logged between `start` and `end` that served a frequency-capped
    campaign: each waits for its commit, so this share, which the trained model and policy
    decide, moves the server's and Postgres's cost per decision between runs."""
    return _fetchval_now(
        url,
        "SELECT avg((c.frequency_cap IS NOT NULL)::int)::float8 FROM decisions d "
        "JOIN campaigns c ON c.id = d.campaign_id WHERE d.ts >= $1 AND d.ts < $2",
        start,
        end,
    )


def run_wrk(
    port: int,
    path: str,
    users: int,
    expect: str,
    connections: int,
    seconds: int,
    pid: int | None = None,
    database_url: str | None = None,
) -> WrkResult:
    env = {
        **os.environ,
        "BENCH_PATH": path,
        "BENCH_USERS": str(users),
        "BENCH_PLACEMENT": PLACEMENT,
        "BENCH_EXPECT": expect,
    }
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA)]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    postgres_before = postgres_cpu_seconds()
    commits_before = database_commits(database_url) if database_url else None
    started_at = datetime.now(UTC)
    completed = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}"], env=env, capture_output=True, text=True, check=True
    )
    cpu_used = cpu_seconds(pid) - cpu_before if pid else 0.0
    postgres_after = postgres_cpu_seconds()
    commits = database_commits(database_url) - commits_before if commits_before is not None else None
    # rows of the run's last second may still be in the writer's queue (flush_ms)
    capped = (
        capped_share(database_url, started_at, datetime.now(UTC) - timedelta(seconds=1))
        if database_url and path == "/v1/decisions"
        else None
    )
    line = next(x for x in completed.stdout.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    socket_errors = data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"]
    return WrkResult(
        endpoint=path,
        rps=data["requests"] / (data["duration_us"] / 1e6),
        requests=data["requests"],
        errors=socket_errors + data["non2xx"],
        missing=data["missing"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        server_cpu_ms=1000 * cpu_used / max(1, data["requests"]),
        postgres_cpu_ms=None
        if postgres_before is None or postgres_after is None
        else 1000 * (postgres_after - postgres_before) / max(1, data["requests"]),
        commits_per_request=None if commits is None else commits / max(1, data["requests"]),
        capped_share=capped,
    )


# --- load: open-loop fixed rate (latency) -------------------------------------------------------


@dataclass
class RateResult:
    endpoint: str
    rate: float
    sent: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    missing: int = 0
    late_sends: int = 0  # sends the client itself started > 5 ms after their schedule
    connections: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies_ms)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if match is None:
        raise RuntimeError("response without content-length")
    return status, await reader.readexactly(int(match.group(1)))


async def open_loop(
    port: int, path: str, users: int, expect: bytes, rate: float, seconds: float
) -> RateResult:
    """Sends rate × seconds requests on schedule whatever the server's pace (keep-alive
    connections are reused when idle, opened when none is); latency runs from the schedule."""
    total = int(rate * seconds)
    result = RateResult(endpoint=path, rate=rate, sent=total)
    # (reader, writer, idle since): a connection idle past the servers' keep-alive timeout
    # (uvicorn's 5 s) is closed by the server, so the client drops it first, as browsers do
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    offset = random.randrange(users)

    async def one(index: int, scheduled: float) -> None:
        body = request_body((offset + index) % users)
        request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        while idle and time.perf_counter() - idle[-1][2] > CLIENT_KEEPALIVE_S:
            idle.pop()[1].close()
        if idle:
            reader, writer, _ = idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            result.connections += 1
        try:
            status, payload = await _exchange(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, RuntimeError) as error:
            result.errors += 1
            kind = type(error).__name__
            result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
            writer.close()
            return
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        idle.append((reader, writer, time.perf_counter()))
        if not 200 <= status < 300:
            result.errors += 1
            result.error_kinds[f"HTTP {status}"] = result.error_kinds.get(f"HTTP {status}", 0) + 1
        elif expect not in payload:
            result.missing += 1

    tasks = []
    start = time.perf_counter() + 0.05
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            result.late_sends += 1
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    for _, writer, _ in idle:
        writer.close()
    return result


# --- profile ------------------------------------------------------------------------------------


def profile_decisions(pid: int, seconds: int, run_load) -> None:
    """py-spy (on-CPU samples of the server's threads) while wrk loads /v1/decisions; prints the
    top frames by own time and by inclusive time."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(tempfile.mkdtemp(prefix="adserve-profile-")) / "decisions.txt"
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    recorder = subprocess.Popen(
        [*argv, "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    result = run_load()
    _, error = recorder.communicate(timeout=seconds + 60)
    if not out.exists():
        print(f"py-spy failed: {error[-2000:]}")
        return
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    print(
        f"\nprofile: {total} on-CPU samples over {seconds} s at {result.rps:,.0f} decisions/s; raw stacks in {out}"
    )
    for title, table in (("own time", own), ("inclusive time", inclusive)):
        print(f"top frames by {title}:")
        for frame, samples in sorted(table.items(), key=lambda item: -item[1])[:30]:
            print(f"  {100 * samples / total:5.1f}%  {frame}")


# --- report ---------------------------------------------------------------------------------------


def _cache_delta(before: dict, serving: dict) -> str:
    """What the serving process's user-state cache did between two `/ready` readings."""
    after = serving.get("user_state") or {}
    delta = {
        name: after.get(name, 0) - before.get(name, 0) for name in ("hits", "loads", "syncs", "publications")
    }
    return (
        ", ".join(f"{count:,} {name}" for name, count in delta.items())
        + f"; {after.get('users', 0):,} users held"
    )


def _click_head(scorer: dict) -> str:
    if not scorer.get("click_trained"):
        return ""
    if scorer.get("click_weighed") is False:
        return " (click head trained; the fusion gives it weight 0, so it does not run)"
    return " (click head trained and weighed)"


def _mean_of(values, unit: str = "ms", digits: int = 3) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.mean(known):.{digits}f} {unit}".strip() if known else "n/a"


def _sh(command: str) -> str:
    try:
        return subprocess.run(command, shell=True, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine() -> str:
    model = _sh("lscpu | sed -n 's/^Model name: *//p'") or "unknown CPU"
    return f"{model} (lscpu model name), {os.cpu_count()} cores (nproc {_sh('nproc')})"


@dataclass
class Report:
    command: str
    date: str
    machine: str
    postgres: str
    database: str
    users: int
    events: int
    connections: int
    duration: int
    warmup: int
    rounds: list[tuple[WrkResult, WrkResult]]  # (plain, decisions)
    latency: RateResult
    plain_latency: RateResult
    loadavg: tuple[float, float, float]
    models: ServingModels | None
    serving: dict
    workers: int
    section: str
    visited_s: float
    gc_under_load: GCPauses | None = None
    gc_open_loop: GCPauses | None = None

    @property
    def plain_rps(self) -> float:
        return statistics.mean(p.rps for p, _ in self.rounds)

    @property
    def decisions_rps(self) -> float:
        return statistics.mean(d.rps for _, d in self.rounds)

    @property
    def ratio(self) -> float:
        return self.decisions_rps / self.plain_rps

    @property
    def invalid(self) -> list[str]:
        problems = []
        for plain, decisions in self.rounds:
            for run in (plain, decisions):
                if run.errors or run.missing:
                    problems.append(f"{run.endpoint}: {run.errors} errors, {run.missing} without content")
        for run in (self.latency, self.plain_latency):
            if run.errors or run.missing or len(run.latencies_ms) != run.sent:
                problems.append(
                    f"{run.endpoint} at {run.rate:g}/s: {run.errors} errors, {run.missing} without content, "
                    f"{len(run.latencies_ms)}/{run.sent} answered {run.error_kinds}"
                )
        return problems

    def markdown(self) -> str:
        lat, plat = self.latency, self.plain_latency
        per_round = "; ".join(f"{p.rps:,.0f} / {d.rps:,.0f} ({d.rps / p.rps:.2f})" for p, d in self.rounds)
        total_requests = sum(p.requests + d.requests for p, d in self.rounds)
        total_errors = sum(p.errors + d.errors + p.missing + d.missing for p, d in self.rounds)
        verdict = "met" if self.ratio >= 0.25 else "NOT met"
        scorer, policy = self.serving["scorer"], self.serving["policy"]
        if self.models:
            trained = (
                f"Before measuring, the benchmark logged {self.models.decisions:,} decisions with their "
                f"impressions and {self.models.clicks:,} clicks through the server, ran `adserve train` "
                f"({self.models.train_s:.0f} s) and `adserve learn` ({self.models.learn_s:.0f} s), "
                "and waited for the server to hot-swap both. "
            )
            if self.models.promoted_by_hand:
                trained += (
                    "The gate rejected the interest model against the empirical scorer on this small "
                    "log, so the benchmark promoted it with `adserve models promote` (it measures "
                    "what serving a trained model costs). "
                )
        else:
            trained = "No model was trained: the cold start serves. "
        trained += (
            f"Then one decision per user ({self.users:,}, {self.visited_s:.0f} s) before measuring, so the "
            "server holds every user's state and encoding, as for users whose events it has seen. "
        )
        served = (
            f"{trained}Serving during the run (`/ready`): scorer `{scorer['kind']}` version "
            f"`{scorer['version']}`{_click_head(scorer)}, policy `{policy['kind']}` version `{policy['version']}` "
            f"({policy.get('examples_learned') or 0:,} examples learned)."
        )
        lines = [
            f"### {self.section}",
            "",
            f"Machine: {self.machine}; {self.date}. {self.postgres}, {self.database}. Client (wrk and",
            "the open-loop asyncio client), both servers and Postgres share the same 2 cores, which other",
            f"work was also using (load average {self.loadavg[0]:.2f} / {self.loadavg[1]:.2f} / "
            f"{self.loadavg[2]:.2f} before the run).",
            "",
            f"`{self.command}`",
            "",
            "Workload: one 300×250 placement with 100 eligible creatives (20 campaigns × 5, half CPC",
            "half CPM, generous budgets; every campaign carries a 1000/day frequency cap that never binds, so",
            f"every serve waits for its commit); {self.users:,} consented users with {EVENTS_PER_USER} behaviour",
            f"events each ({self.events:,} rows in user_events), user id rotated per request. `adserve serve`",
            f"(`ADSERVE_ENV=prod`, default configuration, {self.workers} worker(s)) and `bench/plain_app.py`",
            "(one `POST /plain` decoding the same JSON body, 1 worker) run under the same uvicorn",
            "settings (uvloop, httptools, access log off).",
            "",
            served,
            "",
            "| measure | `/plain` | `/v1/decisions` | ratio |",
            "|---|---|---|---|",
            f"| max throughput, wrk 1 thread × {self.connections} connections, {self.duration} s × "
            f"{len(self.rounds)} rounds after {self.warmup} s warm-up | {self.plain_rps:,.0f} req/s "
            f"| {self.decisions_rps:,.0f} req/s | **{self.ratio:.2f}** (goal ≥ 0.25: {verdict}) |",
            f"| latency under that load, p50 / p99 (wrk) | "
            f"{statistics.mean(p.p50_ms for p, _ in self.rounds):.1f} / "
            f"{statistics.mean(p.p99_ms for p, _ in self.rounds):.1f} ms | "
            f"{statistics.mean(d.p50_ms for _, d in self.rounds):.1f} / "
            f"{statistics.mean(d.p99_ms for _, d in self.rounds):.1f} ms | |",
            f"| server process CPU per request under that load (/proc utime + stime) | "
            f"{statistics.mean(p.server_cpu_ms for p, _ in self.rounds):.3f} ms | "
            f"{statistics.mean(d.server_cpu_ms for _, d in self.rounds):.3f} ms | |",
            f"| Postgres CPU per request under that load (every local `postgres` process) | "
            f"{_mean_of(p.postgres_cpu_ms for p, _ in self.rounds)} | "
            f"{_mean_of(d.postgres_cpu_ms for _, d in self.rounds)} | |",
            f"| transactions committed per request under that load (`pg_stat_database`) | "
            f"{_mean_of((p.commits_per_request for p, _ in self.rounds), '', 2)} | "
            f"{_mean_of((d.commits_per_request for _, d in self.rounds), '', 2)} | |",
            f"| decisions that served a frequency-capped campaign (each publishes its serve before answering) | | "
            f"{_mean_of((100 * d.capped_share for _, d in self.rounds if d.capped_share is not None), '%', 0)} | |",
            f"| latency at a fixed {lat.rate:g} req/s, open loop, {lat.sent:,} requests, p50 / p99 "
            f"| {plat.percentile(50):.1f} / {plat.percentile(99):.1f} ms "
            f"| **{lat.percentile(50):.1f} / {lat.percentile(99):.1f} ms** | |",
            "",
            f"Rounds (plain / decisions req/s, ratio): {per_round}. Every response was checked: "
            f"{total_requests:,} throughput requests and {lat.sent + plat.sent:,} fixed-rate requests, "
            f"{total_errors + lat.errors + lat.missing + plat.errors + plat.missing} errors or decisions "
            "without a creative. Fixed-rate latency runs from each request's scheduled send time "
            f"(open loop, so queueing is counted); the client opened {lat.connections} connections for "
            f"decisions and started {lat.late_sends} sends more than 5 ms late.",
        ]
        if self.gc_under_load and self.gc_open_loop:
            lines += [
                "",
                f"The server's garbage collections (`adserve_gc_pause_seconds`) during the decision rounds: "
                f"{self.gc_under_load.describe()}; during the fixed-rate run: {self.gc_open_loop.describe()}.",
            ]
        if self.invalid:
            lines += ["", "**INVALID RUN:** " + "; ".join(self.invalid)]
        return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, title: str) -> None:
    """Replaces (or creates) "### <title>" under "## Serving path"; keeps every other sub-section."""
    text = path.read_text()
    match = re.search(r"^## Serving path\n", text, flags=re.M)
    if match is None:
        text = text.rstrip("\n") + "\n\n## Serving path\n\n" + section
        path.write_text(text)
        return
    body_start = match.end()
    next_section = re.search(r"^## ", text[body_start:], flags=re.M)
    body_end = body_start + next_section.start() if next_section else len(text)
    body = text[body_start:body_end]
    existing = re.search(rf"^### {re.escape(title)}\n", body, flags=re.M)
    if existing:
        after = re.search(r"^### ", body[existing.end() :], flags=re.M)
        end = existing.end() + after.start() if after else len(body)
        body = body[: existing.start()] + section + ("\n" if after else "") + body[end:]
    else:
        placeholder = re.search(r"^\(pending:[^\n]*\)\n", body, flags=re.M)
        if placeholder:
            rest = "" if "### Event ingest" in body else "(pending: event ingest vs raw COPY)\n"
            body = body[: placeholder.start()] + rest + body[placeholder.end() :]
        body = "\n" + section + "\n" + body.lstrip("\n")
    text = text[:body_start] + body.rstrip("\n") + "\n\n" + text[body_end:].lstrip("\n")
    path.write_text(text)


# --- main -----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> Report:
    loadavg = os.getloadavg()
    secret_key = "bench-secret-" + secrets.token_urlsafe(32)
    metrics_token = "bench-metrics-" + secrets.token_urlsafe(16)
    work = Path(tempfile.mkdtemp(prefix="adserve-bench-"))
    started = time.perf_counter()
    database = await open_database(args.database_url)
    servers: list[Server] = []
    try:
        connection = await asyncpg.connect(**asyncpg_dsn(database.url))
        try:
            version = await connection.fetchval("SHOW server_version")
        finally:
            await connection.close()
        where = "embedded (pgserver)" if database.embedded else "server on 127.0.0.1:5432"
        await seed_catalog(database.url)
        events = await seed_users(database.url, secret_key, args.users)
        print(
            f"seeded 100 creatives and {events:,} events in {time.perf_counter() - started:.1f} s", flush=True
        )

        port, plain_port = args.port or free_port(), args.plain_port or free_port()
        env = {
            **os.environ,
            "ADSERVE_ENV": "prod",
            "ADSERVE_SECRET_KEY": secret_key,
            "ADSERVE_DATABASE_URL": database.url,
            "ADSERVE_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "ADSERVE_VAR_DIR": str(work / "var"),
            "ADSERVE_WRITER_SPOOL_DIR": str(work / "spool"),
            "ADSERVE_MODELS_DIR": str(work / "models"),
            "ADSERVE_SERVER_RATE_LIMIT_PER_MINUTE": "0",  # the load generator is one client address
            # the scheduled jobs (retrain, learning) run in `adserve worker` in a deployment; here the
            # benchmark runs them once itself, so they do not share the cores with the measurement
            "ADSERVE_JOBS_ENABLED": "false",
            # /metrics, for the server's garbage-collection pauses over each phase
            "ADSERVE_METRICS_ENABLED": "true",
            "ADSERVE_METRICS_TOKEN": metrics_token,
            **dict(item.split("=", 1) for item in args.server_env),
        }
        adserve_argv = [sys.executable, "-m", "adserve", "serve", "--host", "127.0.0.1", "--port", str(port),
                        "--workers", str(args.workers)]  # fmt: skip
        servers.append(start_server("adserve", adserve_argv, env, port, "/ready", work))
        servers.append(
            start_server(
                "plain",
                [sys.executable, str(ROOT / "bench" / "plain_app.py"), "--port", str(plain_port)],
                env,
                plain_port,
                "/plain",
                work,
            )
        )
        probe = probe_request(port, "/v1/decisions")
        if probe.status_code != 200 or probe.json()["decisions"][0]["creative"] is None:
            raise RuntimeError(f"decision probe failed: {probe.status_code} {probe.text[:500]}")
        models = None
        if args.train_decisions:
            models = await warm_models(
                port, env, ROOT, args.users, args.train_decisions, request_body, CATEGORIES
            )
            # A restart, as after a deploy: the logged traffic loaded every user's state minutes
            # before training ended, so those entries would all reach `user_state_max_age_s`
            # (300 s) together inside the measurement and be reloaded from Postgres at once (47 %
            # of one run's decisions), where a long-running server reloads each user once in 300 s
            # spread over time. The new process loads the champions on start.
            servers[0].stop()
            servers[0] = start_server("adserve", adserve_argv, env, port, "/ready", work)
            await models_serving(port)
        print(
            f"servers up: adserve pid {servers[0].process.pid}, plain pid {servers[1].process.pid}",
            flush=True,
        )
        # 1 worker: one pass; N: 3N passes, after which a worker has missed about 1 user in 60
        # (2 workers), as a long-running server's workers have each served every returning user
        passes = 1 if args.workers == 1 else 3 * args.workers
        visited_s = await visit_every_user(port, args.users, request_body, passes)
        print(
            f"visited every user {passes}× in {visited_s:.1f} s (their state and encoding in memory)",
            flush=True,
        )

        endpoints = {
            "plain": (plain_port, "/plain", '"ok":true', servers[1].process.pid),
            "decisions": (port, "/v1/decisions", '"creative":{', servers[0].process.pid),
        }

        def load(name: str, seconds: int, connections: int = args.connections) -> WrkResult:
            target_port, path, expect, pid = endpoints[name]
            return run_wrk(target_port, path, args.users, expect, connections, seconds, pid, database.url)

        for name in ("plain", "decisions"):
            load(name, args.warmup)
        rounds = []
        under_load = None
        # `/metrics` is each process's own: with several workers one of them answers, at random
        gc_measured = args.workers == 1
        for r in range(args.rounds):
            plain = load("plain", args.duration)
            gc_before = gc_pauses(port, metrics_token) if gc_measured else None
            cache_before = (await serving_status(port)).get("user_state") if gc_measured else None
            decisions = load("decisions", args.duration)
            if cache_before:
                print(
                    f"user-state cache in round {r + 1}: {_cache_delta(cache_before, await serving_status(port))}"
                )
            if gc_before is not None:
                gc_round = gc_pauses(port, metrics_token) - gc_before
                under_load = gc_round if under_load is None else under_load + gc_round
            print(
                f"round {r + 1}: plain {plain.rps:,.0f} req/s ({plain.server_cpu_ms:.3f} ms CPU/req), "
                f"decisions {decisions.rps:,.0f} req/s ({decisions.server_cpu_ms:.3f} ms CPU/req), "
                f"ratio {decisions.rps / plain.rps:.3f} (errors {plain.errors}+{decisions.errors}, "
                f"Postgres {decisions.postgres_cpu_ms or 0:.3f} ms CPU and "
                f"{decisions.commits_per_request or 0:.3f} commits per decision, "
                f"{100 * (decisions.capped_share or 0):.0f} % capped serves, "
                f"missing {plain.missing}+{decisions.missing}; wrk p50 {decisions.p50_ms:.1f} ms)",
                flush=True,
            )
            rounds.append((plain, decisions))
        for connections in args.extra_connections:
            extra = load("decisions", args.duration, connections)
            print(
                f"decisions at {connections} connections: {extra.rps:,.0f} req/s "
                f"({extra.server_cpu_ms:.3f} ms CPU/req), p50 {extra.p50_ms:.1f} ms, p99 {extra.p99_ms:.1f} ms, "
                f"errors {extra.errors}, missing {extra.missing}",
                flush=True,
            )
        if args.profile:
            profile_decisions(
                endpoints["decisions"][3], args.profile, lambda: load("decisions", args.profile + 2)
            )
        serving = await serving_status(port)
        plain_latency = await open_loop(
            plain_port, "/plain", args.users, b'"ok":true', args.rate, args.latency_duration
        )
        gc_before = gc_pauses(port, metrics_token) if gc_measured else None
        latency = await open_loop(
            port, "/v1/decisions", args.users, b'"creative":{', args.rate, args.latency_duration
        )
        open_loop_gc = gc_pauses(port, metrics_token) - gc_before if gc_before is not None else None
        if gc_measured:
            print(
                f"garbage collections under wrk: {under_load.describe() if under_load else 'n/a'}", flush=True
            )
            print(f"garbage collections at {args.rate:g}/s: {open_loop_gc.describe()}", flush=True)
        else:
            print(f"garbage collections: not measured ({args.workers} workers, each with its own /metrics)")
        print(
            f"latency at {args.rate:g}/s: decisions p50 {latency.percentile(50):.1f} ms "
            f"p99 {latency.percentile(99):.1f} ms; plain p50 {plain_latency.percentile(50):.1f} ms "
            f"p99 {plain_latency.percentile(99):.1f} ms",
            flush=True,
        )
    finally:
        for server in servers:
            server.stop()
        await database.close()
        shutil.rmtree(work, ignore_errors=True)
    return Report(
        command=args.command,
        date=_sh("date -u"),
        machine=machine(),
        postgres=f"PostgreSQL {version}",
        database=where,
        users=args.users,
        events=events,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        rounds=rounds,
        latency=latency,
        plain_latency=plain_latency,
        loadavg=loadavg,
        models=models,
        serving=serving,
        workers=args.workers,
        section=args.section,
        visited_s=visited_s,
        gc_under_load=under_load,
        gc_open_loop=open_loop_gc,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a Postgres server to create the bench database on")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15, help="seconds per throughput run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per endpoint")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/decisions rounds")
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="fixed rate of the latency run, req/s (keep it under capacity)",
    )
    parser.add_argument("--latency-duration", type=float, default=15.0)
    parser.add_argument("--port", type=int)
    parser.add_argument("--plain-port", type=int)
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of `adserve serve` (diagnostics, e.g. ADSERVE_WRITER_FLUSH_MS=5)",
    )
    parser.add_argument(
        "--extra-connections",
        type=int,
        action="append",
        default=[],
        help="also run decisions at this many connections (diagnostic; not in the table)",
    )
    parser.add_argument("--profile", type=int, default=0, help="py-spy the decision server this many seconds")
    parser.add_argument("--workers", type=int, default=1, help="`adserve serve --workers N`")
    parser.add_argument(
        "--train-decisions",
        type=int,
        default=8000,
        help="logged decisions to train and promote the interest model and VW policy on before "
        "measuring (0: measure the cold start, the empirical fallback)",
    )
    parser.add_argument("--section", default="Decisions", help="the BENCHMARKS.md sub-section title")
    parser.add_argument("--write", action="store_true", help="replace '### <section>' in BENCHMARKS.md")
    args = parser.parse_args()
    args.command = ".venv/bin/python bench/serving.py " + shlex.join(sys.argv[1:])
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        report = runner.run(bench(args))
    text = report.markdown()
    print()
    print(text)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", text, args.section)
        print(f"BENCHMARKS.md: '### {args.section}' under '## Serving path' written")
    return 1 if report.invalid else 0


if __name__ == "__main__":
    sys.exit(main())
