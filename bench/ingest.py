"""Event-ingest rows/s through LogWriter as a ratio to raw asyncpg COPY at the same batch size.

    .venv/bin/python bench/ingest.py [--database-url URL] [--batch-rows 500] [--batches 120]
                                     [--concurrency 16] [--repeats 3] [--write-benchmarks]

Both paths write pre-built user_events rows into the same database in the same run, alternating
(raw, writer, raw, writer …) so that table growth and machine noise fall on both; each figure is
the median over the repeats. Raw: `concurrency` tasks each COPY whole batches straight into
user_events over a pool as large as the writer's. Writer: `concurrency` tasks each
``await writer.write("user_events", batch)``, i.e. the durable, idempotent path (COPY into staging,
INSERT … ON CONFLICT DO NOTHING, commit) that an event POST waits on.

Without --database-url an embedded Postgres is started in a temporary folder. With it, the rows
written are deleted at the end. --write-benchmarks puts the table into BENCHMARKS.md under
"## Serving path" / "### Event ingest".
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg

from adserve.db.engine import EmbeddedPostgres, asyncpg_dsn
from adserve.db.migrate import upgrade
from adserve.db.rows import columns, make_row
from adserve.events.writer import POOL_MAX_SIZE, LogWriter
from adserve.settings import WriterSettings

__all__ = ["main"]

BENCH_USER = "bench-ingest"
BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def _batches(batch_rows: int, n_batches: int) -> list[list[tuple]]:
    now = datetime.now(UTC)
    return [
        [
            make_row(
                "user_events",
                id=uuid.uuid4(),
                user_id=BENCH_USER,
                event_type="product_view",
                ts=now,
                item_id=f"sku-{i % 997}",
                category="shoes",
                price=49.9,
            )
            for i in range(batch_rows)
        ]
        for _ in range(n_batches)
    ]


async def _drive(batches: list[list[tuple]], concurrency: int, write_batch) -> float:
    """Rows/s for `concurrency` tasks writing the batches between them."""
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            await write_batch(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(map(len, batches)) / (time.perf_counter() - started)


async def _raw(url: str, batches: list[list[tuple]], concurrency: int) -> float:
    pool = await asyncpg.create_pool(**asyncpg_dsn(url), min_size=POOL_MAX_SIZE, max_size=POOL_MAX_SIZE)
    names = columns("user_events")

    async def copy(batch: list[tuple]) -> None:
        async with pool.acquire() as connection:
            await connection.copy_records_to_table("user_events", records=batch, columns=names)

    try:
        return await _drive(batches, concurrency, copy)
    finally:
        await pool.close()


async def _writer(url: str, batches: list[list[tuple]], concurrency: int, spool: Path) -> float:
    writer = LogWriter(url, WriterSettings(flush_rows=len(batches[0]), flush_ms=200), spool)
    await writer.start()
    try:

        async def write(batch: list[tuple]) -> None:
            outcome = await writer.write("user_events", batch)
            if outcome != "stored":
                raise RuntimeError(f"benchmark batch was {outcome}, not stored")

        return await _drive(batches, concurrency, write)
    finally:
        await writer.close()


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"raw": [], "writer": []}
    with tempfile.TemporaryDirectory(prefix="adserve-bench-spool-") as spool:
        # One unmeasured round of each warms the server's caches and both code paths.
        warm = _batches(args.batch_rows, 8)
        await _raw(url, warm[:4], args.concurrency)
        await _writer(url, warm[4:], args.concurrency, Path(spool))
        for _ in range(args.repeats):
            figures["raw"].append(await _raw(url, _batches(args.batch_rows, args.batches), args.concurrency))
            figures["writer"].append(
                await _writer(url, _batches(args.batch_rows, args.batches), args.concurrency, Path(spool))
            )
    return figures


def _table(figures: dict[str, list[float]], args: argparse.Namespace) -> str:
    raw, writer = statistics.median(figures["raw"]), statistics.median(figures["writer"])
    rows = args.batch_rows * args.batches
    return "\n".join(
        [
            "| path | batch rows | concurrent writers | rows per run | rows/s (median of "
            f"{args.repeats}) | ratio to raw COPY |",
            "|---|---:|---:|---:|---:|---:|",
            f"| raw asyncpg `copy_records_to_table` | {args.batch_rows} | {args.concurrency} | {rows} "
            f"| {raw:,.0f} | 1.00 |",
            f"| `LogWriter.write` (staging COPY + INSERT … ON CONFLICT, awaited) | {args.batch_rows} "
            f"| {args.concurrency} | {rows} | {writer:,.0f} | **{writer / raw:.2f}** (goal ≥ 0.5) |",
        ]
    )


def _machine() -> str:
    model = "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu)[1].strip()  # type: ignore[index]
    except (OSError, subprocess.CalledProcessError, TypeError):
        pass
    return f"{model} (lscpu model name), 2 cores shared with other work"


def _write_benchmarks(table: str, where: str) -> None:
    section = (
        "### Event ingest\n\n"
        f"Machine: {_machine()}; {date.today().isoformat()}; Postgres: {where}, on the same machine. "
        "`bench/ingest.py`: user_events rows/s, both paths in the same run on the same database.\n\n"
        f"{table}\n"
    )
    text = BENCHMARKS.read_text()
    serving_start = text.index("## Serving path")
    next_section = text.find("\n## ", serving_start + 1)
    serving_end = len(text) if next_section == -1 else next_section + 1
    serving = text[serving_start:serving_end]
    existing = re.search(r"### Event ingest\n.*?(?=\n### |\Z)", serving, flags=re.S)
    if existing:
        serving = serving[: existing.start()] + section.rstrip("\n") + serving[existing.end() :]
    else:
        serving = serving.rstrip("\n") + "\n\n" + section
    if not serving.endswith("\n\n"):
        serving = serving.rstrip("\n") + "\n\n"
    BENCHMARKS.write_text(text[:serving_start] + serving + text[serving_end:])


async def _cleanup(url: str) -> None:
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        await connection.execute("DELETE FROM user_events WHERE user_id = $1", BENCH_USER)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--batch-rows", type=int, default=500)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-benchmarks", action="store_true")
    args = parser.parse_args()

    embedded = None
    url = args.database_url
    if not url:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="adserve-bench-pg-")))
        url = embedded.start()
        upgrade(url)
    try:
        figures = asyncio.run(measure(url, args))
        if args.database_url:
            asyncio.run(_cleanup(url))
    finally:
        if embedded is not None:
            embedded.stop()
    table = _table(figures, args)
    print(table)
    if args.write_benchmarks:
        _write_benchmarks(
            table, "the server given by --database-url" if args.database_url else "embedded (pgserver)"
        )


if __name__ == "__main__":
    main()
