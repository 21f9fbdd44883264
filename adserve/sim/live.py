"""The simulated market against a running server: the demo's catalogue and its background traffic.

`seed_sim_catalog(session, world)` loads the world's advertisers, campaigns (budgets, caps,
targeting), creatives (banners served by the app) and placements through the admin services.

`python -m adserve.sim.live --url URL --key ADMIN_KEY` (started by `adserve demo` in its own
process, so it never slows the server's event loop) waits for `/ready`, then replays the world's
traffic through the real HTTP API in real time: behaviour events, decisions, then what a
browser running the ad tag does. The world runs on the wall clock (`real_time_world`: its users
visit often enough for `--rate` pages per second, and its last `HISTORY_S` of behaviour is sent as
history first); every page is sent when its simulated time comes, with its events' own
timestamps, so the time structure the service sees (a view 40 s before the ad request, a session
an hour ago) is the one the simulator's click model uses. Its requests carry a browser's
User-Agent (one per simulated device) and headers, so the service's bot filter has no reason to
reject them. The tag fires an ad's impression URL once the ad has been viewable for one second,
so the driver fires it one second after the decision; when the simulator's click model (`Traffic.outcome`: the oracle's
P(click) against the request's own draw) says the shopper clicks, the click URL follows at the
model's click time, never sooner than a second after the impression was recorded. Impressions
and clicks wait in a small queue fired when due, while the driver waits for the next page's time. Every drawn click is a
valid click in Postgres: the progress line prints both counts (drawn and fired by the driver;
valid clicks, impressions, CTR and spend as the service recorded them), and reads what serves
from `/ready`'s `serving` object (the scorer and policy the pipeline uses now).

Every few seconds it prints one line: decisions served, CTR so far and over the last window
(with what the oracle and a uniform-random policy would expect on the same requests), clicks
drawn and fired, the service's own figures and the scorer and policy serving. The oracle picks
among every creative the targeting allows; the service may serve only those its rules leave
(frequency caps, competitive exclusion, budgets and pacing). Given the database
(`ADSERVE_DEMO_DATABASE_URL`, set by `adserve demo`), the line also shows the oracle and uniform
figures over each decision's own eligible set, read from its row in `decisions`
(`candidate_ids`): the same comparison `adserve simulate` makes, where the policy and the oracle
choose from one list.

One module, past 450 lines, on purpose: the demo's shopper driver, its tag rules (viewability,
clicks after impressions) and its progress line read the same counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import os
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from adserve.sim.oracle import Oracle, expected_values
from adserve.sim.traffic import Traffic, diurnal_factor
from adserve.sim.world import World, WorldConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.ext.asyncio import AsyncSession

    from adserve.sim.traffic import PageView

__all__ = ["SVG_CATEGORY", "LiveDriver", "main", "real_time_world", "seed_sim_catalog", "visit_speedup"]

# The app draws banners for a few categories (serving/pages.py); each sim category borrows one.
SVG_CATEGORY = {
    "electronics": "audio",
    "fashion": "shoes",
    "home": "home",
    "beauty": "kitchen",
    "sports": "camping",
    "books": "home",
    "toys": "phones",
    "garden": "camping",
    "grocery": "kitchen",
    "automotive": "phones",
}


def banner_url(category: str, width: int, height: int) -> str:
    return f"/static/creatives/{SVG_CATEGORY.get(category, 'home')}-{width}x{height}.svg"


async def seed_sim_catalog(session: AsyncSession, world: World, visit_speedup: float = 1.0) -> int:
    """Creates the world's catalogue unless advertisers exist; returns the creatives created.

    `visit_speedup`: how many times more often the demo's shoppers visit than the world's
    (`visit_speedup(rate)`). Budgets are multiplied and frequency-cap windows divided by it, so
    spend against budget, pacing and caps bind as they would at the world's own visit rate,
    instead of pacing out most campaigns within minutes.
    """
    from sqlalchemy import select

    from adserve.admin import schemas
    from adserve.admin.services import AdvertiserService, CampaignService, CreativeService, PlacementService
    from adserve.db.tables import Advertiser
    from adserve.demo import DEMO_PLACEMENTS

    if (await session.execute(select(Advertiser.id).limit(1))).first() is not None:
        return 0
    for p in world.placements:
        await PlacementService(session, None).create(
            schemas.PlacementCreate(
                key=p.key, width=p.width, height=p.height, page_type=p.page_type, position=p.position
            )
        )
    # the /demo shop page's own slots, so it shows the same ads
    for placement in DEMO_PLACEMENTS:
        if placement.key not in world.placement_by_key:
            await PlacementService(session, None).create(placement)
    advertiser_ids: dict[int, int] = {}
    for a in world.advertisers:
        row = await AdvertiserService(session, None).create(schemas.AdvertiserCreate(name=a.name))
        advertiser_ids[a.id] = row.id
    campaign_ids: dict[int, int] = {}
    for c in world.campaigns:
        cap = (
            schemas.FrequencyCap(
                impressions=c.frequency_cap, window_s=max(60, round(c.frequency_window_s / visit_speedup))
            )
            if c.frequency_cap and c.frequency_window_s
            else None
        )
        row = await CampaignService(session, None).create(
            schemas.CampaignCreate(
                name=c.name,
                pricing=c.pricing.value,  # type: ignore[arg-type]
                bid=c.bid,
                daily_budget=round(c.daily_budget * visit_speedup, 2),
                total_budget=round(c.total_budget * visit_speedup, 2),
                targeting=schemas.Targeting(
                    geo=list(c.targeting.get("geo", [])),
                    device=list(c.targeting.get("device", [])),  # type: ignore[arg-type]
                ),
                frequency_cap=cap,
            ),
            advertiser_ids[c.advertiser_id],
        )
        campaign_ids[c.id] = row.id
    for k in world.creatives:
        await CreativeService(session, None).create(
            schemas.CreativeCreate(
                campaign_id=campaign_ids[k.campaign_id],
                title=k.title,
                width=k.width,
                height=k.height,
                image_url=banner_url(k.category, k.width, k.height),
                landing_url=k.landing_url,
                category=k.category,
                brand=k.brand,
                product_ids=list(k.product_ids),
                price=k.price,
            )
        )
    return len(world.creatives)


# Browsers as the simulated devices use them (current stable releases).
BROWSER_USER_AGENTS = {
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    ),
    "mobile": (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Mobile Safari/537.36"
    ),
    "tablet": (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1"
    ),
}
BROWSER_HEADERS = {"Accept-Language": "en-US,en;q=0.9", "Accept-Encoding": "gzip, deflate"}
IMAGE_ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
PAGE_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
VIEWABLE_S = 1.0  # the tag fires the impression after one continuous second in view
CLICK_AFTER_IMPRESSION_S = 1.0  # a click lands at least this long after its impression was recorded
DRAIN_TIMEOUT_S = 60.0
SERVICE_DAYS = 2  # /admin/v1/analytics/daily window read for the service's own figures


@dataclass(order=True, slots=True)
class _Pending:
    """An impression or a click of a served ad, due at `due` (time.monotonic())."""

    due: float
    seq: int
    kind: str = field(compare=False)  # "impression" | "click"
    url: str = field(compare=False)
    user_agent: str = field(compare=False)
    # impressions of a drawn click: its URL and its time after the decision (the click model's)
    click_url: str | None = field(default=None, compare=False)
    click_delay_s: float | None = field(default=None, compare=False)


PAGES_PER_SESSION = 6.5  # measured on the default world: 200,000 pages of seed 7's traffic
# The shop was open before the ad server: this much of the world's traffic (its sessions take
# minutes to reach the steady page rate) is sent as behaviour history only, in batches, at start.
HISTORY_S = 900.0


def visit_speedup(rate: float, now: float | None = None) -> float:
    """How many times a shopper's 1.5 sessions a day `rate` pages per second needs from the
    world's users, the diurnal swing taken out at the hour of `now` (at 20 pages/s about 60 at
    the 15:00 UTC peak, 180 at the 03:00 trough)."""
    start = time.time() if now is None else now
    natural = WorldConfig()
    sessions = rate * 86_400.0 / (natural.n_users * PAGES_PER_SESSION * diurnal_factor(start))
    return sessions / natural.sessions_per_user_per_day


def real_time_world(seed: int, rate: float, now: float | None = None) -> World:
    """The demo's world on the wall clock: ad requests from `now`, about `rate` pages per second.

    The catalogue is the one `World(WorldConfig(seed=seed))` has (start time and visit frequency
    draw nothing); only how often each user comes back is raised, by `visit_speedup(rate)`. The
    world's traffic starts `HISTORY_S` before `now`.
    """
    start = time.time() if now is None else now
    sessions = WorldConfig().sessions_per_user_per_day * visit_speedup(rate, start)
    return World(WorldConfig(seed=seed, start_ts=start - HISTORY_S, sessions_per_user_per_day=sessions))


@dataclass(slots=True)
class _Served:
    """One served decision as the simulator saw it, for the progress line's window."""

    decision_id: str
    clicked: bool
    chosen_p: float  # the oracle's P(click) of the served ad
    best: float  # the oracle's best among every creative the targeting allows
    mean: float  # a uniform-random pick among them
    truth: dict[int, tuple[float, float]]  # sim creative id -> (P(click), expected revenue) here
    chosen_value: float = 0.0  # the served ad's expected revenue (bid × P(click) or CPM / 1000)
    # (best, mean) P(click), (best, mean) expected revenue and the P(click) of the revenue
    # oracle's pick among the creatives the service could serve (its row's candidate_ids); None
    # until the row has been read
    eligible: tuple[float, float, float, float, float] | None = None


