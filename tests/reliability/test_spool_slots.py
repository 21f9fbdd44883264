"""Second paragraph: each process takes the first free spool slot, so after a run with more
workers than the next one, the slots beyond the new worker count were never replayed. A writer now
also replays every slot that no live process holds."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import msgspec

from adserve.app import _start_writer
from adserve.db.engine import asyncpg_dsn
from tests.integration.events.rows import UNREACHABLE_URL, event_row

DEADLINE_S = 20.0
EARLIER_WORKERS = 3


async def test_every_slot_is_replayed_by_fewer_workers(settings, database_url, tmp_path) -> None:
    base = tmp_path / "spool"
    settings = msgspec.structs.replace(
        settings, writer=msgspec.structs.replace(settings.writer, spool_dir=str(base))
    )
    # Three workers while Postgres was away: one slot each, one spooled event each.
    earlier = [await _start_writer(UNREACHABLE_URL, settings) for _ in range(EARLIER_WORKERS)]
    events = [event_row(user_id=f"slots-{uuid.uuid4().hex[:8]}") for _ in earlier]
    for writer, event in zip(earlier, events, strict=True):
        assert await writer.write("user_events", [event]) == "spooled"
    for writer in earlier:
        await writer.close()
    assert sorted(path.name for path in base.iterdir()) == ["slot-0", "slot-1", "slot-2"]

    # One worker now, Postgres back.
    writer = await _start_writer(database_url, settings)
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        ids = [event[0] for event in events]
        stored = 0
        stop = time.monotonic() + DEADLINE_S
        while time.monotonic() < stop:
            stored = await connection.fetchval(
                "SELECT count(*) FROM user_events WHERE id = ANY($1::uuid[])", ids
            )
            if stored == len(ids):
                break
            await asyncio.sleep(0.1)  # polling interval of a condition wait
        assert stored == len(ids), f"{stored} of {len(ids)} spooled events replayed"
    finally:
        await connection.close()
        await writer.close()
    assert not list(base.glob("slot-*/*.seg"))
