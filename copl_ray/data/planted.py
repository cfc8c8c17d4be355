"""A planted UF-P-4-shaped preference graph (numpy only, no text): GNN benchmarks and tests.

Groups = rating attributes; each prompt has 4 responses with integer ratings 1..5 per
attribute; the pool is the controversial, tie-free pairs (the groups do not all agree, no
attribute ties); user ``i`` is in group ``i % n_groups`` and labels every pair by that
group's attribute (no noise). It scales to 10× UF-P's users in seconds, so
``benchmarks/gnn.py`` needs no text or tokenizer, and its truth is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def planted_annotations(
    n_users: int, n_groups: int, labels: int, n_val: int, seed: int, n_prompts: int
) -> pd.DataFrame:
    """``n_users·labels`` survey + ``n_users·n_val`` val annotations over a planted pool
    of the controversial, tie-free pairs of ``n_prompts`` prompts × 4 responses (pairs
    drawn with replacement per user: a repeat among ~20 of ~30k pool pairs is rare)."""
    rng = np.random.default_rng(seed)
    ratings = rng.integers(1, 6, size=(n_prompts, 4, n_groups))
    ia, ib = np.triu_indices(4, 1)
    diff = np.sign(ratings[:, ia] - ratings[:, ib])  # [P, 6, G]
    keep = (diff != 0).all(-1) & (diff != diff[..., :1]).any(-1)  # no tie, controversial
    prompt, k = np.nonzero(keep)
    resp_a, resp_b = prompt * 4 + ia[k], prompt * 4 + ib[k]
    label = diff[prompt, k]  # [pool, G]: +1 = group prefers a
    group = np.arange(n_users) % n_groups
    take = labels + n_val
    picks = rng.integers(0, len(resp_a), size=(n_users, take))
    users = np.repeat(np.arange(n_users), take)
    pid = picks.ravel()
    lab = label[pid, group[users]]
    chosen = np.where(lab > 0, resp_a[pid], resp_b[pid])
    rejected = np.where(lab > 0, resp_b[pid], resp_a[pid])
    split = np.tile(np.array(["survey"] * labels + ["val"] * n_val), n_users)
    return pd.DataFrame(
        {
            "user_id": users.astype(str),
            "pair_id": pid,
            "chosen": chosen,
            "rejected": rejected,
            "split": split,
        }
    )
