"""A seeded synthetic shop: users with drifting interests, a product catalogue and ad inventory.

Everything random is drawn from one `WorldConfig.seed` through independent streams, so the world,
the interest drift and the browsing traffic can each be regenerated identically and do not
disturb each other. The catalogue (`World.catalogue()`) is plain data with stable names so an
integration can load it through the admin API and map database ids back to simulator objects.

Interest drift is a mean-reverting random walk in logit space with one anchor per
`drift_interval_s`, linearly interpolated in between: a user's interest is then a pure function of
time, so the oracle can be asked about any moment in any order and still give the same answer.

One module, past 450 lines, on purpose: the world's random streams (catalogue, users, drift,
traffic) are derived from one seed here; splitting them would make reproducibility depend on import
order.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from adserve.domain import BehaviourEvent, Candidate, Pricing

__all__ = [
    "Advertiser",
    "Campaign",
    "Catalogue",
    "Creative",
    "Placement",
    "Product",
    "User",
    "World",
    "WorldConfig",
    "default_placements",
]

# Real-looking names make demo pages and reports readable; beyond the list, names are numbered.
_CATEGORY_NAMES = (
    "electronics", "fashion", "home", "beauty", "sports", "books", "toys", "garden",
    "grocery", "automotive", "music", "pets", "office", "health", "jewelry", "games",
)  # fmt: skip
_NOUNS = {
    "electronics": ("headphones", "speaker", "charger", "monitor", "keyboard", "camera"),
    "fashion": ("jacket", "sneakers", "scarf", "dress", "jeans", "hoodie"),
    "home": ("lamp", "rug", "kettle", "pillow", "vase", "blanket"),
    "beauty": ("serum", "lipstick", "moisturiser", "perfume", "shampoo", "palette"),
    "sports": ("yoga mat", "running shoes", "dumbbells", "bike helmet", "tent", "racket"),
    "books": ("novel", "cookbook", "atlas", "biography", "comic", "journal"),
    "toys": ("puzzle", "robot kit", "plush bear", "board game", "train set", "kite"),
    "garden": ("planter", "hose", "pruner", "seed kit", "bird feeder", "lantern"),
}
_GENERIC_NOUNS = ("item", "set", "kit", "pack", "bundle", "edition")
_SYLLABLES_A = ("Nor", "Ac", "Zen", "Lu", "Ve", "Ora", "Kai", "Sol", "Tri", "Mo", "Pax", "Eve", "Bri", "Cal")
_SYLLABLES_B = ("thwind", "me", "ith", "mina", "ra", "nix", "tek", "via", "dent", "ssa", "ton", "lux", "co")
_HOOKS = ("New season", "Free delivery", "Only this week", "Best seller", "Limited stock", "Top rated")
_DEVICES = ("desktop", "mobile", "tablet")
_DEVICE_WEIGHTS = (0.45, 0.45, 0.10)
_GEOS = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "CA")
_GEO_WEIGHTS = (0.35, 0.15, 0.12, 0.1, 0.08, 0.08, 0.07, 0.05)
_SIZES = ((300, 250), (728, 90))


@dataclass(frozen=True, slots=True)
class Placement:
    """An ad slot on one page type; `position` 0 is the most prominent (least position bias)."""

    key: str
    width: int
    height: int
    page_type: str
    position: int

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def default_placements() -> tuple[Placement, ...]:
    """Two sizes on every page type, at different positions, so position bias is learnable."""
    return (
        Placement("home-leaderboard", 728, 90, "home", 0),
        Placement("home-sidebar", 300, 250, "home", 1),
        Placement("category-sidebar", 300, 250, "category", 0),
        Placement("category-footer", 728, 90, "category", 2),
        Placement("search-top", 728, 90, "search", 0),
        Placement("product-sidebar", 300, 250, "product", 0),
        Placement("product-footer", 728, 90, "product", 2),
        Placement("cart-sidebar", 300, 250, "cart", 1),
    )


@dataclass(frozen=True, slots=True)
class WorldConfig:
    seed: int = 7
    n_users: int = 2000
    n_products: int = 1000
    n_categories: int = 10
    brands_per_category: int = 4
    n_advertisers: int = 8
    campaigns_per_advertiser: int = 2
    creatives_per_campaign: int = 4
    products_per_creative: int = 3
    latent_dim: int = 8
    # Dirichlet concentration of interests: well below 1 gives each user a few strong categories.
    interest_concentration: float = 0.3
    interest_floor: float = 0.01
    # Std of the daily logit step of interests, and how fast they revert to the user's base.
    drift_rate: float = 0.15
    drift_reversion: float = 0.03
    drift_interval_s: float = 86_400.0
    consent_rate: float = 0.9
    sessions_per_user_per_day: float = 1.5
    session_length_mean: float = 6.0  # pages per session (geometric)
    page_gap_mean_s: float = 40.0
    category_switch_rate: float = 0.15
    search_rate: float = 0.1
    cart_rate: float = 0.04
    purchase_rate: float = 0.4  # per carted item, at the end of the session
    revisit_rate: float = 0.2  # a product view that returns to a product seen this session
    cpm_share: float = 0.2
    targeted_share: float = 0.15
    start_ts: float = 1_735_689_600.0  # 2025-01-01T00:00:00Z
    max_user_events: int = 300
    placements: tuple[Placement, ...] = field(default_factory=default_placements)

    def __post_init__(self) -> None:
        if self.n_categories < 1 or self.brands_per_category < 1:
            raise ValueError("a world needs at least one category and one brand per category")
        if self.n_products < self.n_categories * self.brands_per_category:
            raise ValueError("n_products must cover every brand of every category at least once")
        if self.n_advertisers < 1 or self.campaigns_per_advertiser < 1 or self.creatives_per_campaign < 1:
            raise ValueError("a world needs at least one advertiser, campaign and creative")
        if not self.placements:
            raise ValueError("a world needs at least one placement")


@dataclass(frozen=True, slots=True)
class Product:
    index: int
    key: str
    title: str
    category: str
    brand: str
    price: float


@dataclass(frozen=True, slots=True)
class Advertiser:
    id: int
    name: str
    categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Campaign:
    """Money rules. Targeting keys: `geo` and `device`, each a list of allowed values."""

    id: int
    name: str
    advertiser_id: int
    category: str
    brand: str
    pricing: Pricing
    bid: float
    daily_budget: float
    total_budget: float
    frequency_cap: int | None
    frequency_window_s: int | None
    targeting: dict[str, list[str]]

    def targets(self, device: str | None, geo: str | None) -> bool:
        allowed_devices = self.targeting.get("device")
        allowed_geos = self.targeting.get("geo")
        return (not allowed_devices or device in allowed_devices) and (
            not allowed_geos or geo in allowed_geos
        )


@dataclass(frozen=True, slots=True)
class Creative:
    """One ad. `id` is 1-based and also its index + 1 in `World.creatives`."""

    id: int
    key: str
    campaign_id: int
    advertiser_id: int
    title: str
    category: str
    brand: str
    product_ids: tuple[str, ...]
    price: float
    width: int
    height: int
    landing_url: str

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(slots=True, eq=False)
class User:
    """A shopper: static traits plus the organic behaviour log of the traffic now running."""

    index: int
    key: str
    consent: bool
    device: str
    geo: str
    events: list[BehaviourEvent] = field(default_factory=list)

    def recent_events(self, now: float, window_s: float) -> list[BehaviourEvent]:
        """Events with `now - window_s < ts <= now`, oldest first."""
        events = self.events
        end = len(events)
        if end and events[-1].ts > now:
            end = bisect.bisect_right(events, now, key=lambda e: e.ts)
        start = end
        while start > 0 and events[start - 1].ts > now - window_s:
            start -= 1
        return events[start:end]

    def history(self, now: float, limit: int) -> tuple[BehaviourEvent, ...]:
        """The last `limit` events up to `now`, oldest first; empty without consent."""
        if not self.consent or limit <= 0:
            return ()
        events = self.events
        end = len(events)
        if end and events[-1].ts > now:
            end = bisect.bisect_right(events, now, key=lambda e: e.ts)
        return tuple(events[max(0, end - limit) : end])


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Everything an ad server must know to serve this world, as plain data."""

    advertisers: tuple[Advertiser, ...]
    campaigns: tuple[Campaign, ...]
    creatives: tuple[Creative, ...]
    placements: tuple[Placement, ...]
    products: tuple[Product, ...]

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        """JSON-ready: campaigns refer to advertisers by name, creatives to campaigns by name."""
        advertiser_names = {a.id: a.name for a in self.advertisers}
        campaign_names = {c.id: c.name for c in self.campaigns}
        campaigns = []
        for campaign in self.campaigns:
            row = asdict(campaign)
            row["pricing"] = campaign.pricing.value
            row["advertiser"] = advertiser_names[campaign.advertiser_id]
            campaigns.append(row)
        creatives = []
        for creative in self.creatives:
            row = asdict(creative)
            row["product_ids"] = list(creative.product_ids)
            row["campaign"] = campaign_names[creative.campaign_id]
            row["advertiser"] = advertiser_names[creative.advertiser_id]
            row["size"] = creative.size
            creatives.append(row)
        placements = []
        for placement in self.placements:
            row = asdict(placement)
            row["size"] = placement.size
            placements.append(row)
        return {
            "advertisers": [{**asdict(a), "categories": list(a.categories)} for a in self.advertisers],
            "campaigns": campaigns,
            "creatives": creatives,
            "placements": placements,
            "products": [asdict(p) for p in self.products],
        }


