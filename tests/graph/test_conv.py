"""The signed layer against the per-edge formulas of docs/method.md §2 and the official code's
(docs/reference-code.md B4)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from copl_ray.graph.bipartite import build_graph
from copl_ray.graph.conv import SignedBipartiteConv

torch.set_num_threads(1)  # 2 shared cores: intra-op threads only oversubscribe


def small_graph(seed: int = 0, n_users: int = 6, n_resp: int = 8, n_labels: int = 5):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(n_users):
        for _ in range(n_labels):
            a, b = torch.randperm(n_resp, generator=g)[:2].tolist()
            rows.append((f"u{u}", 0, a, b, "survey"))
    ann = pd.DataFrame(rows, columns=["user_id", "pair_id", "chosen", "rejected", "split"])
    return build_graph(ann)


def per_edge_side(x_dst, x_src, edges, w, slope):
    """Paper message written edge by edge (the slow, literal formula)."""
    out = []
    for sign_edges, (wa, wb) in ((edges[0], ("w1", "w2")), (edges[1], ("w3", "w4"))):
        dst, src = sign_edges
        deg_d = torch.bincount(dst, minlength=len(x_dst)).float()
        deg_s = torch.bincount(src, minlength=len(x_src)).float()
        m = torch.zeros_like(x_dst)
        for i, j in zip(dst.tolist(), src.tolist()):
            alpha = 1.0 / (deg_d[i] * deg_s[j]).sqrt()
            m[i] += alpha * (w[wa](x_src[j]) + w[wb](x_src[j] * x_dst[i]))
        out.append(m)
    return F.leaky_relu(w["self"](x_dst) + out[0] + out[1], slope)


def test_paper_layer_equals_the_per_edge_formula_on_both_sides():
    graph = small_graph()
    adj = graph.adjacency()
    torch.manual_seed(0)
    conv = SignedBipartiteConv(5, "paper", negative_slope=0.2)
    xu, xr = torch.randn(graph.n_users, 5), torch.randn(graph.n_responses, 5)
    new_u, new_r = conv(xu, xr, adj)
    pos, neg = graph.pos_edge_index, graph.neg_edge_index
    exp_u = per_edge_side(xu, xr, (pos, neg), conv.user, 0.2)
    exp_r = per_edge_side(xr, xu, (pos.flip(0), neg.flip(0)), conv.resp, 0.2)
    assert torch.allclose(new_u, exp_u, atol=1e-5)
    assert torch.allclose(new_r, exp_r, atol=1e-5)


def test_paper_layer_has_its_own_five_matrices_per_side_and_reference_shares_three():
    paper = SignedBipartiteConv(4, "paper")
    assert sum(p.numel() for p in paper.parameters()) == 10 * 16  # no bias (docs/method.md §2)
    assert set(paper.user) == set(paper.resp) == {"self", "w1", "w2", "w3", "w4"}
    assert paper.user["w1"].weight is not paper.resp["w1"].weight
    ref = SignedBipartiteConv(4, "reference")
    assert sum(p.numel() for p in ref.parameters()) == 3 * (16 + 4)  # shared, with bias (B4)
    with pytest.raises(ValueError, match="gnn.message"):
        SignedBipartiteConv(4, "other")


def test_reference_layer_matches_the_official_update():
    graph = small_graph(seed=1)
    adj = graph.adjacency()
    torch.manual_seed(1)
    conv = SignedBipartiteConv(3, "reference")
    xu, xr = torch.randn(graph.n_users, 3), torch.randn(graph.n_responses, 3)
    new_u, new_r = conv(xu, xr, adj)
    w = conv.shared
    for x, other, a_pos, a_neg, got in (
        (xu, xr, adj.user_pos, adj.user_neg, new_u),
        (xr, xu, adj.resp_pos, adj.resp_neg, new_r),
    ):
        zp, zn = a_pos.to_dense() @ other, a_neg.to_dense() @ other
        m = zp + w["pos"](zp * x) - (zn + w["neg"](zn * x)) + w["self"](x)
        assert torch.allclose(got, F.leaky_relu(m, 0.2), atol=1e-5)


def test_edge_dropout_only_in_training_and_unbiased_on_average():
    graph = small_graph(seed=2, n_users=20, n_resp=10, n_labels=8)
    adj = graph.adjacency()
    torch.manual_seed(2)
    conv = SignedBipartiteConv(4, "reference", edge_dropout=0.5)
    xu, xr = torch.randn(graph.n_users, 4), torch.randn(graph.n_responses, 4)
    conv.eval()
    a1, _ = conv(xu, xr, adj)
    a2, _ = conv(xu, xr, adj)
    assert torch.equal(a1, a2)
    conv.train()
    d1, _ = conv(xu, xr, adj)
    assert not torch.allclose(d1, a1)
    # E[dropped Â x] = Â x: the aggregation is rescaled by 1/(1-p)
    from copl_ray.graph.conv import aggregate, drop_edges

    mean = torch.stack(
        [aggregate(drop_edges(adj.user_pos, 0.5, True), xr) for _ in range(2000)]
    ).mean(0)
    assert torch.allclose(mean, aggregate(adj.user_pos, xr), atol=0.08)


def test_gradients_reach_embeddings_and_every_weight():
    graph = small_graph(seed=3)
    adj = graph.adjacency()
    conv = SignedBipartiteConv(4, "paper")
    xu = torch.randn(graph.n_users, 4, requires_grad=True)
    xr = torch.randn(graph.n_responses, 4, requires_grad=True)
    nu, nr = conv(xu, xr, adj)
    (nu.sum() + nr.sum()).backward()
    assert xu.grad.abs().sum() > 0 and xr.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
