"""Spectral initialisation (``gnn.init=spectral``): the math, and what it buys on known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import copl_ray.graph.spectral as spectral
from copl_ray.config import ConfigError, GNNConfig, load_config
from copl_ray.data.planted import planted_annotations
from copl_ray.graph.bipartite import build_graph, pair_index
from copl_ray.graph.spectral import (
    normalized_signed_matrix,
    signed_spectral_factors,
    spectral_init_,
)
from copl_ray.graph.train import GNNTrainer

torch.set_num_threads(1)


def small_graph(seed: int = 0, n_users: int = 30, n_resp: int = 40, labels: int = 5):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for _ in range(labels):
            a, b = rng.choice(n_resp, 2, replace=False)
            rows.append((f"u{u}", int(a), int(b), "survey"))
    rows.append(("u0", 3, 7, "survey"))  # a duplicate edge: adds up, as in the GNN
    rows.append(("u0", 3, 7, "survey"))
    ann = pd.DataFrame(rows, columns=["user_id", "chosen", "rejected", "split"])
    return ann, build_graph(ann)


def test_normalised_signed_matrix_is_the_formula():
    ann, graph = small_graph()
    u = graph.user_index(ann["user_id"])
    a, b = graph.response_index(ann["chosen"]), graph.response_index(ann["rejected"])
    signed = np.zeros((graph.n_users, graph.n_responses))
    deg_u, deg_r = np.zeros(graph.n_users), np.zeros(graph.n_responses)
    for ui, ai, bi in zip(u, a, b):
        signed[ui, ai] += 1
        signed[ui, bi] -= 1
        deg_u[ui] += 2
        deg_r[ai] += 1
        deg_r[bi] += 1
    expect = signed / np.sqrt(deg_u)[:, None] / np.sqrt(np.maximum(deg_r, 1))[None, :]
    np.testing.assert_allclose(normalized_signed_matrix(graph).toarray(), expect, atol=1e-12)


@pytest.mark.parametrize("solver", ["dense", "arpack"])
def test_factors_are_the_top_singular_triplets(monkeypatch, solver):
    _, graph = small_graph()
    if solver == "arpack":
        monkeypatch.setattr(spectral, "DENSE_SVD_MAX", 0)
    else:
        monkeypatch.setattr(spectral, "DENSE_SVD_MAX", 10**9)
    k = 5
    f = signed_spectral_factors(graph, k)
    mat = normalized_signed_matrix(graph).toarray()
    s_all = np.linalg.svd(mat, compute_uv=False)
    np.testing.assert_allclose(f.singular_values, s_all[:k], rtol=1e-8)
    assert np.all(np.diff(f.singular_values) <= 1e-12)  # largest first
    # each triplet, whatever the solver: Â q = s p and Âᵀ p = s q, unit vectors
    np.testing.assert_allclose(mat @ f.resp, f.user * f.singular_values, atol=1e-8)
    np.testing.assert_allclose(mat.T @ f.user, f.resp * f.singular_values, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(f.user, axis=0), 1.0, rtol=1e-8)
    # fixed signs: the largest-magnitude response entry of each vector is positive
    assert np.all(f.resp[np.abs(f.resp).argmax(0), np.arange(k)] > 0)
    again = signed_spectral_factors(graph, k)
    np.testing.assert_array_equal(again.user, f.user)


def test_init_sets_k_coordinates_at_the_stated_scale_and_keeps_the_rest():
    _, graph = small_graph()
    torch.manual_seed(0)
    user, resp = torch.randn(graph.n_users, 16), torch.randn(graph.n_responses, 16)
    user0, resp0 = user.clone(), resp.clone()
    k, c = 4, 0.05
    f = spectral_init_(user, resp, graph, k=k, scale=c)
    torch.testing.assert_close(user[:, k:], user0[:, k:], rtol=0, atol=0)
    torch.testing.assert_close(resp[:, k:], resp0[:, k:], rtol=0, atol=0)
    s, floor = f.singular_values, f.floor
    assert floor == pytest.approx(np.linalg.svd(normalized_signed_matrix(graph).toarray())[1][k])
    shrunk = (s - floor) / (s[0] - floor)  # soft-thresholded at the first value not kept
    rms = user[:, :k].double().pow(2).mean(0).sqrt().numpy()
    np.testing.assert_allclose(rms, c * np.sqrt(shrunk), rtol=1e-5)
    # on those coordinates the score is the shrunk rank-k reconstruction of Â, × c²√(UR)
    a_k = (f.user * shrunk) @ f.resp.T
    const = c**2 * np.sqrt(graph.n_users * graph.n_responses)
    score = (user[:, :k].double() @ resp[:, :k].double().T).numpy()
    np.testing.assert_allclose(score, const * a_k, atol=1e-5)


def test_k_is_capped_by_the_graph_and_bad_values_fail_clearly():
    _, graph = small_graph(n_users=6, labels=2)
    f = signed_spectral_factors(graph, 50)
    assert f.k == min(graph.n_users, graph.n_responses) and f.floor == 0.0
    with pytest.raises(ValueError, match="spectral_k"):
        signed_spectral_factors(graph, 0)
    with pytest.raises(ValueError, match="exceeds gnn.dim"):
        spectral_init_(
            torch.zeros(graph.n_users, 4), torch.zeros(graph.n_responses, 4), graph, 8, 0.1
        )
    with pytest.raises(ConfigError, match="gnn.spectral_k"):
        load_config("tiny", ["gnn.init=spectral", "gnn.spectral_k=65"])
    with pytest.raises(ConfigError, match="gnn.init"):
        load_config("tiny", ["gnn.init=svd"])


# --- known truth: the planted UF-P-4 graph (user i in group i % 4, no label noise) ---

PLANTED = dict(n_users=1000, n_groups=4, labels=16, n_val=5, seed=0, n_prompts=1725)


@pytest.fixture(scope="module")
def planted():
    ann = planted_annotations(**PLANTED)
    graph = build_graph(ann)
    return ann, graph, pair_index(graph, ann, "survey"), pair_index(graph, ann, "val")


def direct_vote_oracle(ann: pd.DataFrame) -> float:
    """Held-out accuracy of a rule that knows every user's group: the majority of the
    same-group survey labels on the same pair, a coin flip without one (the GNN must
    find the groups itself; it also may use transitivity and the other groups' labels)."""
    group = ann["user_id"].astype(int) % PLANTED["n_groups"]
    survey, val = ann[ann["split"] == "survey"], ann[ann["split"] == "val"]
    votes: dict = {}
    for g, a, b in zip(group[survey.index], survey["chosen"], survey["rejected"]):
        votes[(g, a, b)] = votes.get((g, a, b), 0) + 1
    nodes = set(survey["chosen"]) | set(survey["rejected"])
    hits = []
    for g, a, b in zip(group[val.index], val["chosen"], val["rejected"]):
        if a in nodes and b in nodes:
            v = votes.get((g, a, b), 0) - votes.get((g, b, a), 0)
            hits.append(1.0 if v > 0 else 0.0 if v < 0 else 0.5)
    return float(np.mean(hits))


def test_spectral_user_factors_recover_the_planted_groups(planted):
    ann, graph, _, _ = planted
    from sklearn.cluster import KMeans

    f = signed_spectral_factors(graph, 4)
    truth = np.array([int(u) % 4 for u in graph.user_ids])
    pred = KMeans(4, n_init=10, random_state=0).fit_predict(f.user * f.singular_values)
    # the group-recovery bar, before any training (16 labels a user suffice)
    assert adjusted_rand_score(truth, pred) >= 0.8


def test_spectral_init_reaches_the_group_oracle_where_random_init_is_still_on_its_plateau(
    planted,
):
    """60 full-graph steps at the benchmark's fast settings (d=32, L=4). The bar for the
    spectral start is the direct-vote oracle that *knows* the groups (0.851 here; measured:
    0.880 / 0.877 for seeds 0 / 1). From random tables the same 60 steps stay on the
    all-users-alike plateau (≈ 0.60, measured: 0.595 / 0.574): the bar there is only that
    the spectral start is ≥ 0.15 ahead — what the switch is for."""
    ann, graph, train, val = planted
    oracle = direct_vote_oracle(ann)
    assert 0.82 < oracle < 0.88
    acc = {}
    for init in ("random", "spectral"):
        cfg = GNNConfig(
            dim=32,
            layers=4,
            schedule="full",
            lr=1e-4,
            weight_lr_scale=100,
            edge_dropout=0.3,
            l2_reference_batch=1024,
            epochs=300,
            eval_every=10,
            init=init,
        )
        trainer = GNNTrainer(graph, train, val, cfg)
        for _ in range(60):
            trainer.train_epoch()
            trainer.epoch += 1
        acc[init] = trainer.evaluate()
    assert acc["spectral"] >= oracle, acc
    assert acc["spectral"] >= acc["random"] + 0.15, acc