class World:
    """The synthetic shop. Build once per seed; `Traffic(world)` replays its browsing from the start.

    Latent state the oracle reads (not visible to any serving component):
    - `interest_at(user, t)`: (C,) probabilities over categories, drifting with time;
    - `brand_affinity`: (U, B) in [0, 1], a few liked brands per user;
    - `taste`: (U, D) and `product_attributes`: (P, D), `creative_attributes`: (K, D) latent vectors;
    - `creative_quality`: (K,) the creative's own appeal, in logit units.
    """

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = cfg = config or WorldConfig()
        build_ss, drift_ss, self._browse_ss, self._ad_ss = np.random.SeedSequence(cfg.seed).spawn(4)
        rng = np.random.default_rng(build_ss)
        self._drift_rng = np.random.default_rng(drift_ss)
        self._build_categories_and_brands(rng)
        self._build_products(rng)
        self._build_users(rng)
        self._build_inventory(rng)
        self.placements = cfg.placements
        # Fail when built, not mid-run: a slot no creative fits would never be served.
        sizes = {c.size for c in self.creatives}
        unfillable = [p.key for p in self.placements if p.size not in sizes]
        if unfillable:
            raise ValueError(f"no creative fits placements {unfillable}; creative sizes are {sorted(sizes)}")
        self.placement_by_key = {p.key: p for p in self.placements}
        self.placements_by_page_type: dict[str, tuple[Placement, ...]] = {}
        for placement in self.placements:
            self.placements_by_page_type.setdefault(placement.page_type, ())
            self.placements_by_page_type[placement.page_type] += (placement,)
        self._anchors: list[np.ndarray] = [self.base_interest_logits.copy()]
        self._traffic_generation = 0

    # ---- construction -------------------------------------------------------------------------

    def _build_categories_and_brands(self, rng: np.random.Generator) -> None:
        cfg = self.config
        self.categories = tuple(
            _CATEGORY_NAMES[i] if i < len(_CATEGORY_NAMES) else f"category-{i}"
            for i in range(cfg.n_categories)
        )
        self.category_index = {c: i for i, c in enumerate(self.categories)}
        names: list[str] = []
        seen: set[str] = set()
        while len(names) < cfg.n_categories * cfg.brands_per_category:
            name = str(rng.choice(_SYLLABLES_A)) + str(rng.choice(_SYLLABLES_B))
            if name in seen:
                name = f"{name} {len(names)}"
            seen.add(name)
            names.append(name)
        self.brands = tuple(names)
        self.brand_index = {b: i for i, b in enumerate(self.brands)}
        # Brand b belongs to category b // brands_per_category.
        self.brand_category = np.arange(len(self.brands)) // cfg.brands_per_category

    def _build_products(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n_brands = len(self.brands)
        # Every brand has at least one product; the rest are spread with a long tail.
        brand_of = np.concatenate(
            [np.arange(n_brands), rng.choice(n_brands, cfg.n_products - n_brands, p=_zipf(n_brands, rng))]
        )
        rng.shuffle(brand_of)
        category_of = self.brand_category[brand_of]
        # Log-normal prices around a per-category level: books are cheap, electronics are not.
        category_level = rng.uniform(math.log(8), math.log(250), cfg.n_categories)
        prices = np.round(np.exp(category_level[category_of] + rng.normal(0, 0.5, cfg.n_products)), 2) + 0.99
        self.product_attributes = rng.normal(0, 1, (cfg.n_products, cfg.latent_dim))
        self.product_popularity = rng.normal(0, 0.7, cfg.n_products)
        self.product_category = category_of
        self.product_brand = brand_of
        products = []
        for i in range(cfg.n_products):
            category = self.categories[category_of[i]]
            noun = _noun(category, i)
            products.append(
                Product(i, f"p{i:05d}", f"{self.brands[brand_of[i]]} {noun}", category,
                        self.brands[brand_of[i]], float(prices[i]))
            )  # fmt: skip
        self.products = tuple(products)
        self.product_index = {p.key: p.index for p in self.products}
        self.products_by_category = [np.flatnonzero(category_of == c) for c in range(cfg.n_categories)]

    def _build_users(self, rng: np.random.Generator) -> None:
        cfg = self.config
        shares = rng.dirichlet(np.full(cfg.n_categories, cfg.interest_concentration), cfg.n_users)
        logits = np.log(np.maximum(shares, cfg.interest_floor))
        self.base_interest_logits = logits - logits.mean(axis=1, keepdims=True)
        self.taste = rng.normal(0, 1 / math.sqrt(cfg.latent_dim), (cfg.n_users, cfg.latent_dim))
        # A few liked brands, mostly in the user's strong categories.
        self.brand_affinity = np.zeros((cfg.n_users, len(self.brands)))
        for u in range(cfg.n_users):
            for _ in range(int(rng.integers(1, 4))):
                category = rng.choice(cfg.n_categories, p=shares[u])
                brand = category * cfg.brands_per_category + rng.integers(cfg.brands_per_category)
                self.brand_affinity[u, brand] = rng.uniform(0.5, 1.0)
        # Heavy-tailed activity: a few users visit far more often than most.
        activity = rng.lognormal(0, 1.0, cfg.n_users)
        self.user_activity = activity / activity.sum()
        consent = rng.random(cfg.n_users) < cfg.consent_rate
        devices = rng.choice(len(_DEVICES), cfg.n_users, p=_DEVICE_WEIGHTS)
        geos = rng.choice(len(_GEOS), cfg.n_users, p=_GEO_WEIGHTS)
        self.users = tuple(
            User(u, f"u{u:06d}", bool(consent[u]), _DEVICES[devices[u]], _GEOS[geos[u]])
            for u in range(cfg.n_users)
        )
        self.user_by_key = {user.key: user for user in self.users}

    def _build_inventory(self, rng: np.random.Generator) -> None:
        cfg = self.config
        advertisers: list[Advertiser] = []
        campaigns: list[Campaign] = []
        creatives: list[Creative] = []
        # Advertisers take categories round-robin so every category with a brand-owner gets ads.
        for a in range(cfg.n_advertisers):
            categories: list[int] = []
            for k in range(cfg.campaigns_per_advertiser):
                categories.append((a + k * cfg.n_advertisers) % cfg.n_categories)
            owned = [c * cfg.brands_per_category + (a % cfg.brands_per_category) for c in categories]
            name = f"{self.brands[owned[0]]} Group"
            advertiser = Advertiser(a + 1, name, tuple(dict.fromkeys(self.categories[c] for c in categories)))
            advertisers.append(advertiser)
            for k, brand in enumerate(owned):
                campaigns.append(self._campaign(rng, len(campaigns) + 1, advertiser, k, brand))
        attributes = []
        qualities = []
        for campaign in campaigns:
            brand = self.brand_index[campaign.brand]
            pool = np.flatnonzero(self.product_brand == brand)
            for j in range(cfg.creatives_per_campaign):
                linked = rng.choice(pool, min(cfg.products_per_creative, len(pool)), replace=False)
                width, height = _SIZES[j % len(_SIZES)]
                product = self.products[linked[0]]
                key = f"{_slug(campaign.name)}-cr{j + 1}"
                creatives.append(
                    Creative(
                        id=len(creatives) + 1,
                        key=key,
                        campaign_id=campaign.id,
                        advertiser_id=campaign.advertiser_id,
                        title=f"{product.title}: {_HOOKS[int(rng.integers(len(_HOOKS)))]}",
                        category=campaign.category,
                        brand=campaign.brand,
                        product_ids=tuple(self.products[i].key for i in linked),
                        price=product.price,
                        width=width,
                        height=height,
                        landing_url=f"https://shop.example/products/{product.key}?cr={key}",
                    )
                )
                # The ad looks like the products it shows, with its own twist.
                attr = self.product_attributes[linked].mean(axis=0) + rng.normal(0, 0.5, cfg.latent_dim)
                attributes.append(attr / max(np.linalg.norm(attr), 1e-9) * math.sqrt(cfg.latent_dim))
                qualities.append(rng.normal(0, 0.15))
        self.advertisers = tuple(advertisers)
        self.campaigns = tuple(campaigns)
        self.creatives = tuple(creatives)
        # Stable names an integration maps database rows back with (the DB stores no sim keys,
        # but advertiser and campaign names are unique and the landing URL carries the creative key).
        self.advertiser_by_name = {a.name: a for a in self.advertisers}
        self.campaign_by_name = {c.name: c for c in self.campaigns}
        self.creative_by_key = {c.key: c for c in self.creatives}
        self.creative_by_landing_url = {c.landing_url: c for c in self.creatives}
        self.creative_attributes = np.array(attributes)
        self.creative_quality = np.array(qualities)
        self.creative_category = np.array([self.category_index[c.category] for c in creatives])
        self.creative_brand = np.array([self.brand_index[c.brand] for c in creatives])
        self.creative_products = tuple(
            np.array([self.product_index[p] for p in c.product_ids]) for c in creatives
        )
        campaign_of = {c.id: c for c in campaigns}
        self.candidates = tuple(
            Candidate(
                creative_id=c.id,
                campaign_id=c.campaign_id,
                advertiser_id=c.advertiser_id,
                pricing=campaign_of[c.campaign_id].pricing,
                bid=campaign_of[c.campaign_id].bid,
                category=c.category,
                brand=c.brand,
                product_ids=c.product_ids,
                price=c.price,
            )
            for c in creatives
        )

    def _campaign(
        self, rng: np.random.Generator, campaign_id: int, advertiser: Advertiser, k: int, brand: int
    ) -> Campaign:
        cfg = self.config
        cpm = rng.random() < cfg.cpm_share
        # CPC bids in currency per click; CPM prices per thousand impressions, set so that
        # CPM and CPC compete (a 1% CTR at a 0.40 bid is a 4.00 eCPM).
        bid = round(float(rng.uniform(1.0, 6.0) if cpm else rng.uniform(0.2, 1.5)), 2)
        daily = round(float(rng.uniform(50, 400)), 0)
        targeting: dict[str, list[str]] = {}
        if rng.random() < cfg.targeted_share:
            if rng.random() < 0.5:
                targeting["device"] = ["mobile", "tablet"]
            else:
                targeting["geo"] = list(_GEOS[:4])
        capped = rng.random() < 0.7
        category = self.categories[self.brand_category[brand]]
        return Campaign(
            id=campaign_id,
            name=f"{advertiser.name} — {category} {k + 1}",
            advertiser_id=advertiser.id,
            category=category,
            brand=self.brands[brand],
            pricing=Pricing.CPM if cpm else Pricing.CPC,
            bid=bid,
            daily_budget=daily,
            total_budget=daily * 30,
            frequency_cap=int(rng.integers(3, 11)) if capped else None,
            frequency_window_s=86_400 if capped else None,
            targeting=targeting,
        )

    # ---- latent state -------------------------------------------------------------------------

    def _anchor_position(self, t: float) -> tuple[int, float]:
        x = max(0.0, (t - self.config.start_ts) / self.config.drift_interval_s)
        k = int(x)
        # Anchors are drawn in order from their own stream, whoever asks first, so the drift is
        # the same however far or in what order anyone looks.
        while k + 1 >= len(self._anchors):
            cfg = self.config
            last = self._anchors[-1]
            noise = self._drift_rng.normal(0, cfg.drift_rate, last.shape)
            self._anchors.append(last + cfg.drift_reversion * (self.base_interest_logits - last) + noise)
        return k, x - k

    def interest_logits_at(self, user: int, t: float) -> np.ndarray:
        k, frac = self._anchor_position(t)
        return (1 - frac) * self._anchors[k][user] + frac * self._anchors[k + 1][user]

    def interest_at(self, user: int, t: float) -> np.ndarray:
        """(C,) probabilities over categories for one user at time `t`."""
        z = self.interest_logits_at(user, t)
        e = np.exp(z - z.max())
        return e / e.sum()

    def interests_at(self, t: float) -> np.ndarray:
        """(U, C) probabilities for every user at time `t`."""
        k, frac = self._anchor_position(t)
        z = (1 - frac) * self._anchors[k] + frac * self._anchors[k + 1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # ---- lookups ------------------------------------------------------------------------------

    def catalogue(self) -> Catalogue:
        return Catalogue(self.advertisers, self.campaigns, self.creatives, self.placements, self.products)

    def campaign(self, campaign_id: int) -> Campaign:
        return self.campaigns[campaign_id - 1]

    def creative(self, creative_id: int) -> Creative:
        return self.creatives[creative_id - 1]

    def eligible_candidates(
        self, placement: Placement, device: str | None, geo: str | None
    ) -> list[Candidate]:
        """Creatives of the placement's size whose campaign targets this device and geo.

        Budgets, pacing and frequency caps are the serving pipeline's business, not the world's.
        """
        return [
            candidate
            for candidate, creative in zip(self.candidates, self.creatives, strict=True)
            if creative.width == placement.width
            and creative.height == placement.height
            and self.campaigns[creative.campaign_id - 1].targets(device, geo)
        ]

    def start_traffic(self) -> int:
        """Clears every user's behaviour log for a new traffic run; returns the run's generation.

        Users live on the world so the oracle and oracle-based policies can find them by key;
        only one traffic run at a time can own them.
        """
        self._traffic_generation += 1
        for user in self.users:
            user.events.clear()
        return self._traffic_generation

    @property
    def traffic_generation(self) -> int:
        return self._traffic_generation

    @property
    def browse_seed(self) -> np.random.SeedSequence:
        return self._browse_ss

    @property
    def ad_seed(self) -> np.random.SeedSequence:
        return self._ad_ss


def _zipf(n: int, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 0.8
    rng.shuffle(weights)
    return weights / weights.sum()


def _noun(category: str, i: int) -> str:
    nouns = _NOUNS.get(category, _GENERIC_NOUNS)
    return nouns[i % len(nouns)]


def _slug(text: str) -> str:
    return "-".join("".join(ch.lower() if ch.isalnum() else " " for ch in text).split())
