"""The per-user sparse adaptation path (serving) equals the dense batched path (offline).

The dense path is checked against hand-computed answers in test_adapt.py; here both
paths run on random graphs under every neighbour rule and weighting, on users whose
neighbours come from the configured rule, from the any-sign fallback, or from nowhere
(mean user), with labels on responses that have no node. Tolerance: both paths compute the
same float32 sums in a different order (a softmax over U masked entries vs over the n
neighbours); with κ = 0.07 an ulp-level change of γ moves a weight by ~1e-6 relative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from copl_ray.config import AdaptConfig
from copl_ray.graph.adapt import SPARSE_MAX_USERS, adapt_one_user, adapt_unseen_users
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.users import ADAPTED, COLUMNS, UserEmbedding

torch.set_num_threads(1)
ATOL = 1e-5
N_USERS, N_RESPONSES, DIM = 300, 120, 8


def random_artifacts(seed: int = 0, normalized: bool = True) -> GNNArtifacts:
    """300 seen users, each labelling 3 random pairs of 120 responses; responses 0..9 are
    never labelled (so a user labelling only those has no neighbour by any rule), 10..19
    only ever rejected (choosing one of them gives no positive-edge neighbour)."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(N_USERS), 3)
    pairs = np.stack(
        [
            rng.choice(np.arange(20, N_RESPONSES), size=len(users)),
            rng.choice(np.arange(10, N_RESPONSES), size=len(users)),
        ],
        axis=1,
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    users = users[: len(pairs)]
    emb = torch.from_numpy(rng.normal(size=(N_USERS, DIM)).astype(np.float32))
    return GNNArtifacts(
        user_ids=[f"v{i}" for i in range(N_USERS)],
        user_embeddings=F.normalize(emb, dim=-1) if normalized else emb,
        response_ids=np.arange(1000, 1000 + N_RESPONSES),
        response_embeddings=torch.from_numpy(rng.normal(size=(N_RESPONSES, DIM)).astype("f4")),
        pos_edge_index=torch.from_numpy(np.stack([users, pairs[:, 0]])),
        neg_edge_index=torch.from_numpy(np.stack([users, pairs[:, 1]])),
        normalized=normalized,
    )


def new_users(art: GNNArtifacts, n: int, seed: int = 1) -> pd.DataFrame:
    """``n`` random users with 1..16 labels, plus the three fallback cases."""
    rng = np.random.default_rng(seed)
    rows = []
    ids = art.response_ids
    for u in range(n):
        for _ in range(int(rng.integers(1, 17))):
            a, b = rng.choice(ids, size=2, replace=False)
            rows.append((f"n{u}", int(a), int(b)))
    # chose only what nobody chose (but some rejected): the any-sign fallback
    rows.append(("only_any_sign", int(ids[12]), int(ids[0])))
    rows.append(("no_neighbour", int(ids[0]), int(ids[1])))  # labelled nowhere: mean user
    rows.append(("unknown", 5, 6))  # responses without a node
    rows.append(("half_unknown", int(ids[20]), 7))  # known chosen still gives edges
    return pd.DataFrame(rows, columns=["user_id", "chosen", "rejected"])


CONFIGS = [
    AdaptConfig(hops=h, include_negative=neg, gamma=g, renormalize=r)
    for h, neg, g, r in itertools.product((2, 4), (False, True), ("sum", "mean"), (True, False))
]


@pytest.mark.parametrize(
    "cfg",
    CONFIGS,
    ids=lambda c: f"k{c.hops}-neg{c.include_negative}-{c.gamma}-renorm{c.renormalize}",
)
@pytest.mark.parametrize("variant", ["weighted", "naive"])
def test_sparse_path_equals_dense_path(cfg, variant):
    art = random_artifacts()
    rows = new_users(art, 40)
    dense = adapt_unseen_users(art, rows, cfg, variant, method="dense")
    sparse = adapt_unseen_users(art, rows, cfg, variant, method="sparse")
    assert list(dense["user_id"]) == list(sparse["user_id"])
    for col in ("n_neighbors", "fallback", "fallback_kind", "n_unknown"):
        assert list(dense[col]) == list(sparse[col]), col
    np.testing.assert_allclose(
        np.stack(sparse["embedding"]), np.stack(dense["embedding"]), atol=ATOL
    )
    # every fallback kind really occurs, so every branch was compared
    kinds = set(dense.set_index("user_id").loc[["no_neighbour", "unknown"], "fallback_kind"])
    assert kinds == {"mean_user"} and (dense["fallback_kind"] == "").sum() >= 30
    if not cfg.include_negative:
        assert dense.set_index("user_id").loc["only_any_sign", "fallback_kind"] == "any_sign"


@pytest.mark.parametrize("variant", ["weighted", "naive", "user_opt"])
def test_one_user_call_equals_offline_adaptation(variant):
    """What the server computes per request = the GNN stage's batched offline adaptation."""
    art = random_artifacts(seed=3, normalized=False)
    rows = new_users(art, SPARSE_MAX_USERS + 4, seed=4)  # > SPARSE_MAX_USERS: "auto" is dense
    cfg = AdaptConfig(include_negative=True)
    offline = adapt_unseen_users(art, rows, cfg, variant)
    assert list(offline.columns) == list(COLUMNS)  # one row = one UserEmbedding record
    offline = offline.set_index("user_id")
    for uid, part in rows.groupby("user_id", sort=False):
        one = adapt_one_user(
            art, part["chosen"].to_numpy(), part["rejected"].to_numpy(), cfg, variant, uid
        )
        want = offline.loc[uid]
        assert isinstance(one, UserEmbedding) and one.user_id == uid
        assert (one.seen, one.kind) == (False, ADAPTED) == (want["seen"], want["kind"])
        assert one.embedding.dtype == np.float32
        np.testing.assert_allclose(one.embedding, want["embedding"], atol=ATOL, err_msg=uid)
        assert (one.n_neighbors, one.fallback, one.fallback_kind, one.n_unknown) == (
            want["n_neighbors"],
            want["fallback"],
            want["fallback_kind"],
            want["n_unknown"],
        ), uid


def test_one_user_call_rejects_bad_input():
    art = random_artifacts()
    with pytest.raises(ValueError, match="zero annotations"):
        adapt_one_user(art, np.array([], np.int64), np.array([], np.int64), AdaptConfig())
    with pytest.raises(ValueError, match="row 1 has chosen == rejected"):
        adapt_one_user(art, np.array([1000, 1001]), np.array([1002, 1001]), AdaptConfig())
    with pytest.raises(ValueError, match="one length"):
        adapt_one_user(art, np.array([1000, 1001]), np.array([1002]), AdaptConfig())
    with pytest.raises(ValueError, match="adapt.hops"):
        adapt_one_user(art, np.array([1000]), np.array([1001]), AdaptConfig(hops=3))
    with pytest.raises(ValueError, match="adapt method"):
        adapt_unseen_users(
            art,
            pd.DataFrame({"user_id": ["x"], "chosen": [1000], "rejected": [1001]}),
            AdaptConfig(),
            method="fast",
        )


def test_artifacts_structures_are_built_once():
    """The adjacency a server reads per request is cached on the artifacts, not rebuilt."""
    art = random_artifacts()
    first = art.neighbour_lists("pos", transpose=True)
    adapt_one_user(art, np.array([1020]), np.array([1030]), AdaptConfig())
    assert art.neighbour_lists("pos", transpose=True) is first
    assert art.binary_adjacency("neg") is art.binary_adjacency("neg")
    indptr, indices = first  # users of response r: each once, matching the edge list
    r = 20
    users = set(art.pos_edge_index[0][art.pos_edge_index[1] == r].tolist())
    assert indices[indptr[r] : indptr[r + 1]].tolist() == sorted(users)
