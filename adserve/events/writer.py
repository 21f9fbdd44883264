"""One batched async log writer per process: group commit through asyncpg COPY, spool when down.

Rows are tuples in the column order of `adserve.db.rows.columns` (`make_row` builds one).

A table's rows gather in one batch that is flushed when it holds ``flush_rows`` rows or
``flush_ms`` after its first row, whichever comes first, or at once when a caller awaits
durability (group commit); while the table's one flush is in flight (`FLUSHES_PER_TABLE`), the
next batch gathers. A flush copies the batch into a per-connection TEMP staging table and then runs
``INSERT … SELECT … ON CONFLICT DO NOTHING`` in the same transaction, so rows retried by a client or
replayed from the spool are stored once. The COPY is Postgres's binary format encoded by
`adserve.db.copy_binary` (asyncpg's own encoding for a value it does not write), and a flush is
four round trips (see `_commit`). Decision rows commit without waiting for the WAL flush
(`ASYNC_COMMIT_TABLES`). `write` resolves only when its rows are committed
("stored") or fsync'd to the spool ("spooled"), which is what lets a request return knowing an
event it accepted will be seen by every other process.

Which rows are stored, and what they charge, is decided by the statements of
`adserve.events.billing`: spend charged within budgets, reservations, duplicate clicks, erased users.

When Postgres is unreachable each batch is appended to the spool (`adserve.events.spool`) and a
background task probes Postgres (backoff 0.5 s doubling to 2 s) and replays segments in order,
deleting each only after its batch committed. While Postgres is away new batches go to the spool
too, so replay order is arrival order. `write` never reports what did not happen: it returns only
once its rows are committed or fsync'd to the spool, and raises otherwise: `SpoolFullError` (a
503 with Retry-After for HTTP callers) when the spool has no room, with one ERROR line per episode,
and `RowsRejectedError` when Postgres rejected rows for their content. Such a batch is retried row
by row so only the bad rows are lost (counted, logged without row contents).

While a spool replays, stored rows are incomplete (an impression may still be on its way), so the
writer says so: `caught_up` is false in this process, and a shared advisory lock
(`REPLAY_LOCK_KEY`, visible in ``pg_locks``) tells every other process (click validation,
adserve/events/tracking.py). A process can spool without holding that lock (it has not yet noticed
that Postgres is back, or it died with rows spooled), so `caught_up` is also false while another
spool folder under `adopt_from` (another process's slot on this host) holds a segment. With `adopt_from`, the writer also replays every other spool folder
there that no live process holds (a slot of a worker that is gone, whatever the worker count now).

Erasure (adserve/events/erasure.py) reaches rows still queued or spooled: every statement that
stores rows checks the user's tombstone (``users.erased_at``), so a row from before its user's
erasure is stored without the user (decisions, impressions, clicks, conversions) or not at all
(behaviour events), whenever and through whichever writer it arrives. Each writer transaction
holds `WRITE_BARRIER_KEY` shared; the erasure takes it exclusively once its tombstones are
committed, so every row that was stored without seeing them is committed before it sweeps.

Past 450 lines, on purpose: batching, group commit, the spool and its replay are one state machine
(queues, in-flight slots, the online flag, the replay lock); the billing statements live in
`billing.py` and the row tuples in `db/rows.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import asyncpg
import msgspec

from adserve.db import copy_binary
from adserve.db.engine import asyncpg_dsn
from adserve.db.rows import WRITABLE_TABLES, columns
from adserve.errors import ServiceUnavailable
from adserve.events.billing import ERASABLE_TABLES, INSERT_SQL, LOCK_SQL, RETURNS_COUNT, stage_table
from adserve.events.spool import Spool, SpoolLockedError
from adserve.metrics import observe_writer_flush

# Published in the transaction that stores the rows, so every serving process's in-memory user
# state (serving/user_state.py) hears of a change as it commits: the users whose behaviour
# changed, and serves of frequency-capped campaigns. One notification per 100 users or serves,
# so a payload stays under Postgres's 8 kB.
NOTIFY_SQL = {
    "user_events": "SELECT pg_notify('adserve_user_state', string_agg('e ' || user_id, E'\\n')) FROM "
    "(SELECT user_id, (row_number() OVER () - 1) / 100 AS chunk "
    "FROM (SELECT DISTINCT user_id FROM _stage_user_events) u) c GROUP BY chunk",
    "decisions": "SELECT pg_notify('adserve_user_state', string_agg('s ' || user_id || ' ' || campaign_id "
    "|| ' ' || (extract(epoch FROM ts) * 1000000)::bigint, E'\\n')) FROM "
    "(SELECT s.user_id, s.campaign_id, s.ts, (row_number() OVER () - 1) / 100 AS chunk "
    "FROM _stage_decisions s JOIN campaigns c ON c.id = s.campaign_id "
    "WHERE c.frequency_cap IS NOT NULL AND s.user_id IS NOT NULL) d GROUP BY chunk",
}

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from adserve.settings import WriterSettings

__all__ = [
    "REPLAY_LOCK_KEY",
    "WRITE_BARRIER_KEY",
    "LogWriteError",
    "LogWriter",
    "RowsRejectedError",
    "SpoolFullError",
    "WriteOutcome",
    "WriterCounters",
]

log = logging.getLogger(__name__)

WriteOutcome = Literal["stored", "spooled"]

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4
# One flush of a table at a time: what arrives meanwhile, awaited rows included, shares the next
# COPY and commit. With a flush per connection, decisions that served frequency-capped campaigns
# (each awaits its commit) went two to a transaction under load; Postgres's CPU per decision was
# half the server's (BENCHMARKS.md "One flush of a table at a time").
FLUSHES_PER_TABLE = 1
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 2.0
TRANSIENT_ATTEMPTS = 3
# asyncpg's COPY (the fallback for rows db/copy_binary.py does not write) encodes rows on the
# event loop (a decision row, with its three 100-element arrays, costs about 0.1 ms): a batch hands
# the loop back to requests every this many rows, so a 200-row flush is a few short pauses instead
# of one 20 ms stall in every request that arrives meanwhile.
COPY_YIELD_ROWS = 16
# Rows this writer encodes itself (db/copy_binary.py, about a fifth of asyncpg's cost) are
# encoded in chunks of this many, handing the loop back between chunks for the same reason.
BINARY_CHUNK_ROWS = 64
SPOOL_FULL_RETRY_AFTER_S = 30  # what a refused caller is told to wait: Postgres back, spool draining
ADOPT_EVERY_S = 30.0  # how often a writer looks for spool folders that no live process holds
# Advisory lock keys (bigint; the scheduler's leader lock is 0x61647376 "adsv").
REPLAY_LOCK_KEY = 0x61647372  # "adsr": held shared by every writer replaying a spool
WRITE_BARRIER_KEY = 0x61647377  # "adsw": held shared by every writer transaction; erasure waits

# Errors meaning "Postgres is not there right now": the batch is spooled and retried later.
# (TimeoutError, e.g. a pool acquire timeout, is an OSError since Python 3.11.)
CONNECTIVITY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # protocol state broken by a connection lost mid-COPY
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown while connected
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)
# Errors that a retry of the same transaction resolves (two flushes charging the same campaigns).
TRANSIENT_ERRORS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


class LogWriteError(Exception):
    """Rows of an awaited `write` were neither committed nor spooled."""


class SpoolFullError(LogWriteError, ServiceUnavailable):
    """Postgres is unreachable and the spool has no room: the rows are not kept anywhere."""

    def __init__(self, table: str) -> None:
        super().__init__(
            f"the {table} log cannot be written: the database is unreachable and the spool is full",
            retry_after_s=SPOOL_FULL_RETRY_AFTER_S,
        )


class RowsRejectedError(LogWriteError):
    """Postgres rejected some of the rows for their content (a bug upstream; logged, counted)."""


_BARRIER_SQL = f"SELECT pg_advisory_xact_lock_shared({WRITE_BARRIER_KEY})"
# Decision rows commit without waiting for Postgres's WAL flush: the commit is visible at once
# (and notifies every process of a capped serve again: the serving process published it before
# answering), but a crash of Postgres itself can lose the last few hundred ms of them
# (3 × wal_writer_delay). A capped serve whose publication failed waits for this commit.
# Money (impressions, clicks, conversions) and behaviour events keep the durable commit.
ASYNC_COMMIT_TABLES = frozenset({"decisions"})
# A stage table is emptied by DELETE at the start of each transaction that uses it; DELETE leaves
# dead rows (nothing vacuums temp tables), so once this many rows went through it is truncated.
STAGE_TRUNCATE_ROWS = 2000


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Per pooled connection: JSONB as Python objects, and a TEMP staging table per table."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=lambda value: b"\x01" + msgspec.json.encode(value),
        decoder=lambda data: msgspec.json.decode(data[1:]),
    )
    await connection.execute(
        "\n".join(
            # A staged row lives one transaction: no TOAST compression (pglz tried every decision
            # row's arrays, ~2.2 kB, and took half the COPY's time in Postgres). PRESERVE ROWS,
            # emptied by `_opening_sql`: with ON COMMIT DELETE ROWS every commit that touched
            # one stage table truncated all six, ~0.4 ms of Postgres CPU per transaction.
            f"CREATE TEMP TABLE IF NOT EXISTS {stage_table(table)} (LIKE {table}) "
            "WITH (toast_tuple_target = 8160) ON COMMIT PRESERVE ROWS;"
            for table in WRITABLE_TABLES
        )
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The writer's pool returns a connection without asyncpg's reset query (`RESET ALL`,
    `UNLISTEN *`, `CLOSE ALL`, advisory unlock), one more round trip per flush: its connections
    hold no session state but their stage tables (no SET, LISTEN, cursor or session lock), and
    asyncpg still rolls back a transaction left open."""


