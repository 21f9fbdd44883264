"""Simulated page views in time order, and the clicks and purchases that follow a served ad.

Sessions start as a Poisson process (busier in the afternoon, UTC), each for a user drawn by
activity. Within a session the user keeps to a focus category (switching now and then, drawn from
their current interest), views products they like, carts a few and buys some of the cart at the
end. Concurrent sessions are merged by time.

Two random streams, both derived from the world's seed and restarted by every `Traffic`:
- the browse stream drives who visits and what they do;
- the ad stream draws, for every ad request, the uniforms that decide its click and purchase.
Neither depends on which creative was served, so every policy sees the same users, pages and
draws (common random numbers): a better creative on the same request is clicked whenever a worse
one would have been, which makes policy comparisons far less noisy.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adserve.domain import BehaviourEvent, DecisionContext, EventType
from adserve.sim.oracle import Oracle

if TYPE_CHECKING:
    from collections.abc import Iterator

    from adserve.sim.world import Creative, Placement, User, World

__all__ = ["AdOutcome", "AdRequest", "PageView", "Traffic", "diurnal_factor"]

_DAY_S = 86_400.0
_PEAK_HOUR_UTC = 15.0
_DIURNAL_AMPLITUDE = 0.5


@dataclass(frozen=True, slots=True)
class AdRequest:
    """One ad slot on a page. The draws are this request's fixed random numbers (see module doc)."""

    placement: Placement
    click_draw: float
    conversion_draw: float
    delay_draw: float


