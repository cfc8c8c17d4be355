"""Graph building from the annotation contract: nodes, signed edges, normalisation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from copl_ray.graph.bipartite import build_graph, normalized_csr, pair_index


def tables():
    ann = pd.DataFrame(
        [
            ("u1", 0, 10, 11, "survey"),
            ("u1", 1, 12, 10, "survey"),
            ("u2", 0, 10, 11, "survey"),
            ("u2", 2, 13, 12, "val"),  # 13 only in a val pair: no node
            ("u1", 3, 99, 98, "test"),  # test responses: no nodes
            ("u3", 0, 11, 10, "val"),  # seen user without survey labels
            ("x1", 0, 11, 10, "survey"),  # unseen user: adaptation input, not an edge
        ],
        columns=["user_id", "pair_id", "chosen", "rejected", "split"],
    )
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "x1"],
            "seen": [True, True, True, False],
            "group": ["a", "a", "b", "b"],
        }
    )
    return ann, users


def test_nodes_and_signed_edges_come_from_seen_survey_labels_only():
    ann, users = tables()
    g = build_graph(ann, users)
    assert g.user_ids == ["u1", "u2", "u3"]  # every seen user (B2), no unseen user
    assert g.response_ids.tolist() == [10, 11, 12]  # val/test-only responses excluded
    pos = {(g.user_ids[u], int(g.response_ids[r])) for u, r in g.pos_edge_index.T.tolist()}
    neg = {(g.user_ids[u], int(g.response_ids[r])) for u, r in g.neg_edge_index.T.tolist()}
    assert pos == {("u1", 10), ("u1", 12), ("u2", 10)}
    assert neg == {("u1", 11), ("u1", 10), ("u2", 11)}
    data = g.to_hetero_data()
    assert data["user"].num_nodes == 3 and data["response"].num_nodes == 3
    assert data["user", "prefers", "response"].edge_index.shape == (2, 3)
    assert torch.equal(data["response", "rev_rejects", "user"].edge_index, g.neg_edge_index.flip(0))


def test_each_sign_is_normalised_by_its_own_degrees():
    ann, users = tables()
    g = build_graph(ann, users)
    adj = g.adjacency()
    dense = adj.user_pos.to_dense()
    # positive degrees: u1 2, u2 1; response 10 has 2 positive edges, 12 one
    assert dense[0, 0] == pytest.approx(1 / (2 * 2) ** 0.5)
    assert dense[0, 2] == pytest.approx(1 / (2 * 1) ** 0.5)
    assert dense[1, 0] == pytest.approx(1 / (1 * 2) ** 0.5)
    neg = adj.user_neg.to_dense()
    # negative degrees: u1 2, u2 1; response 11 two negative edges, 10 one
    assert neg[0, 1] == pytest.approx(1 / (2 * 2) ** 0.5)
    assert neg[0, 0] == pytest.approx(1 / (2 * 1) ** 0.5)
    assert torch.allclose(adj.resp_pos.to_dense(), dense.T)
    assert adj.user_pos.layout == torch.sparse_csr


def test_duplicate_edges_add_up_like_the_official_code():
    edges = torch.tensor([[0, 0, 1], [0, 0, 0]])
    dense = normalized_csr(edges, (2, 1)).to_dense()
    # A = [[2], [1]]: deg_u = (2, 1), deg_r = 3
    assert dense[0, 0] == pytest.approx(2 / (2 * 3) ** 0.5)
    assert dense[1, 0] == pytest.approx(1 / (1 * 3) ** 0.5)


def test_pair_index_counts_pairs_whose_responses_have_no_node():
    ann, users = tables()
    g = build_graph(ann, users)
    val = pair_index(g, ann, "val")
    assert len(val) == 1 and val.n_skipped == 1  # u2's val pair has response 13
    test = pair_index(g, ann, "test")
    assert len(test) == 0 and test.n_skipped == 1


def test_bad_tables_raise_clear_errors():
    ann, users = tables()
    with pytest.raises(ValueError, match="missing column"):
        build_graph(ann.drop(columns=["rejected"]), users)
    with pytest.raises(ValueError, match="no 'survey' annotations"):
        build_graph(ann[ann["split"] != "survey"], users)
    with pytest.raises(ValueError, match="no seen users"):
        build_graph(ann, users.assign(seen=False))
