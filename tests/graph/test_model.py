"""copl_ray/graph/model.py: CoPLGNN shapes, export scale of user embeddings, pair accuracy
and score margins on hand-made embeddings (``s_ur = <e_u, e_r>``).

(The BPR loss and its closed-form backward are checked in tests/graph/test_train.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.graph.bipartite import BipartiteGraph, PairIndex
from copl_ray.graph.model import (
    CoPLGNN,
    GNNShape,
    export_user_embeddings,
    pair_accuracy,
    score_margin,
)


def graph() -> BipartiteGraph:
    """3 users × 4 responses: u0 +r0 −r1, u1 +r1 −r2, u2 +r3."""
    pos = torch.tensor([[0, 1, 2], [0, 1, 3]])
    neg = torch.tensor([[0, 1], [1, 2]])
    return BipartiteGraph(["a", "b", "c"], np.arange(4, dtype=np.int64), pos, neg)


def test_forward_shapes_and_zero_layers_is_the_embedding_table():
    torch.manual_seed(0)
    g = graph()
    model = CoPLGNN(GNNShape(n_users=3, n_responses=4, dim=8, layers=2, edge_dropout=0.0))
    eu, er = model.eval()(g.adjacency())
    assert eu.shape == (3, 8) and er.shape == (4, 8)
    assert len(model.convs) == 2
    flat = CoPLGNN(GNNShape(n_users=3, n_responses=4, dim=8, layers=0))
    eu0, er0 = flat(g.adjacency())
    assert torch.equal(eu0, flat.user_emb) and torch.equal(er0, flat.resp_emb)


def test_export_user_embeddings_unit_norm_or_unchanged():
    e = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    out = export_user_embeddings(e, True)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert torch.equal(export_user_embeddings(e, False), e)


E_USER = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
E_RESP = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])


def test_score_margin_is_s_ua_minus_s_ub():
    pairs = PairIndex(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 0]), torch.tensor([1, 1, 2]))
    # u0: 1 − 0, 0.5 − 0; u1: 0 − 0.5
    assert score_margin(E_USER, E_RESP, pairs).tolist() == [1.0, 0.5, -0.5]


def test_pair_accuracy_counts_strictly_positive_margins():
    pairs = PairIndex(
        torch.tensor([0, 0, 1, 1, 0]),
        torch.tensor([0, 2, 2, 0, 2]),
        torch.tensor([1, 1, 0, 1, 2]),
    )
    # margins 1, .5, .5 (right), −1 (wrong), 0 (a tie is not a win): 3 of 5
    assert pair_accuracy(E_USER, E_RESP, pairs) == pytest.approx(0.6)
    empty = PairIndex(torch.zeros(0, dtype=torch.long), *[torch.zeros(0, dtype=torch.long)] * 2)
    assert pair_accuracy(E_USER, E_RESP, empty) is None