@dataclass(frozen=True, slots=True)
class PageView:
    """One page a user loads: the behaviour events it produced, then its ad requests (possibly none).

    `events` happen at or before `ts` and are already in `user.events` when the page is yielded;
    post them to the events API before asking for the page's ads.
    """

    seq: int
    ts: float
    user: User
    page_type: str
    page_category: str | None
    keywords: tuple[str, ...]
    events: tuple[BehaviourEvent, ...]
    ad_requests: tuple[AdRequest, ...]

    @property
    def hour(self) -> int:
        return int((self.ts % _DAY_S) // 3600)

    def context(self, request: AdRequest, history_limit: int = 50) -> DecisionContext:
        """The decision context the ad server would build, with the user's consented history."""
        user = self.user
        return DecisionContext(
            placement=request.placement.key,
            now=self.ts,
            page_category=self.page_category,
            keywords=self.keywords,
            device=user.device,
            geo=user.geo,
            hour=self.hour,
            position=request.placement.position,
            user_key=user.key,
            history=user.history(self.ts, history_limit),
        )


@dataclass(frozen=True, slots=True)
class AdOutcome:
    click_probability: float
    clicked: bool
    click_ts: float | None
    converted: bool
    conversion_ts: float | None
    conversion_value: float  # the creative's price when converted, else 0


@dataclass(slots=True)
class _Page:
    ts: float
    page_type: str
    category: str | None
    keywords: tuple[str, ...]
    events: tuple[BehaviourEvent, ...]


class Traffic:
    """An endless, time-ordered iterator of `PageView`s for one world; restart = new `Traffic`.

    Creating one clears the world's user logs (see `World.start_traffic`); an older `Traffic` of the
    same world raises if it is advanced afterwards, since both would write the same logs.
    """

    def __init__(self, world: World, oracle: Oracle | None = None) -> None:
        self.world = world
        self.oracle = oracle or Oracle(world)
        self._generation = world.start_traffic()
        self._browse = np.random.default_rng(world.browse_seed)
        self._ads = np.random.default_rng(world.ad_seed)
        cfg = world.config
        self._activity_cdf = np.cumsum(world.user_activity)
        self._product_cdf: dict[tuple[int, int], np.ndarray] = {}
        # Thinning: draw arrivals at the peak rate, keep each with the diurnal share of it.
        self._peak_rate = cfg.n_users * cfg.sessions_per_user_per_day / _DAY_S * (1 + _DIURNAL_AMPLITUDE)
        self._pages = self._generate()
        self.pages_served = 0
        self.ad_requests_served = 0

    def __iter__(self) -> Iterator[PageView]:
        return self

    def __next__(self) -> PageView:
        if self.world.traffic_generation != self._generation:
            raise RuntimeError("a newer Traffic of this world has reset its users; create a new Traffic")
        page = next(self._pages)
        self.pages_served += 1
        self.ad_requests_served += len(page.ad_requests)
        return page

    def outcome(
        self,
        page: PageView,
        request: AdRequest,
        creative: Creative | int,
        click_probability: float | None = None,
    ) -> AdOutcome:
        """Whether the served creative is clicked and then bought, from the request's own draws.

        Pass `click_probability` when it is already known (the harness has it) to save a lookup.
        """
        p = click_probability
        if p is None:
            p = self.oracle.click_probability(page.user, creative, request.placement, page.ts)
        if request.click_draw >= p:
            return AdOutcome(p, False, None, False, None, 0.0)
        click_ts = page.ts + 1.0 + 20.0 * request.delay_draw
        conversion = self.oracle.conversion_probability(page.user, creative, page.ts)
        if request.conversion_draw >= conversion:
            return AdOutcome(p, True, click_ts, False, None, 0.0)
        creative_id = creative if isinstance(creative, int) else creative.id
        price = self.world.creative(creative_id).price
        return AdOutcome(p, True, click_ts, True, click_ts + 60.0 + 600.0 * request.delay_draw, price)

    # ---- generation ---------------------------------------------------------------------------

    def _generate(self) -> Iterator[PageView]:
        world = self.world
        rng = self._browse
        heap: list[tuple[float, int, _Page, Iterator[_Page], User]] = []
        counter = 0
        seq = 0
        arrival = world.config.start_ts + rng.exponential(1 / self._peak_rate)
        max_events = world.config.max_user_events
        while True:
            while not heap or arrival <= heap[0][0]:
                if rng.random() < diurnal_factor(arrival) / (1 + _DIURNAL_AMPLITUDE):
                    user = world.users[
                        int(np.searchsorted(self._activity_cdf, rng.random() * self._activity_cdf[-1]))
                    ]
                    session = self._session(user, arrival)
                    first = next(session)
                    heapq.heappush(heap, (first.ts, counter, first, session, user))
                    counter += 1
                arrival += rng.exponential(1 / self._peak_rate)
            _, _, page, session, user = heapq.heappop(heap)
            user.events.extend(page.events)
            if len(user.events) > 2 * max_events:
                del user.events[:-max_events]
            placements = world.placements_by_page_type.get(page.page_type, ())
            draws = self._ads.random((len(placements), 3)) if placements else ()
            requests = tuple(
                AdRequest(p, float(d[0]), float(d[1]), float(d[2]))
                for p, d in zip(placements, draws, strict=True)
            )
            yield PageView(
                seq, page.ts, user, page.page_type, page.category, page.keywords, page.events, requests
            )
            seq += 1
            following = next(session, None)
            if following is not None:
                heapq.heappush(heap, (following.ts, counter, following, session, user))
                counter += 1

    def _session(self, user: User, start: float) -> Iterator[_Page]:
        """One visit: a landing page, product views in a focus category, carts, then checkout."""
        world = self.world
        cfg = world.config
        rng = self._browse
        u = user.index
        t = start
        focus = _sample(world.interest_at(u, t), rng.random())
        cart: list[int] = []
        viewed: list[int] = []
        landing = rng.random()
        if landing < 0.45:
            yield _Page(t, "home", None, (), (BehaviourEvent(EventType.PAGE_VIEW, t),))
        elif landing < 0.75:
            yield self._search_page(u, focus, t)
        else:
            category = world.categories[focus]
            yield _Page(
                t,
                "category",
                category,
                (category,),
                (BehaviourEvent(EventType.PAGE_VIEW, t, category=category),),
            )
        while rng.random() >= 1 / cfg.session_length_mean:
            t += 3.0 + rng.exponential(cfg.page_gap_mean_s)
            if rng.random() < cfg.category_switch_rate:
                focus = _sample(world.interest_at(u, t), rng.random())
            if rng.random() < cfg.search_rate:
                yield self._search_page(u, focus, t)
                continue
            if viewed and rng.random() < cfg.revisit_rate:
                product = viewed[int(rng.integers(len(viewed)))]
            else:
                product = self._pick_product(u, focus, rng.random())
            viewed.append(product)
            item = world.products[product]
            view = BehaviourEvent(EventType.PRODUCT_VIEW, t, item.key, item.category, item.price)
            yield _Page(t, "product", item.category, (item.category, item.brand.lower()), (view,))
            if rng.random() < self._cart_probability(u, product):
                t += 2.0 + rng.exponential(10.0)
                cart.append(product)
                carted = BehaviourEvent(EventType.ADD_TO_CART, t, item.key, item.category, item.price)
                yield _Page(t, "cart", item.category, (item.category,), (carted,))
        bought = [p for p in cart if rng.random() < cfg.purchase_rate]
        if bought:
            t += 30.0 + rng.exponential(60.0)
            purchases = tuple(
                BehaviourEvent(EventType.PURCHASE, t, world.products[p].key, world.products[p].category,
                               world.products[p].price)
                for p in bought
            )  # fmt: skip
            yield _Page(t, "checkout", None, (), purchases)

    def _search_page(self, u: int, focus: int, t: float) -> _Page:
        world = self.world
        category = world.categories[focus]
        product = world.products[self._pick_product(u, focus, self._browse.random())]
        # Users search for a brand and thing, or just the category.
        if self._browse.random() < 0.5:
            query = f"{product.brand} {product.title.split(' ', 1)[-1]}".lower()
        else:
            query = category
        event = BehaviourEvent(EventType.SEARCH, t, category=category, query=query)
        return _Page(t, "search", category, tuple(query.split()), (event,))

    def _pick_product(self, u: int, category: int, draw: float) -> int:
        """A product of the category, by the user's taste, liked brands and popularity."""
        key = (u, category)
        cdf = self._product_cdf.get(key)
        products = self.world.products_by_category[category]
        if cdf is None:
            world = self.world
            score = (
                world.product_attributes[products] @ world.taste[u]
                + 1.5 * world.brand_affinity[u, world.product_brand[products]]
                + world.product_popularity[products]
            )
            weights = np.exp(score - score.max())
            cdf = np.cumsum(weights)
            self._product_cdf[key] = cdf
        return int(products[min(int(np.searchsorted(cdf, draw * cdf[-1])), len(products) - 1)])

    def _cart_probability(self, u: int, product: int) -> float:
        world = self.world
        liking = float(world.product_attributes[product] @ world.taste[u])
        affinity = world.brand_affinity[u, world.product_brand[product]]
        return min(0.3, world.config.cart_rate * math.exp(0.5 * liking + affinity))


def diurnal_factor(ts: float) -> float:
    """The session arrival rate at `ts` relative to the daily mean (peak 1.5 at 15:00 UTC)."""
    hour = (ts % _DAY_S) / 3600.0
    return 1.0 + _DIURNAL_AMPLITUDE * math.cos(2 * math.pi * (hour - _PEAK_HOUR_UTC) / 24.0)


def _sample(probabilities: np.ndarray, draw: float) -> int:
    cdf = np.cumsum(probabilities)
    return min(int(np.searchsorted(cdf, draw * cdf[-1])), len(probabilities) - 1)
