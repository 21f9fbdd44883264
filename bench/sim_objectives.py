"""What maximising one objective costs in the other: the CTR oracle against the revenue oracle.

For every ad request of the world's traffic, among the creatives its targeting allows, the CTR
oracle serves the highest true P(click) and the revenue oracle the highest true expected revenue
(bid × P(click) for CPC, bid / 1000 for CPM: the service's default objective). Printed: the
revenue oracle's expected CTR over the CTR oracle's (the most CTR a perfect revenue-maximiser
keeps), the CTR oracle's expected revenue over the revenue oracle's, and a uniform choice's.
So a policy serving `bandit.objective = "revenue"` is judged against the revenue oracle, not
the CTR one.

    .venv/bin/python bench/sim_objectives.py --seed 7 --pages 30000
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from adserve.domain import Pricing
from adserve.sim.oracle import Oracle, expected_values
from adserve.sim.traffic import Traffic
from adserve.sim.world import World, WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pages", type=int, default=30_000)
    args = parser.parse_args()
    world = World(WorldConfig(seed=args.seed))
    oracle = Oracle(world)
    ctr = {"ctr_oracle": 0.0, "revenue_oracle": 0.0, "uniform": 0.0}
    revenue = dict.fromkeys(ctr, 0.0)
    requests = cpm_picks = 0
    for page in itertools.islice(Traffic(world, oracle), args.pages):
        for request in page.ad_requests:
            candidates = world.eligible_candidates(request.placement, page.user.device, page.user.geo)
            if not candidates:
                continue
            ids = [c.creative_id for c in candidates]
            probabilities = oracle.click_probabilities(page.user, ids, request.placement, page.ts)
            values = expected_values(candidates, probabilities)
            by_ctr, by_revenue = int(np.argmax(probabilities)), int(np.argmax(values))
            ctr["ctr_oracle"] += probabilities[by_ctr]
            ctr["revenue_oracle"] += probabilities[by_revenue]
            ctr["uniform"] += probabilities.mean()
            revenue["ctr_oracle"] += values[by_ctr]
            revenue["revenue_oracle"] += values[by_revenue]
            revenue["uniform"] += values.mean()
            cpm_picks += candidates[by_revenue].pricing is Pricing.CPM
            requests += 1
    print(f"seed {args.seed}: {requests:,} ad requests from {args.pages:,} pages")
    print("| policy | expected CTR | × CTR oracle | expected revenue / request | × revenue oracle |")
    print("|---|---:|---:|---:|---:|")
    for name in ctr:
        print(
            f"| {name.replace('_', ' ')} | {ctr[name] / requests:.4f} | {ctr[name] / ctr['ctr_oracle']:.3f} "
            f"| {revenue[name] / requests:.4f} | {revenue[name] / revenue['revenue_oracle']:.3f} |"
        )
    print(f"the revenue oracle served a CPM creative on {cpm_picks / requests:.1%} of requests")


if __name__ == "__main__":
    main()
