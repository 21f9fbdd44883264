"""What each term of the simulated world's click model is worth to a policy that knows it.

For every ad request of the world's traffic (after a warm-up), the CTR oracle picks the creative
with the highest true P(click); a "partial oracle" picks with one term of the click model removed
(`adserve/sim/oracle.py`: interest, brand affinity, taste x attributes, recent behaviour, creative
quality). The last row keeps every term a behaviour history could reveal in principle (the
product attributes behind taste x attributes are not in any event or catalogue field) and nothing
personal for users without consent: an optimistic ceiling for a history-based scorer. Each partial oracle's expected CTR over the oracle's says how much of the oracle's lead
that term carries, and so what a scorer that cannot observe it can reach at best. Also printed:
the share of requests from users without consent (no history reaches any scorer).

    .venv/bin/python bench/sim_headroom.py --seed 7 --requests 20000
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from adserve.sim.oracle import Oracle
from adserve.sim.traffic import Traffic
from adserve.sim.world import World, WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--skip", type=int, default=5_000, help="warm-up requests not counted")
    args = parser.parse_args()

    world = World(WorldConfig(seed=args.seed))
    oracle = Oracle(world)
    model = oracle.model
    without = {
        "interest (drifting category interest)": replace(model, interest_weight=0.0),
        "brand affinity": replace(model, brand_weight=0.0),
        "taste x attributes": replace(model, attribute_weight=0.0),
        "recent behaviour (category, products, purchases)": replace(
            model, recent_category_weight=0.0, recent_product_weight=0.0, purchased_weight=0.0
        ),
    }
    partial = {name: Oracle(world, m) for name, m in without.items()}
    # what behaviour could reveal at best: every term but taste x attributes for users with
    # consent (their history reaches the scorer); nothing personal for users without
    observable = Oracle(world, without["taste x attributes"])
    impersonal = Oracle(
        world,
        replace(
            model, interest_weight=0.0, brand_weight=0.0, attribute_weight=0.0,
            recent_category_weight=0.0, recent_product_weight=0.0, purchased_weight=0.0,
        ),
    )  # fmt: skip
    ceiling = "every term history can reveal (no taste x attributes; nothing personal without consent)"
    sums = dict.fromkeys([*without, "creative quality", ceiling, "oracle", "uniform"], 0.0)
    counted = no_consent = seen = 0
    for page in Traffic(world, oracle):
        for request in page.ad_requests:
            candidates = world.eligible_candidates(request.placement, page.user.device, page.user.geo)
            if not candidates:
                continue
            seen += 1
            if seen <= args.skip:
                continue
            ids = [c.creative_id for c in candidates]
            p = oracle.click_probabilities(page.user, ids, request.placement, page.ts)
            sums["oracle"] += p.max()
            sums["uniform"] += p.mean()
            for name, other in partial.items():
                sums[name] += p[
                    int(np.argmax(other.click_probabilities(page.user, ids, request.placement, page.ts)))
                ]
            bias = oracle.position_bias(request.placement)
            logit = np.log(p / (bias - p)) - world.creative_quality[np.asarray(ids) - 1]
            sums["creative quality"] += p[int(np.argmax(logit))]
            knows = observable if page.user.consent else impersonal
            sums[ceiling] += p[
                int(np.argmax(knows.click_probabilities(page.user, ids, request.placement, page.ts)))
            ]
            counted += 1
            no_consent += not page.user.consent
        if counted >= args.requests:
            break
    print(
        f"seed {args.seed}, {counted:,} requests after {args.skip:,}; oracle expected CTR {sums['oracle'] / counted:.4f}"
    )
    print("| the oracle without | expected CTR × oracle |")
    print("|---|---|")
    for name in [*without, "creative quality", ceiling]:
        print(f"| {name} | {sums[name] / sums['oracle']:.3f} |")
    print(f"| (uniform random) | {sums['uniform'] / sums['oracle']:.3f} |")
    print(f"requests from users without consent: {no_consent / counted:.1%}")


if __name__ == "__main__":
    main()