def _opening_sql(table: str, *, truncate: bool) -> str:
    """A flush's first round trip: BEGIN, the commit mode, the erasure barrier, and the stage
    table emptied of this connection's last batch (a failed transaction's rows were rolled back
    with it), or truncated once `STAGE_TRUNCATE_ROWS` went through it."""
    return ";".join(
        ["BEGIN"]
        + (["SET LOCAL synchronous_commit = off"] if table in ASYNC_COMMIT_TABLES else [])
        + ([_BARRIER_SQL] if table in ERASABLE_TABLES else [])
        + [f"{'TRUNCATE' if truncate else 'DELETE FROM'} {stage_table(table)}"]
    )


async def _yielding(rows: list[tuple], every: int = COPY_YIELD_ROWS) -> AsyncIterator[tuple]:
    """`rows`, letting other tasks run every `every` rows (see COPY_YIELD_ROWS)."""
    for index, row in enumerate(rows):
        if index and index % every == 0:
            await asyncio.sleep(0)
        yield row


async def _binary_copy(table: str, rows: list[tuple], every: int = BINARY_CHUNK_ROWS) -> bytearray | None:
    """`rows` as one binary COPY stream, encoded a chunk at a time with the loop handed back
    between chunks; None where the binary encoder does not write one of the values (the batch
    then goes through asyncpg's own encoding, which stores the same rows)."""
    if not copy_binary.supports(table):
        return None
    stream = bytearray(copy_binary.HEADER)
    for start in range(0, len(rows), every):
        if start:
            await asyncio.sleep(0)
        try:
            stream += copy_binary.encode_rows(table, rows[start : start + every])
        except copy_binary.Unencodable:
            return None
    stream += copy_binary.TRAILER
    return stream