class LiveDriver:
    """Replays a world's traffic through the HTTP API like browsers would; keeps the running score."""

    def __init__(
        self,
        url: str,
        admin_key: str,
        world: World,
        window: int = 2000,
        out: TextIO | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.world = world
        self.oracle = Oracle(world)
        self.traffic = Traffic(world, self.oracle)
        self.out = out or sys.stdout
        headers = {**BROWSER_HEADERS, "User-Agent": BROWSER_USER_AGENTS["desktop"]}
        self.client = httpx.Client(base_url=self.url, timeout=10.0, headers=headers)
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        self.creatives: dict[int, int] = {}  # database creative id -> sim creative id
        self.decisions = 0
        self.clicks = 0  # drawn by the simulator's click model
        self.impressions_fired = 0
        self.clicks_fired = 0
        self.errors = 0
        self.oracle_sum = 0.0
        self.uniform_sum = 0.0
        self.recent: deque[_Served] = deque(maxlen=window)
        # the service's decision log, for the oracle over each decision's eligible set
        self.database_url = os.environ.get("ADSERVE_DEMO_DATABASE_URL") or None
        self.pending: list[_Pending] = []
        self._seq = 0
        self._service_base: tuple[int, int, float] | None = None
        self.parent_pid: int | None = None  # stop as soon as this process is no longer our parent
        # wall clock minus the world's: the time spent waiting for the server before the first page
        self.clock_offset = 0.0

    # -- the service ---------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url} not ready after {timeout_s:.0f}s")

    def load_creatives(self) -> None:
        offset = 0
        while True:
            page = self.client.get(
                "/admin/v1/creatives", params={"limit": 500, "offset": offset}, headers=self.admin
            ).json()
            for item in page["items"]:
                creative = self.world.creative_by_landing_url.get(item["landing_url"])
                if creative is not None:
                    self.creatives[item["id"]] = creative.id
            offset += len(page["items"])
            if not page["items"] or offset >= page.get("total", offset):
                return

    def serving(self) -> dict[str, Any] | None:
        """`/ready`'s `serving` object: the scorer and policy the pipeline uses right now."""
        try:
            return self.client.get("/ready").json().get("serving") or None
        except Exception:
            return None

    def model_versions(self) -> str:
        serving = self.serving()
        if not serving or "scorer" not in serving:
            return "serving ?"
        scorer, policy = serving["scorer"], serving["policy"]
        head = ""
        if scorer.get("click_trained"):
            # a fusion may give the trained head no weight; then it does not run
            head = " (click head)" if scorer.get("click_weighed", True) else " (click head trained, weight 0)"
        learned = policy.get("examples_learned")
        learned_text = f" ({learned:,} learned)" if policy.get("kind") == "vw" and learned else ""
        objective = f" · objective {policy['objective']}" if policy.get("objective") else ""
        return (
            f"serving scorer {scorer['kind']} {scorer['version']}{head} · "
            f"policy {policy['kind']} {policy['version']}{learned_text}{objective}"
        )

    def service_totals(self) -> tuple[int, int, float] | None:
        """(impressions, valid clicks, spend) the service recorded over the last days, live."""
        try:
            response = self.client.get(
                "/admin/v1/analytics/daily", params={"days": SERVICE_DAYS}, headers=self.admin
            )
            items = response.json()["items"]
        except Exception:
            return None
        return (
            sum(int(i["impressions"]) for i in items),
            sum(int(i["clicks"]) for i in items),
            sum(float(i["spend"]) for i in items),
        )

    def service_figures(self) -> str:
        totals = self.service_totals()
        if totals is None or self._service_base is None:
            return "service ?"
        impressions, clicks, spend = (
            now - base for now, base in zip(totals, self._service_base, strict=True)
        )
        ctr = clicks / impressions if impressions else 0.0
        return f"service {impressions:,} impressions, {clicks:,} valid clicks ({ctr:.2%}), spend {spend:,.2f}"

    # -- the browser ---------------------------------------------------------------------------

    def _schedule(self, item: _Pending) -> None:
        heapq.heappush(self.pending, item)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _fire(self, item: _Pending) -> None:
        if item.kind == "impression":
            response = self.client.get(
                item.url, headers={"User-Agent": item.user_agent, "Accept": IMAGE_ACCEPT}
            )
            if response.status_code != 200:
                self.errors += 1
                return
            self.impressions_fired += 1
            if item.click_url is not None and item.click_delay_s is not None:
                due = time.monotonic() + max(item.click_delay_s - VIEWABLE_S, CLICK_AFTER_IMPRESSION_S)
                self._schedule(_Pending(due, self._next_seq(), "click", item.click_url, item.user_agent))
            return
        response = self.client.get(
            item.url,
            headers={"User-Agent": item.user_agent, "Accept": PAGE_ACCEPT},
            follow_redirects=False,
        )
        if response.status_code != 302:
            self.errors += 1
            return
        self.clicks_fired += 1

    def fire_due(self, now: float | None = None) -> None:
        """Fires every queued impression and click whose time has come, oldest first."""
        now = time.monotonic() if now is None else now
        while self.pending and self.pending[0].due <= now:
            item = heapq.heappop(self.pending)
            try:
                self._fire(item)
            except Exception as error:  # a restart or a timeout must not end the demo
                self.errors += 1
                print(f"[sim] {item.kind} failed: {type(error).__name__}: {error}", file=self.out, flush=True)

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Waits for the queued impressions and clicks and fires them (the end of a bounded run)."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self.pending[0].due - time.monotonic(), 0.5)))
            self.fire_due()

    def _event_rows(self, page: PageView) -> list[dict[str, Any]]:
        return [
            {
                "event_id": str(uuid.uuid4()),
                "user_id": page.user.key,
                "type": e.event_type.value,
                "ts": datetime.fromtimestamp(e.ts + self.clock_offset, UTC).isoformat(),
                **{k: v for k, v in (("item_id", e.item_id), ("category", e.category),
                                      ("price", e.price), ("query", e.query)) if v is not None},
            }
            for e in page.events
        ]  # fmt: skip

    def _post_events(self, events: list[dict[str, Any]], consent: bool, headers: dict[str, str]) -> None:
        response = self.client.post(
            "/v1/events", json={"events": events, "consent": consent}, headers=headers
        )
        if response.status_code != 202:
            self.errors += 1

    def send_history(self, pages: Iterator[PageView], until: float) -> tuple[PageView | None, int]:
        """Posts the behaviour of every page before world time `until` in batches (no ads: the
        ad server was not there yet); returns the first page at or after it and the events sent."""
        batches: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        headers = {"User-Agent": BROWSER_USER_AGENTS["desktop"]}
        first_live = None
        sent = 0
        for page in pages:
            if page.ts >= until:
                first_live = page
                break
            batch = batches[page.user.consent]
            batch += self._event_rows(page)
            sent += len(page.events)
            if len(batch) >= 400:
                self._post_events(batch, page.user.consent, headers)
                batch.clear()
        for consent, batch in batches.items():
            if batch:
                self._post_events(batch, consent, headers)
        return first_live, sent

    def step(self, page: PageView) -> None:
        user = page.user
        user_agent = BROWSER_USER_AGENTS.get(user.device, BROWSER_USER_AGENTS["desktop"])
        headers = {"User-Agent": user_agent}
        if page.events:
            self._post_events(self._event_rows(page), user.consent, headers)
        if not page.ad_requests:
            return
        body = {
            "user_id": user.key,
            "placements": [r.placement.key for r in page.ad_requests],
            "consent": user.consent,
            "context": {
                "page_category": page.page_category,
                "keywords": list(page.keywords),
                "device": user.device,
                "geo": user.geo,
            },
        }
        response = self.client.post("/v1/decisions", json=body, headers=headers)
        if response.status_code != 200:
            self.errors += 1
            return
        served_at = time.monotonic()
        requests = {r.placement.key: r for r in page.ad_requests}
        for decision in response.json()["decisions"]:
            request = requests.get(decision["placement"])
            creative = decision.get("creative")
            if request is None or creative is None or creative["id"] not in self.creatives:
                continue
            eligible = self.world.eligible_candidates(request.placement, user.device, user.geo)
            truth = self.oracle.click_probabilities(
                user, [c.creative_id for c in eligible], request.placement, page.ts
            )
            outcome = self.traffic.outcome(page, request, self.creatives[creative["id"]])
            click_delay = outcome.click_ts - page.ts if outcome.clicked and outcome.click_ts else None
            self._schedule(
                _Pending(
                    served_at + VIEWABLE_S,
                    self._next_seq(),
                    "impression",
                    decision["impression_url"],
                    user_agent,
                    decision["click_url"] if click_delay is not None else None,
                    click_delay,
                )
            )
            values = expected_values(eligible, truth)
            best = float(np.max(truth)) if len(truth) else outcome.click_probability
            mean = float(np.mean(truth)) if len(truth) else outcome.click_probability
            truth_of = {
                c.creative_id: (float(p), float(v)) for c, p, v in zip(eligible, truth, values, strict=True)
            }
            served_sim_id = self.creatives[creative["id"]]
            self.decisions += 1
            self.clicks += outcome.clicked
            self.recent.append(
                _Served(
                    decision["decision_id"],
                    outcome.clicked,
                    outcome.click_probability,
                    best,
                    mean,
                    truth_of,
                    truth_of.get(served_sim_id, (0.0, 0.0))[1],
                )
            )
            self.oracle_sum += best
            self.uniform_sum += mean

    def read_eligible_sets(self) -> None:
        """Fills in the window's eligible-set figures from the decision rows the service has
        committed (a row not yet written is read at the next line)."""
        missing = {s.decision_id: s for s in self.recent if s.eligible is None}
        if not missing or self.database_url is None:
            return
        for decision_id, candidate_ids in _candidate_ids(self.database_url, list(missing)).items():
            served = missing[decision_id]
            # the oracle's figures were drawn for the creatives the world's targeting allows, which
            # hold every creative the service's rules can leave (a subset of its targeting)
            truth = [
                pv for c in candidate_ids if (pv := served.truth.get(self.creatives.get(c, -1))) is not None
            ]
            if truth:
                probabilities, values = [p for p, _ in truth], [v for _, v in truth]
                served.eligible = (
                    max(probabilities),
                    sum(probabilities) / len(probabilities),
                    max(values),
                    sum(values) / len(values),
                    max(truth, key=lambda pv: pv[1])[0],
                )

    def _eligible_figures(self) -> str:
        if self.database_url is None:
            return ""
        try:
            self.read_eligible_sets()
        except Exception as error:  # the database restarting must not end the demo
            return f" · eligible sets not read ({type(error).__name__})"
        read = [s for s in self.recent if s.eligible is not None]
        if not read:
            return " · eligible sets not read yet"
        expected = sum(s.chosen_p for s in read) / len(read)
        best, mean, best_value, mean_value, revenue_oracle_p = (
            sum(s.eligible[i] for s in read) / len(read)  # type: ignore[index]
            for i in range(5)
        )
        value = sum(s.chosen_value for s in read) / len(read)
        # CTR against the CTR oracle, and expected revenue per decision against the revenue
        # oracle (the highest bid × P(click) or CPM / 1000 in each set): a policy serving the
        # revenue objective trades some CTR for revenue, so each figure is judged by its own oracle
        return (
            f" · among the {len(read):,} decisions' eligible sets: oracle {best:.2%}, uniform {mean:.2%}, "
            f"expected {expected / best if best else 0:.2f}× oracle, {expected / mean if mean else 0:.2f}× uniform"
            f"; revenue per decision {value:.4f} (oracle {best_value:.4f}, uniform {mean_value:.4f}), "
            f"{value / best_value if best_value else 0:.2f}× revenue oracle, "
            f"{value / mean_value if mean_value else 0:.2f}× uniform"
            f"; the revenue oracle's CTR {revenue_oracle_p:.2%}, {revenue_oracle_p / best if best else 0:.2f}× oracle"
        )

    def line(self) -> str:
        n = max(self.decisions, 1)
        window = max(len(self.recent), 1)
        recent_ctr, recent_p, recent_best, recent_mean = (
            sum(s.clicked for s in self.recent) / window,
            sum(s.chosen_p for s in self.recent) / window,
            sum(s.best for s in self.recent) / window,
            sum(s.mean for s in self.recent) / window,
        )
        return (
            f"[sim] decisions {self.decisions:,} · CTR {self.clicks / n:.2%} "
            f"(oracle {self.oracle_sum / n:.2%}, uniform {self.uniform_sum / n:.2%}) · "
            f"last {len(self.recent):,} {recent_ctr:.2%} (expected {recent_p:.2%}, oracle "
            f"{recent_best:.2%}, uniform {recent_mean:.2%}){self._eligible_figures()} · clicks drawn {self.clicks:,}, "
            f"fired {self.clicks_fired:,} · {self.service_figures()} · {self.model_versions()}"
            + (f" · errors {self.errors}" if self.errors else "")
        )

    def _wait_until(self, ts: float) -> None:
        """Sleeps until wall-clock `ts` (a page's simulated time), firing queued impressions and
        clicks meanwhile; a driver behind its schedule sends at once and catches up."""
        while (wait := ts - time.time()) > 0:
            if self.pending:
                wait = min(wait, self.pending[0].due - time.monotonic())
            time.sleep(max(0.0, min(wait, 0.5)))
            self.fire_due()

    def run(
        self, every_s: float = 5.0, max_decisions: int | None = None, max_seconds: float | None = None
    ) -> None:
        self.wait_ready()
        self.load_creatives()
        self._service_base = self.service_totals()
        live_from = self.world.config.start_ts + HISTORY_S
        self.clock_offset = max(0.0, time.time() - live_from)
        pages = iter(self.traffic)
        first, history_events = self.send_history(pages, live_from)
        print(f"[sim] sent {history_events:,} behaviour events of the shop's last {HISTORY_S / 60:.0f} minutes",
              file=self.out, flush=True)  # fmt: skip
        started = last_print = time.monotonic()
        for page in itertools.chain((first,) if first else (), pages):
            self._wait_until(page.ts + self.clock_offset)
            try:
                self.step(page)
            except Exception as error:  # a restart or a timeout must not end the demo
                self.errors += 1
                print(f"[sim] request failed: {type(error).__name__}: {error}", file=self.out, flush=True)
                time.sleep(1.0)
            self.fire_due()
            now = time.monotonic()
            if now - last_print >= every_s:
                print(self.line(), file=self.out, flush=True)
                last_print = now
            if max_decisions is not None and self.decisions >= max_decisions:
                break
            if max_seconds is not None and now - started >= max_seconds:
                break
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                print("[sim] adserve demo is gone; stopping", file=self.out, flush=True)
                return
        self.drain()
        print(self.line(), file=self.out, flush=True)


def _candidate_ids(database_url: str, decision_ids: list[str]) -> dict[str, list[int]]:
    """decision id -> the creatives the service found eligible (its row's candidate_ids)."""
    import asyncpg

    from adserve.db.engine import asyncpg_dsn

    async def read() -> dict[str, list[int]]:
        connection = await asyncpg.connect(**asyncpg_dsn(database_url))
        try:
            rows = await connection.fetch(
                "SELECT id::text, candidate_ids FROM decisions WHERE id = ANY($1::uuid[])", decision_ids
            )
        finally:
            await connection.close()
        return {row[0]: list(row[1]) for row in rows}

    return asyncio.run(read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="drive a running adserve with simulated traffic")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True, help="an admin key (creative ids, model versions)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=20.0, help="pages per second")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--max-decisions", type=int)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--parent-pid", type=int, help="stop when this process (adserve demo) is gone")
    args = parser.parse_args(argv)
    driver = LiveDriver(args.url, args.key, real_time_world(args.seed, args.rate))
    driver.parent_pid = args.parent_pid
    # SIGTERM (from `adserve demo` shutting down, or a service manager) ends the run like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        driver.run(args.every, args.max_decisions, args.max_seconds)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print(
                f"[sim] stopped: decisions {driver.decisions:,} · clicks drawn {driver.clicks:,}, "
                f"fired {driver.clicks_fired:,}, {len(driver.pending)} impressions and clicks not yet due",
                file=driver.out,
                flush=True,
            )
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
