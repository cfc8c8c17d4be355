"""The GNN-only row: ``<e_u, e_x>`` on the test pairs whose responses are graph nodes.

Truth is built in: two users with opposite embeddings on a 1-d line of responses, so
user "up" prefers the larger coordinate and "down" the smaller; every in-graph pair's
correct answer is known, and pairs naming a response outside the graph are skipped.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from copl_ray.eval.stage import gnn_scorer
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.users import UserEmbedding, UserEmbeddings

RESPONSES = np.array([10, 11, 12, 13])  # graph nodes; response 99 is not one


def art() -> GNNArtifacts:
    edges = torch.tensor([[0, 1], [0, 0]])  # any edges: the scorer reads embeddings only
    return GNNArtifacts(
        user_ids=["up", "down"],
        user_embeddings=torch.tensor([[1.0, 0.0], [-1.0, 0.0]]),
        response_ids=RESPONSES,
        response_embeddings=torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]),
        pos_edge_index=edges,
        neg_edge_index=edges,
        normalized=True,
    )


def table(**rows) -> UserEmbeddings:
    return UserEmbeddings.from_records(UserEmbedding(u, np.array(e)) for u, e in rows.items())


def pairs(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "chosen", "rejected"])
    return frame.assign(group="", controversial=-1)


def test_gnn_scorer_scores_in_graph_pairs_against_known_preferences():
    seen = pairs(
        [
            ("up", 13, 10),  # up prefers the larger coordinate: right
            ("up", 10, 12),  # wrong
            ("down", 10, 13),  # down prefers the smaller: right
            ("down", 11, 99),  # 99 has no node: skipped
        ]
    )
    unseen = pairs([("new", 12, 11), ("new", 10, 11), ("ghost", 12, 11)])
    data = SimpleNamespace(seen=seen, unseen=unseen)
    tables = {
        "seen": table(up=[1.0, 0.0], down=[-1.0, 0.0]),
        "unseen": table(new=[0.5, 0.0]),  # adapted toward "up"; "ghost" has none
    }
    out = gnn_scorer(art(), data, tables)
    assert out["seen"]["overall"] == pytest.approx(2 / 3)
    assert (out["seen"]["n_pairs"], out["seen"]["n_skipped"], out["seen"]["n_users"]) == (3, 1, 2)
    assert out["unseen"]["overall"] == pytest.approx(1 / 2)
    assert (out["unseen"]["n_pairs"], out["unseen"]["n_skipped"]) == (2, 1)


def test_gnn_scorer_with_no_in_graph_pair_reports_none_not_zero():
    data = SimpleNamespace(seen=pairs([("up", 98, 99)]), unseen=pairs([]))
    out = gnn_scorer(art(), data, {"seen": table(up=[1.0, 0.0]), "unseen": table()})
    assert out["seen"]["overall"] is None
    assert (out["seen"]["n_pairs"], out["seen"]["n_skipped"]) == (0, 1)
    assert out["unseen"]["n_pairs"] == 0
