"""Unseen-user adaptation (docs/method.md §4) on hand-made artifacts whose answers we know."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from copl_ray.config import AdaptConfig
from copl_ray.graph.adapt import adapt_unseen_users
from copl_ray.graph.artifacts import GNNArtifacts

torch.set_num_threads(1)

# seen users v0..v3, responses with ids 100..104 (node r0..r4)
#   positive: v0-r0, v1-r0, v1-r3, v2-r3, v3-r4      negative: v2-r1, v3-r1, v0-r2
POS = [(0, 0), (1, 0), (1, 3), (2, 3), (3, 4)]
NEG = [(2, 1), (3, 1), (0, 2)]


def artifacts(normalized: bool = True) -> GNNArtifacts:
    g = torch.Generator().manual_seed(0)
    users = torch.randn(4, 3, generator=g)
    users = F.normalize(users, dim=-1) if normalized else users
    return GNNArtifacts(
        user_ids=["v0", "v1", "v2", "v3"],
        user_embeddings=users,
        response_ids=np.arange(100, 105),
        response_embeddings=torch.randn(5, 3, generator=g),
        pos_edge_index=torch.tensor(POS).T,
        neg_edge_index=torch.tensor(NEG).T,
        normalized=normalized,
    )


def ann(rows):
    return pd.DataFrame(rows, columns=["user_id", "chosen", "rejected"])


# both paths are pinned to the hand-computed answers: the batched dense one (offline) and
# the per-user sparse one (serving)
METHODS = pytest.mark.parametrize("method", ["dense", "sparse"])


@METHODS
def test_weighted_rule_is_softmax_of_summed_log_sigmoid_over_two_hop_neighbours(method):
    art = artifacts()
    cfg = AdaptConfig(renormalize=False)
    # n1 chose r0 (over r1) and r3 (over r2): 2-hop neighbours via positive edges {v0, v1, v2}
    out = adapt_unseen_users(art, ann([("n1", 100, 101), ("n1", 103, 102)]), cfg, method=method)
    row = out.iloc[0]
    assert row["n_neighbors"] == 3 and not row["fallback"] and row["n_unknown"] == 0
    eu, er = art.user_embeddings, art.response_embeddings
    nb = [0, 1, 2]
    gamma = torch.stack([F.logsigmoid(eu[nb] @ (er[a] - er[b])) for a, b in ((0, 1), (3, 2))]).sum(
        0
    )
    w = torch.softmax(gamma / 0.07, 0)
    assert np.allclose(row["embedding"], (w[:, None] * eu[nb]).sum(0).numpy(), atol=1e-6)
    # gamma="mean" divides by the number of pairs (the official code)
    mean = adapt_unseen_users(
        art,
        ann([("n1", 100, 101), ("n1", 103, 102)]),
        AdaptConfig(renormalize=False, gamma="mean"),
        method=method,
    )
    w2 = torch.softmax(gamma / 2 / 0.07, 0)
    assert np.allclose(mean.iloc[0]["embedding"], (w2[:, None] * eu[nb]).sum(0).numpy(), atol=1e-6)


@METHODS
def test_naive_average_negative_edges_and_four_hops(method):
    art = artifacts()
    one = ann([("n1", 100, 101)])  # chose r0, rejected r1
    naive = adapt_unseen_users(art, one, AdaptConfig(renormalize=False), "naive", method).iloc[0]
    assert naive["n_neighbors"] == 2  # v0, v1 share the chosen r0
    assert np.allclose(naive["embedding"], art.user_embeddings[[0, 1]].mean(0).numpy(), atol=1e-6)
    neg = adapt_unseen_users(art, one, AdaptConfig(include_negative=True), "naive", method).iloc[0]
    assert neg["n_neighbors"] == 4  # + v2, v3 who also rejected r1
    four = adapt_unseen_users(art, one, AdaptConfig(hops=4), "naive", method).iloc[0]
    assert four["n_neighbors"] == 3  # v1 chose r3, so did v2
    with pytest.raises(ValueError, match="adapt.hops"):
        adapt_unseen_users(art, one, AdaptConfig(hops=3))


@METHODS
def test_fallbacks_are_flagged_and_never_zero(method):
    art = artifacts()
    rows = ann(
        [
            ("lonely", 102, 104),  # chose r2 (nobody chose it): any-sign neighbours v0, v3
            ("ghost", 900, 901),  # both responses unknown: mean seen user
            ("ok", 100, 101),
        ]
    )
    for variant in ("weighted", "naive", "user_opt"):
        out = adapt_unseen_users(art, rows, AdaptConfig(), variant, method).set_index("user_id")
        emb = np.stack(out["embedding"].to_numpy())
        assert np.all(np.linalg.norm(emb, axis=1) > 0.99)  # renormalised, never zero (B12)
        assert out.loc["ghost", "fallback"] and out.loc["ghost", "fallback_kind"] == "mean_user"
        assert out.loc["ghost", "n_unknown"] == 1 and out.loc["ok", "n_unknown"] == 0
        assert not out.loc["ok", "fallback"]
        mean = F.normalize(art.user_embeddings.mean(0), dim=0).numpy()
        assert np.allclose(out.loc["ghost", "embedding"], mean, atol=1e-6)
    naive = adapt_unseen_users(art, rows, AdaptConfig(), "naive", method).set_index("user_id")
    assert naive.loc["lonely", "fallback_kind"] == "any_sign"
    assert naive.loc["lonely", "n_neighbors"] == 2


def test_vectorised_batch_equals_one_user_at_a_time():
    art = artifacts()
    rows = ann([("a", 100, 101), ("b", 103, 102), ("b", 100, 104), ("c", 104, 100)])
    cfg = AdaptConfig(include_negative=True)
    for variant in ("weighted", "naive", "user_opt"):
        batch = adapt_unseen_users(art, rows, cfg, variant, method="dense").set_index("user_id")
        for uid, part in rows.groupby("user_id"):
            single = adapt_unseen_users(art, part, cfg, variant).iloc[0]
            assert np.allclose(batch.loc[uid, "embedding"], single["embedding"], atol=1e-5)
            assert batch.loc[uid, "n_neighbors"] == single["n_neighbors"]


def test_user_opt_fits_the_labels():
    art = artifacts()
    rows = ann([("n", 100, 101), ("n", 103, 102), ("n", 104, 101)])
    cfg = AdaptConfig(renormalize=False, user_opt_steps=200, user_opt_lr=0.05)
    emb = torch.from_numpy(adapt_unseen_users(art, rows, cfg, "user_opt").iloc[0]["embedding"])
    er = art.response_embeddings
    margins = [float(emb @ (er[a] - er[b])) for a, b in ((0, 1), (3, 2), (4, 1))]
    assert all(m > 0 for m in margins)


def test_bad_input_raises_clear_errors():
    art = artifacts()
    with pytest.raises(ValueError, match="zero annotations"):
        adapt_unseen_users(art, ann([]), AdaptConfig())
    with pytest.raises(ValueError, match="missing column"):
        adapt_unseen_users(art, ann([("n", 100, 101)]).drop(columns="rejected"), AdaptConfig())
    with pytest.raises(ValueError, match="row 1 has chosen == rejected"):
        adapt_unseen_users(art, ann([("n", 100, 101), ("n", 102, 102)]), AdaptConfig())
    with pytest.raises(ValueError, match="variant"):
        adapt_unseen_users(art, ann([("n", 100, 101)]), AdaptConfig(), "magic")