def _describe(exc: BaseException) -> str:
    """An error's kind and the constraint or column it names; never its message, which may hold
    row values (user ids)."""
    parts = [type(exc).__name__]
    for attribute in ("sqlstate", "constraint_name", "column_name"):
        value = getattr(exc, attribute, None)
        if value:
            parts.append(f"{attribute}={value}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# The writer


@dataclass
class WriterCounters:
    """Running totals since start, for metrics."""

    rows_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WRITABLE_TABLES, 0))
    duplicate_rows: int = 0  # committed rows Postgres already had (ON CONFLICT DO NOTHING)
    batches: int = 0  # batches committed to Postgres (replays and row-by-row retries included)
    spooled_rows: int = 0
    replayed_rows: int = 0
    adopted_rows: int = 0  # of replayed_rows, those from spool folders of processes that are gone
    dropped_rows: int = 0  # rejected by Postgres, undecodable in the spool, or spool full


@dataclass
class _Batch:
    rows: list[tuple]
    # (first row, end row, the awaiting caller's future or None for write_nowait)
    waiters: list[tuple[int, int, asyncio.Future[WriteOutcome] | None]]


# What one waiter of a batch gets: its outcome, or the error its `write` raises.
_Result = WriteOutcome | LogWriteError


class _TableQueue:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.waiters: list[tuple[int, int, asyncio.Future[WriteOutcome] | None]] = []
        self.first_at = 0.0
        self.has_rows = asyncio.Event()
        self.full = asyncio.Event()
        self.flushing = asyncio.Semaphore(FLUSHES_PER_TABLE)

    def take(self) -> _Batch:
        batch = _Batch(self.rows, self.waiters)
        self.rows, self.waiters = [], []
        self.has_rows.clear()
        self.full.clear()
        return batch


