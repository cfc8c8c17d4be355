"""Active-onboarding benchmark: milliseconds to choose one new user's next question.

What a server pays per ``POST /v1/users/{id}/questions`` besides HTTP: the selector of
copl_ray/graph/onboard.py over a graph of ``--users`` seen users (10,000 by default, the
UF-P scale) from the planted UF-P-4-shaped survey (copl_ray/data/planted.py: 16 labels a
user, 4 groups), for users who answered ``--answers`` pool pairs so far. Embeddings are
random unit vectors of ``--dims``: the cost does not depend on their values. The opening
ranking (no answer yet; computed once per server) is timed apart.

    python benchmarks/onboarding.py                       # d = 64 and 512, 10k users
    python benchmarks/onboarding.py --users 10000 --dims 64 --threads 1
"""

from __future__ import annotations

import argparse
import time

from common import machine


def build(n_users: int, dim: int, n_prompts: int, seed: int):
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from copl_ray.data.planted import planted_annotations
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.graph.bipartite import build_graph

    ann = planted_annotations(n_users, 4, 16, 0, seed, n_prompts)
    graph = build_graph(ann)
    g = torch.Generator().manual_seed(seed)
    art = GNNArtifacts(
        graph.user_ids,
        F.normalize(torch.randn(graph.n_users, dim, generator=g), dim=-1),
        graph.response_ids,
        torch.randn(graph.n_responses, dim, generator=g),
        graph.pos_edge_index,
        graph.neg_edge_index,
        normalized=True,
    )
    first = ann.drop_duplicates("pair_id")
    a = np.minimum(first["chosen"], first["rejected"]).to_numpy()
    b = np.maximum(first["chosen"], first["rejected"]).to_numpy()
    pairs = pd.DataFrame({"pair_id": first["pair_id"].to_numpy(), "response_a": a, "response_b": b})
    return art, pairs


def time_selection(sel, art, answers: int, k: int, repeats: int, seed: int) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    pool, ids, out = sel.pool, art.response_ids, []
    for _ in range(repeats):
        picks = rng.choice(len(pool), size=answers, replace=False)
        flip = rng.random(answers) < 0.5
        chosen = np.where(flip, pool.a[picks], pool.b[picks])
        rejected = np.where(flip, pool.b[picks], pool.a[picks])
        t0 = time.perf_counter()
        sel.select("copl", ids[chosen], ids[rejected], k)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--prompts", type=int, default=4_000, help="planted prompts (pool size)")
    ap.add_argument("--answers", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--k", type=int, default=1, help="questions per selection")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from copl_ray.config import AdaptConfig, OnboardingConfig
    from copl_ray.graph.onboard import QuestionPool, QuestionSelector

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    cfg = OnboardingConfig()
    print(f"onboarding: max_users={cfg.max_users} shortlist={cfg.shortlist} k={args.k}")
    for dim in args.dims:
        art, pairs = build(args.users, dim, args.prompts, seed=0)
        pool = QuestionPool.from_pairs(art, pairs)
        sel = QuestionSelector(art, pool, AdaptConfig(), cfg)
        t0 = time.perf_counter()
        sel.opening("copl")
        opening_s = time.perf_counter() - t0
        print(
            f"d={dim}: {art.n_users} seen users, {art.n_responses} responses, pool {len(pool)} "
            f"pairs; opening ranking {opening_s:.2f}s (once per server)"
        )
        for n in args.answers:
            ms = time_selection(sel, art, n, args.k, args.repeats, seed=n)
            print(
                f"  copl, {n:2d} answers: p50 {np.median(ms):.2f} ms, "
                f"p90 {np.percentile(ms, 90):.2f} ms ({args.repeats} selections)"
            )


if __name__ == "__main__":
    main()
