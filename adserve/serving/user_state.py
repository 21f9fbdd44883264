"""Per-process user state: recent behaviour and frequency-cap serves, kept in memory.

A decision needs the user's recent events (for the scorer) and when each frequency-capped
campaign last served them (for the caps). Reading both from Postgres cost two queries per
decision. Here they are loaded once per user and kept in a bounded LRU, and kept true by
Postgres itself: the log writer publishes, in the transaction that commits them,

- `e <user_key>` on `USER_STATE_CHANNEL` for every user whose behaviour events were stored or
  erased: every process drops its copy and the next decision reloads it;
- `s <user_key> <campaign_id> <epoch_us>` for every decision that served a capped campaign:
  every process adds the serve to its copy.

A decision that serves a capped campaign does not wait for its row's commit: the serving process
publishes the `s` line itself (`publish_serves`, one NOTIFY shared by the serves of concurrent
decisions) before it answers, and the row follows within the writer's flush window. Until then
the row is not in Postgres, so a process keeps the serves it hears of for users it holds no
entry for (`PENDING_SERVE_S`) and adds them to the user's next load.

A process adds its own serves at decision time. The guarantee: a decision sees every change
another process committed or published before the decision arrived. Postgres signals the
listening sessions at commit, before the writing process answers its client, and sends a
session's notifications before the answer to its next query; so before a decision reads a kept
entry, or loads one with capped campaigns in play, a round trip on the LISTEN connection
(`SELECT 1`, one shared by every decision that arrived while the previous one was out) brings in
whatever was committed until then. Where that round trip takes longer than `SYNC_TIMEOUT_S`
(Postgres stalled) the decision uses what it has. An entry is never older than `max_age_s` (a
missed notification heals by then), and every entry is dropped when the LISTEN connection is
lost. A load that overlaps a notification about the same user is used once but not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from adserve.domain import BehaviourEvent, EventType

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["USER_STATE_CHANNEL", "UserState", "UserStateCache"]

log = logging.getLogger(__name__)

USER_STATE_CHANNEL = "adserve_user_state"
MAX_REFRESHING = 64  # users refreshed at event time at once; beyond, their next decision loads them
SYNC_TIMEOUT_S = 0.05  # a decision waits this long at most for the LISTEN connection's round trip
# A published serve's row is committed within the writer's flush window (200 ms by default); the
# serves heard of for users without an entry are kept far longer, for a writer that is slow.
PENDING_SERVE_S = 60.0
PUBLISH_TIMEOUT_S = 1.0  # beyond this a decision waits for its row's commit instead
NOTIFY_LINES = 100  # serves per notification (Postgres caps a payload at 8,000 bytes)
EVENT_TYPES = {member.value: member for member in EventType}  # a dict lookup; Enum() is slow

# Bounded in time so Postgres reads only the partitions of the last `history_days` days.
HISTORY_SQL = """
SELECT event_type, ts, item_id, category, price, query FROM user_events
WHERE user_id = $1 AND ts > $3 ORDER BY ts DESC LIMIT $2
"""

SERVED_SQL = """
SELECT campaign_id, ts FROM decisions
WHERE user_id = $1 AND ts > $2 AND campaign_id = ANY($3::bigint[])
"""


@dataclass(frozen=True, slots=True)
class UserState:
    history: tuple[BehaviourEvent, ...]
    served: dict[int, list[datetime]] | None  # None: unknown (Postgres unreachable)


@dataclass(slots=True)
class _Entry:
    history: tuple[BehaviourEvent, ...]
    with_history: bool
    campaigns: frozenset[int]  # capped campaigns whose serves were loaded
    since: datetime  # serves were loaded from this time on
    served: dict[int, dict[int, datetime]]  # campaign -> {epoch µs: serve time}
    loaded: float  # time.monotonic()

    def state(self) -> UserState:
        return UserState(
            self.history, {campaign: list(times.values()) for campaign, times in self.served.items()}
        )


def _release(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


def _epoch_us(ts: datetime) -> int:
    return round(ts.timestamp() * 1_000_000)


def _serve_line(user_key: str, campaign_id: int, ts: datetime) -> str:
    return f"s {user_key} {campaign_id} {_epoch_us(ts)}"


# One round trip for any number of serves, in a transaction that does not wait for its WAL flush
# (a notification lost to a crash of Postgres costs a cap at most one serve, as a crash would).
PUBLISH_SQL = (
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, payload) "
    "FROM unnest($2::text[]) AS payload"
)


def _payloads(lines: list[str]) -> list[str]:
    return ["\n".join(lines[i : i + NOTIFY_LINES]) for i in range(0, len(lines), NOTIFY_LINES)]


class UserStateCache:
    def __init__(
        self,
        pool: asyncpg.Pool,
        history_length: int,
        max_users: int = 100_000,
        max_age_s: float = 300.0,
        history_days: float = 30.0,
    ) -> None:
        self.pool = pool
        self.history_length = history_length
        self.history_days = history_days
        self.max_users = max_users
        self.max_age_s = max_age_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._epoch = 0  # bumped by every notification
        self._touched: dict[str, int] = {}  # user key -> epoch of its last notification
        self._floor = 0  # loads started before this epoch are not kept (_touched was pruned)
        self._listener: asyncpg.Connection | None = None  # the LISTEN connection, while it holds
        self._sync_next: asyncio.Future[None] | None = None  # the round trip decisions now wait for
        self._syncing: asyncio.Task[None] | None = None
        self.syncs = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.hits = 0
        self.loads = 0
        self.refreshed = 0
        # called with (user_key, state) after a refresh at event time; the pipeline sets it
        self.prepare: Callable[[str, UserState], Awaitable[None]] | None = None
        self._refreshing: set[str] = set()
        # serves heard of for users without an entry: user key -> (heard at, {campaign: {µs: ts}})
        self._pending: OrderedDict[str, tuple[float, dict[int, dict[int, datetime]]]] = OrderedDict()
        self._publish_next: tuple[list[str], asyncio.Future[bool]] | None = None
        self._publishing: asyncio.Task[None] | None = None
        self.published = 0  # notifications sent by publish_serves (round trips)

    @property
    def _listener_pid(self) -> int | None:
        """The LISTEN connection's backend, while it holds. A connection that closes is taken
        back by its pool at once, and its termination listener, which ends our hold, runs a loop
        turn later: in between the proxy refuses every call."""
        listener = self._listener
        if listener is None:
            return None
        try:
            return listener.get_server_pid()
        except asyncpg.InterfaceError:
            return None

    def counters(self) -> dict[str, int]:
        """This process's cache figures since start (`/ready`): users held, reads answered from
        memory and from Postgres (`loads` includes the reloads an event began: `refreshed`),
        freshness round trips and serve publications."""
        return {
            "users": len(self._entries),
            "hits": self.hits,
            "loads": self.loads,
            "refreshed": self.refreshed,
            "syncs": self.syncs,
            "publications": self.published,
        }

    # --- reading ----------------------------------------------------------------------------------

    async def get(self, user_key: str, with_history: bool, capped: list[int], since: datetime) -> UserState:
        if capped or (with_history and user_key in self._entries):
            # a notification on its way may drop or change the entry, or tell of a serve whose
            # row is not committed yet (a user without consent and no capped campaign in play:
            # nothing in it is read, nothing to wait for)
            await self._caught_up()
        entry = self._entries.get(user_key)
        if entry is not None and self._fits(entry, with_history, capped, since):
            self._entries.move_to_end(user_key)
            self.hits += 1
            return entry.state()
        started = self._epoch
        loaded = await self._load(user_key, with_history, capped, since)
        if loaded is None:
            return UserState(history=(), served=None)
        self.loads += 1
        self._add_pending(user_key, loaded)
        if self._connected.is_set() and started >= self._floor and self._touched.get(user_key, -1) <= started:
            self._entries[user_key] = loaded
            self._entries.move_to_end(user_key)
            while len(self._entries) > self.max_users:
                self._entries.popitem(last=False)
        return loaded.state()

    async def _caught_up(self) -> None:
        """Returns once every notification committed before the call has been applied, or
        `SYNC_TIMEOUT_S` after the round trip it waits for was asked. Decisions that arrive while
        a round trip is out share the next one."""
        if self._listener is None:
            return  # not listening: nothing is kept
        waiting = self._sync_next
        if waiting is None:
            loop = asyncio.get_running_loop()
            waiting = self._sync_next = loop.create_future()
            loop.call_later(SYNC_TIMEOUT_S, _release, waiting)
            if self._syncing is None:
                self._syncing = asyncio.create_task(self._sync_rounds(self._listener))
        await asyncio.shield(waiting)  # a cancelled decision must not cancel the others' round

    async def _sync_rounds(self, connection: asyncpg.Connection) -> None:
        try:
            while self._sync_next is not None:
                # decisions arriving during this round trip make the next one: this one may have
                # passed Postgres before their writers committed
                waiting, self._sync_next = self._sync_next, None
                try:
                    # the notifications Postgres holds for this session arrive before the answer,
                    # and asyncpg calls the listener before it wakes the caller
                    await connection.execute("SELECT 1")
                except Exception:
                    log.warning("user state sync failed; the LISTEN connection is checked")
                finally:
                    self.syncs += 1
                    _release(waiting)
        finally:
            self._syncing = None
            if self._sync_next is not None:
                _release(self._sync_next)  # cancelled meanwhile: release the waiters
            self._sync_next = None

    def _fits(self, entry: _Entry, with_history: bool, capped: list[int], since: datetime) -> bool:
        return (
            time.monotonic() - entry.loaded < self.max_age_s
            and (entry.with_history or not with_history)
            and entry.since <= since
            and entry.campaigns.issuperset(capped)
        )

    async def _load(
        self, user_key: str, with_history: bool, capped: list[int], since: datetime
    ) -> _Entry | None:
        loaded_at = time.monotonic()
        try:
            async with self.pool.acquire(timeout=1.0) as connection:
                history_since = datetime.now(UTC) - timedelta(days=self.history_days)
                rows = (
                    await connection.fetch(HISTORY_SQL, user_key, self.history_length, history_since)
                    if with_history
                    else []
                )
                served_rows = await connection.fetch(SERVED_SQL, user_key, since, capped) if capped else []
        except Exception:
            log.warning("user state unavailable; serving without history and skipping capped campaigns")
            return None
        history = tuple(
            BehaviourEvent(
                event_type=EVENT_TYPES[row["event_type"]],
                ts=row["ts"].timestamp(),
                item_id=row["item_id"],
                category=row["category"],
                price=None if row["price"] is None else float(row["price"]),
                query=row["query"],
            )
            for row in reversed(rows)
        )
        served: dict[int, dict[int, datetime]] = {}
        for row in served_rows:
            served.setdefault(row["campaign_id"], {})[_epoch_us(row["ts"])] = row["ts"]
        return _Entry(history, with_history, frozenset(capped), since, served, loaded_at)

    # --- keeping it true --------------------------------------------------------------------------

    def record_serve(self, user_key: str, campaign_id: int, ts: datetime) -> None:
        """This process served a capped campaign to the user."""
        self._add_serve(user_key, campaign_id, _epoch_us(ts), ts)

    def _add_serve(self, user_key: str, campaign_id: int, epoch_us: int, ts: datetime) -> None:
        """To the user's entry, or, without one, to the serves their next load adds (the row
        may not be committed yet)."""
        entry = self._entries.get(user_key)
        if entry is not None:
            entry.served.setdefault(campaign_id, {})[epoch_us] = ts
            return
        now = time.monotonic()
        _, served = self._pending.pop(user_key, (now, {}))
        served.setdefault(campaign_id, {})[epoch_us] = ts
        self._pending[user_key] = (now, served)
        while self._pending:
            heard, _ = next(iter(self._pending.values()))
            if now - heard <= PENDING_SERVE_S and len(self._pending) <= self.max_users:
                break
            self._pending.popitem(last=False)

    def _add_pending(self, user_key: str, entry: _Entry) -> None:
        pending = self._pending.get(user_key)
        if pending is None or time.monotonic() - pending[0] > PENDING_SERVE_S:
            return
        since_us = _epoch_us(entry.since)
        for campaign, times in pending[1].items():
            if campaign in entry.campaigns:
                for epoch_us, ts in times.items():
                    if epoch_us > since_us:
                        entry.served.setdefault(campaign, {})[epoch_us] = ts

    async def publish_serves(self, serves: list[tuple[str, int, datetime]]) -> bool:
        """Tells every serving process (this one included) of capped serves whose rows are not
        committed yet; True once Postgres has delivered the notification, False where it could not
        be sent (the caller then waits for the rows' commit). Serves that arrive while a
        notification is out share the next one."""
        if not serves:
            return True
        loop = asyncio.get_running_loop()
        if self._publish_next is None:
            self._publish_next = ([], loop.create_future())
        lines, sent = self._publish_next
        lines.extend(_serve_line(*serve) for serve in serves)
        if self._publishing is None:
            self._publishing = asyncio.create_task(self._publish_rounds())
        return await asyncio.shield(sent)  # a cancelled decision must not cancel the others' round

    async def _publish_rounds(self) -> None:
        sent: asyncio.Future[bool] | None = None
        try:
            while self._publish_next is not None:
                (lines, sent), self._publish_next = self._publish_next, None
                try:
                    async with self.pool.acquire(timeout=PUBLISH_TIMEOUT_S) as connection:
                        await connection.execute(
                            PUBLISH_SQL, USER_STATE_CHANNEL, _payloads(lines), timeout=PUBLISH_TIMEOUT_S
                        )
                    self.published += 1
                    outcome = True
                except Exception:
                    log.warning("publishing capped serves failed; their decisions wait for the commit")
                    outcome = False
                if not sent.done():
                    sent.set_result(outcome)
        finally:
            self._publishing = None
            # cancelled meanwhile (the process shuts down): the decisions waiting on this round
            # or the next wait for their rows' commit instead
            for waiting in (sent, self._publish_next[1] if self._publish_next else None):
                if waiting is not None and not waiting.done():
                    waiting.set_result(False)
            self._publish_next = None

    def forget(self, user_key: str) -> None:
        """This process changed the user's behaviour (the notification follows; do not wait)."""
        self._touch(user_key)
        self._entries.pop(user_key, None)

    def _touch(self, user_key: str) -> None:
        self._epoch += 1
        self._touched[user_key] = self._epoch
        if len(self._touched) > 4 * self.max_users:
            self._touched.clear()
            self._floor = self._epoch + 1

    def apply(self, payload: str) -> None:
        """One notification: lines of `e <key>` or `s <key> <campaign> <epoch_us>`."""
        for line in payload.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "e":
                entry = self._entries.get(rest)
                self.forget(rest)
                if entry is not None and self.prepare is not None:
                    self._refresh_soon(rest, entry)
            elif kind == "s":
                user_key, campaign, epoch_us = rest.rsplit(" ", 2)
                self._touch(user_key)
                ts = datetime.fromtimestamp(int(epoch_us) / 1_000_000, UTC)
                self._add_serve(user_key, int(campaign), int(epoch_us), ts)

    def _refresh_soon(self, user_key: str, entry: _Entry) -> None:
        """Encode at event time: a user this process was serving changed their behaviour, so
        their state is reloaded now and handed to `prepare` (the scorer encodes it in a worker
        thread), and their next decision finds everything ready."""
        if user_key in self._refreshing or len(self._refreshing) >= MAX_REFRESHING:
            return  # already on its way, or too many at once: the next decision loads it
        self._refreshing.add(user_key)
        task = asyncio.create_task(self._refresh(user_key, entry))
        task.add_done_callback(lambda _: self._refreshing.discard(user_key))

    async def _refresh(self, user_key: str, entry: _Entry) -> None:
        try:
            state = await self.get(user_key, entry.with_history, sorted(entry.campaigns), entry.since)
            if self.prepare is not None and state.history:
                await self.prepare(user_key, state)
            self.refreshed += 1
        except Exception:
            log.warning("refreshing a user's state after their event failed; their next decision loads it")

    def _on_notification(self, connection: object, pid: int, channel: str, payload: str) -> None:
        self.apply(payload)

    def clear(self) -> None:
        self._entries.clear()
        self._pending.clear()
        self._touched.clear()
        self._floor = self._epoch = self._epoch + 1

    def __len__(self) -> int:
        return len(self._entries)

    # --- LISTEN -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="user-state-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout=5.0)

    async def close(self) -> None:
        self.prepare = None
        await self._stop_syncing()
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _stop_syncing(self) -> None:
        task = self._syncing
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen_forever(self) -> None:
        """Holds a LISTEN connection; while it is down nothing is cached (every decision reads
        Postgres), so no notification can be missed unseen."""
        while True:
            lost = asyncio.Event()
            try:
                connection = await self.pool.acquire()
            except Exception:
                await asyncio.sleep(1.0)  # Postgres away: retry the LISTEN connection
                continue
            try:
                connection.add_termination_listener(lambda *_, lost=lost: lost.set())
                await connection.add_listener(USER_STATE_CHANNEL, self._on_notification)
                self.clear()  # anything cached before this LISTEN may have missed a change
                self._listener = connection
                self._connected.set()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=5.0)
                    if not lost.is_set() and connection.is_closed():
                        lost.set()
            except Exception:
                log.warning("user state LISTEN lost; reading Postgres until it is back")
            finally:
                self._connected.clear()
                self._listener = None
                await self._stop_syncing()  # its round trip must not hold the connection released
                self.clear()
                with contextlib.suppress(Exception):
                    await connection.remove_listener(USER_STATE_CHANNEL, self._on_notification)
                with contextlib.suppress(Exception):
                    await self.pool.release(connection)
            await asyncio.sleep(0.5)  # before reconnecting