class LogWriter:
    """Batched, durable writes of append-only rows; one per process, with its own spool folder.

    ``await start()`` before writing and ``await close()`` at shutdown (flushes what is queued;
    what cannot reach Postgres stays in the spool for the next start). `adopt_from`: a folder of
    spool folders (one per process, `spool_dir` among them) whose unheld ones this writer replays.
    """

    def __init__(
        self,
        database_url: str,
        settings: WriterSettings,
        spool_dir: Path,
        statement_timeout_ms: int | None = None,
        *,
        adopt_from: Path | None = None,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url, statement_timeout_ms=statement_timeout_ms)
        self._adopt_from = adopt_from
        self._adopter: asyncio.Task[None] | None = None
        self._shared_folders = ("", "")  # (adopt_from, spool_dir) resolved, set by start()
        self._replays = 0  # spools this writer is replaying now (its own, adopted ones)
        self._flush_rows = settings.flush_rows
        self._flush_s = settings.flush_ms / 1000
        self._spool_max_bytes = settings.spool_max_bytes
        self._spool = Spool(spool_dir)
        self.counters = WriterCounters()
        self._pool: asyncpg.Pool | None = None
        self._queues: dict[str, _TableQueue] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(POOL_MAX_SIZE)
        self._staged_rows: dict[tuple[int, str], int] = {}  # (backend pid, table) -> rows since a TRUNCATE
        self._spool_lock = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None
        self._online = False
        self._drained = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = 0
        self._spool_full = False
        self._started = False
        self._closed = False

    # ---- lifecycle

    async def start(self) -> None:
        """Opens the spool, connects (or starts retrying), and replays any spool left behind."""
        await asyncio.to_thread(self._spool.open)
        if self._adopt_from is not None:  # resolved once: `caught_up` lists the other slots
            self._shared_folders = (
                str(self._adopt_from.resolve()),
                str(self._spool.directory.resolve()),
            )
        try:
            self._pool = await self._create_pool()
        except CONNECTIVITY_ERRORS as exc:
            log.warning(
                "log writer: Postgres unreachable at start (%s); spooling until it returns", _describe(exc)
            )
        if self._pool is None or self._spool.segments:
            if self._spool.segments:
                log.info("log writer: replaying %d spooled batches", len(self._spool.segments))
            self._start_recovery()
        else:
            self._online = True
            self._drained.set()
        self._queues = {table: _TableQueue() for table in WRITABLE_TABLES}
        self._loops = [asyncio.create_task(self._run_table(t, q)) for t, q in self._queues.items()]
        if self._adopt_from is not None:
            self._adopter = asyncio.create_task(self._adopt_orphans(self._adopt_from))
        self._started = True

    async def close(self) -> None:
        """Flushes every queued row (to Postgres or the spool), then stops."""
        if self._closed or not self._started:
            return
        self._closed = True
        for task in (*self._loops, self._adopter):
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._loops, *filter(None, [self._adopter]), return_exceptions=True)
        final = [self._flush(table, queue.take()) for table, queue in self._queues.items() if queue.rows]
        await asyncio.gather(*self._inflight, *final)
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), CONNECT_TIMEOUT_S)
            except (TimeoutError, *CONNECTIVITY_ERRORS):
                self._pool.terminate()
        await asyncio.to_thread(self._spool.close)

    # ---- writing

    async def write(self, table: str, rows: list[tuple]) -> WriteOutcome:
        """Queues rows and waits until their batch is committed ("stored") or fsync'd to the spool
        ("spooled"). Raises `SpoolFullError` when Postgres is unreachable and the spool has no room,
        `RowsRejectedError` when Postgres rejected rows for their content, so no caller can mistake
        rows kept nowhere for kept ones."""
        if not rows:
            return "stored"
        future: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._enqueue(table, rows, future)
        return await future

    def write_nowait(self, table: str, rows: list[tuple]) -> None:
        """Queues rows for the same durable path without waiting for it (rows that find the spool
        full are only counted in `dropped_rows`)."""
        if rows:
            self._enqueue(table, rows, None)

    async def flush(self) -> None:
        """Flushes queued rows now and waits until nothing is pending (stored, spooled or dropped)."""
        for queue in self._queues.values():
            if queue.rows:
                queue.full.set()
        await self._idle.wait()

    async def drained(self) -> None:
        """Waits until Postgres is reachable and the spool is empty."""
        await self._drained.wait()

    # ---- state for metrics and tests

    @property
    def pending(self) -> int:
        """Rows accepted but not yet stored, spooled or dropped."""
        return self._pending

    @property
    def spool_bytes(self) -> int:
        return self._spool.size

    @property
    def online(self) -> bool:
        """Postgres answers: new batches go straight to it (a spool may still be replaying)."""
        return self._online

    @property
    def caught_up(self) -> bool:
        """Postgres answers, nothing this writer spooled or adopted waits to be replayed, and no
        other spool folder under `adopt_from` holds a segment: what this host's processes accepted
        is in Postgres. False while replaying, when stored rows are incomplete.

        The other folders matter because another process on this host may still spool although
        Postgres is back (it notices on its next probe, up to RETRY_MAX_S later) or may have died
        with rows in its slot (adopted within ADOPT_EVERY_S): it holds no replay lock then, and a
        click whose impression waits there would be judged `no_impression`."""
        return self._online and not self._spool.segments and self._replays == 0 and not self._others_spooled()

    def _others_spooled(self) -> bool:
        """A segment in another spool folder under `adopt_from` (a directory listing per slot,
        no file is read; the rename that publishes a segment precedes its writer's answer)."""
        if self._adopt_from is None:
            return False
        base, own = self._shared_folders
        try:
            with os.scandir(base) as entries:
                folders = [entry.path for entry in entries if entry.path != own and entry.is_dir()]
        except OSError:
            return False  # no shared folder (yet): nothing spooled there
        for folder in folders:
            try:
                with os.scandir(folder) as files:
                    if any(entry.name.endswith(".seg") for entry in files):
                        return True
            except OSError:
                continue  # removed meanwhile: it holds nothing
        return False

    def stats(self) -> dict[str, int]:
        """Flat counters for a metrics endpoint."""
        counters = self.counters
        return {
            **{f"rows_written_{table}": count for table, count in counters.rows_written.items()},
            "duplicate_rows": counters.duplicate_rows,
            "batches": counters.batches,
            "spooled_rows": counters.spooled_rows,
            "replayed_rows": counters.replayed_rows,
            "dropped_rows": counters.dropped_rows,
            "spool_bytes": self.spool_bytes,
            "pending": self._pending,
        }

    # ---- batching

    def _enqueue(self, table: str, rows: list[tuple], future: asyncio.Future[WriteOutcome] | None) -> None:
        if not self._started or self._closed:
            raise RuntimeError(
                "log writer is not running (start() it before writing; closed writers refuse rows)"
            )
        queue = self._queues.get(table)
        if queue is None:
            raise ValueError(f"log writer: {table!r} is not one of {WRITABLE_TABLES}")
        width = len(columns(table))
        if any(len(row) != width for row in rows):
            raise ValueError(f"log writer: {table} rows have {width} columns in columns({table!r}) order")
        if not queue.rows:
            queue.first_at = asyncio.get_running_loop().time()
            queue.has_rows.set()
        start = len(queue.rows)
        queue.rows.extend(rows)
        queue.waiters.append((start, len(queue.rows), future))
        # Group commit: a caller waiting for durability is flushed at once, or with the next COPY
        # when the table's flush is in flight (rows that arrive meanwhile share it); write_nowait
        # rows wait for flush_rows or flush_ms, whichever comes first.
        if future is not None or len(queue.rows) >= self._flush_rows:
            queue.full.set()
        self._pending += len(rows)
        self._idle.clear()

    async def _run_table(self, table: str, queue: _TableQueue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await queue.has_rows.wait()
            delay = queue.first_at + self._flush_s - loop.time()
            if delay > 0 and not queue.full.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await queue.full.wait()
            # Rows keep gathering while the table's flush is in flight or every connection is
            # busy, making the next batch bigger.
            await queue.flushing.acquire()
            await self._slots.acquire()
            task = asyncio.create_task(self._flush(table, queue.take()))
            self._inflight.add(task)
            task.add_done_callback(lambda done, queue=queue: self._flush_done(done, queue))

    def _flush_done(self, task: asyncio.Task[None], queue: _TableQueue) -> None:
        self._inflight.discard(task)
        self._slots.release()
        queue.flushing.release()

    async def _flush(self, table: str, batch: _Batch) -> None:
        outcomes: list[_Result] | None = None
        started = time.perf_counter()
        try:
            if self._online:
                try:
                    outcomes = await self._store(table, batch)
                except CONNECTIVITY_ERRORS as exc:
                    self._go_offline(exc)
            if outcomes is None:
                outcome: _Result = await self._to_spool(table, batch.rows)
                outcomes = [outcome] * len(batch.waiters)
        except SpoolFullError:
            # one error per waiter: each caller raises its own
            outcomes = [SpoolFullError(table) for _ in batch.waiters]
        except Exception:
            log.exception("log writer: unexpected error; %d %s rows dropped", len(batch.rows), table)
            self.counters.dropped_rows += len(batch.rows)
            outcomes = [
                RowsRejectedError(f"{table} rows were lost to an unexpected error") for _ in batch.waiters
            ]
        observe_writer_flush(table, time.perf_counter() - started)
        for (_, _, future), outcome in zip(batch.waiters, outcomes, strict=True):
            if future is not None and not future.done():
                if isinstance(outcome, LogWriteError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        self._pending -= len(batch.rows)
        if self._pending == 0:
            self._idle.set()

    # ---- Postgres

    async def _create_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            **self._dsn,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
            init=_init_connection,
            reset=_keep_session,
        )

    async def _commit(self, table: str, rows: list[tuple]) -> int:
        """Stages and inserts `rows` in one transaction; returns how many were new."""
        if self._pool is None:
            raise ConnectionError("no connection pool yet")
        stream = await _binary_copy(table, rows)
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection:
                    stage_key = (connection.get_server_pid(), table)
                    truncate = self._staged_rows.get(stage_key, 0) + len(rows) > STAGE_TRUNCATE_ROWS
                    # The transaction is opened and closed by hand so that its first round trip
                    # also takes the erasure barrier and empties the stage, and its last one also
                    # notifies: asyncpg's transaction() spends a round trip on BEGIN and on COMMIT.
                    try:
                        await connection.execute(_opening_sql(table, truncate=truncate))
                        inserted = await self._stage_and_insert(connection, table, rows, stream)
                        await connection.execute(
                            ";".join([NOTIFY_SQL[table], "COMMIT"] if table in NOTIFY_SQL else ["COMMIT"])
                        )
                    except BaseException:
                        if connection.is_in_transaction():
                            # (a connection this fails on is closed by the pool on release)
                            with contextlib.suppress(Exception):
                                await connection.execute("ROLLBACK")
                        raise
            except TRANSIENT_ERRORS:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
                continue
            # rows that went through the stage since its last TRUNCATE, this batch's included
            self._staged_rows[stage_key] = len(rows) + (
                0 if truncate else self._staged_rows.get(stage_key, 0)
            )
            self.counters.batches += 1
            self.counters.rows_written[table] += inserted
            self.counters.duplicate_rows += len(rows) - inserted
            return inserted
        raise AssertionError("unreachable")

    @staticmethod
    async def _stage_and_insert(
        connection: asyncpg.Connection, table: str, rows: list[tuple], stream: bytearray | None
    ) -> int:
        """COPY into the (emptied) stage, take the table's locks, insert; returns the new rows."""
        if stream is not None:
            # a memoryview: asyncpg reads bytes as a file name
            await connection.copy_to_table(
                stage_table(table), source=memoryview(stream), columns=columns(table), format="binary"
            )
        else:
            await connection.copy_records_to_table(
                stage_table(table), records=_yielding(rows), columns=columns(table)
            )
        if table in LOCK_SQL:
            await connection.execute(LOCK_SQL[table])
        if table in RETURNS_COUNT:
            return await connection.fetchval(INSERT_SQL[table])
        status = await connection.execute(INSERT_SQL[table])
        return int(status.rsplit(" ", 1)[1])

    async def _store(self, table: str, batch: _Batch) -> list[_Result]:
        """Commits a batch; if Postgres rejects its content, commits row by row and drops only the
        rejected rows. Connectivity errors propagate (the caller spools)."""
        try:
            await self._commit(table, batch.rows)
            return ["stored"] * len(batch.waiters)
        except CONNECTIVITY_ERRORS:
            raise
        except Exception as exc:
            log.error(
                "log writer: Postgres rejected a %s batch of %d rows (%s); retrying row by row",
                table,
                len(batch.rows),
                _describe(exc),
            )
        rejected: list[int] = []
        first_error: BaseException | None = None
        for index, row in enumerate(batch.rows):
            try:
                await self._commit(table, [row])
            except CONNECTIVITY_ERRORS:
                raise
            except Exception as exc:
                rejected.append(index)
                first_error = first_error or exc
        if rejected:
            self.counters.dropped_rows += len(rejected)
            log.error(
                "log writer: dropped %d of %d %s rows that Postgres rejected (first: %s)",
                len(rejected),
                len(batch.rows),
                table,
                _describe(first_error) if first_error else "?",
            )
        return [
            RowsRejectedError(f"Postgres rejected {table} rows ({_describe(first_error)})")
            if first_error is not None and any(start <= index < end for index in rejected)
            else "stored"
            for start, end, _ in batch.waiters
        ]

    # ---- spool and recovery

    def _go_offline(self, exc: BaseException) -> None:
        if self._online:
            log.warning(
                "log writer: Postgres unreachable (%s); spooling to %s until it returns",
                _describe(exc),
                self._spool.directory,
            )
        self._online = False
        self._drained.clear()
        self._start_recovery()

    def _start_recovery(self) -> None:
        self._online = False
        self._drained.clear()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())

    async def _to_spool(self, table: str, rows: list[tuple]) -> WriteOutcome:
        """Appends rows to the spool ("spooled"); raises SpoolFullError when there is no room."""
        payload = Spool.encode(rows)
        async with self._spool_lock:
            if self._spool.size + len(payload) > self._spool_max_bytes:
                self.counters.dropped_rows += len(rows)
                if not self._spool_full:
                    self._spool_full = True
                    log.error(
                        "log writer: spool %s is full (%d of %d bytes) while Postgres is unreachable; "
                        "refusing new rows until it drains (dropped_rows counts them)",
                        self._spool.directory,
                        self._spool.size,
                        self._spool_max_bytes,
                    )
                raise SpoolFullError(table)
            await asyncio.to_thread(self._spool.append, table, payload)
            self._spool_full = False
        self.counters.spooled_rows += len(rows)
        return "spooled"

    async def _recover(self) -> None:
        """Probes Postgres with capped backoff; once it answers, new batches go straight to it
        again while the spool is replayed oldest first. Replaying before going online would never
        finish under steady traffic: new batches would reach the spool as fast as old ones leave."""
        delay = RETRY_INITIAL_S
        while True:
            try:
                if self._pool is None:
                    self._pool = await self._create_pool()
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection:
                    await connection.fetchval("SELECT 1")
                if not self._online:
                    log.info(
                        "log writer: Postgres reachable; replaying %d spooled batches",
                        len(self._spool.segments),
                    )
                self._online = True
                if self._spool.segments:
                    async with self._replaying():
                        await self._replay(self._spool, self._spool_lock)
                async with self._spool_lock:
                    if self._online and not self._spool.segments:
                        self._drained.set()
                        return
                continue  # an outage blip spooled more during the replay
            except CONNECTIVITY_ERRORS:
                self._online = False
            except Exception:
                log.exception("log writer: replay failed; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    @contextlib.asynccontextmanager
    async def _replaying(self) -> AsyncIterator[None]:
        """While a spool replays: `caught_up` is false here, and a shared advisory lock on a
        connection of its own tells every process that stored rows are incomplete. That lock is
        best effort: a replay does not wait for a spare connection (closing the session releases
        the lock)."""
        self._replays += 1
        connection: asyncpg.Connection | None = None
        try:
            try:
                connection = await asyncpg.connect(**self._dsn, timeout=CONNECT_TIMEOUT_S)
                await connection.execute(f"SELECT pg_advisory_lock_shared({REPLAY_LOCK_KEY})")
            except (asyncpg.PostgresError, *CONNECTIVITY_ERRORS) as exc:
                log.warning(
                    "log writer: replaying without the replay lock (%s); other processes may judge a "
                    "click before its spooled impression arrives",
                    _describe(exc),
                )
            yield
        finally:
            self._replays -= 1
            if connection is not None:
                try:
                    await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT_S)
                except (TimeoutError, *CONNECTIVITY_ERRORS):
                    connection.terminate()

    async def _replay(self, spool: Spool, lock: asyncio.Lock) -> int:
        """Commits `spool`'s segments in order, consecutive ones of a table together (up to
        flush_rows rows), deleting them only after their transaction committed; `lock` guards
        the spool against appends. Returns the rows replayed."""
        segments = spool.segments
        replayed = 0
        index = 0
        while index < len(segments):
            table = segments[index].table
            group, rows = [], []
            while index < len(segments) and segments[index].table == table and len(rows) < self._flush_rows:
                segment = segments[index]
                index += 1
                try:
                    rows.extend(await asyncio.to_thread(spool.read, segment))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    async with lock:
                        kept = await asyncio.to_thread(spool.quarantine, segment)
                    log.error(
                        "log writer: spool segment unreadable (%s); moved to %s", type(exc).__name__, kept
                    )
                    continue
                group.append(segment)
            if not group:
                continue
            await self._store(table, _Batch(rows, [(0, len(rows), None)]))
            async with lock:
                for segment in group:
                    await asyncio.to_thread(spool.remove, segment)
            self.counters.replayed_rows += len(rows)
            replayed += len(rows)
        return replayed

    async def _adopt_orphans(self, base: Path) -> None:
        """Replays, every ADOPT_EVERY_S while caught up, the spool folders under `base` that no
        live process holds: a worker that is gone left them, and the first free slot a new worker
        takes need not be theirs (fewer workers now, or a restart while others ran)."""
        own = self._spool.directory.resolve()

        def left_behind() -> list[Path]:
            if not base.is_dir():
                return []
            return sorted(
                folder
                for folder in base.iterdir()
                if folder.is_dir() and folder.resolve() != own and any(folder.glob("*.seg"))
            )

        while True:
            await self._drained.wait()
            for folder in await asyncio.to_thread(left_behind):
                if not self._online:
                    break
                spool = Spool(folder)
                try:
                    await asyncio.to_thread(spool.open)
                except SpoolLockedError:
                    continue  # a live process owns it and replays it itself
                try:
                    if spool.segments:
                        log.info(
                            "log writer: replaying %d batches left in %s by a process that is gone",
                            len(spool.segments),
                            folder,
                        )
                        async with self._replaying():
                            self.counters.adopted_rows += await self._replay(spool, asyncio.Lock())
                except CONNECTIVITY_ERRORS as exc:
                    log.warning("log writer: adopting %s paused (%s)", folder, _describe(exc))
                except Exception:
                    log.exception("log writer: adopting %s failed; retrying later", folder)
                finally:
                    await asyncio.to_thread(spool.close)
            await asyncio.sleep(ADOPT_EVERY_S)
