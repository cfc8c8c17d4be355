"""copl_ray/graph/artifacts.py: GNNArtifacts save/load round trip (seen users read back in
graph node order from the user-embedding file), the 0/1 adjacency and neighbour lists of a
3-user graph written out by hand, and the mean seen user at export scale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.users import ADAPTED, TRAINED, UserEmbedding, UserEmbeddings

USER_IDS = ["a", "b", "c"]
RESPONSE_IDS = np.array([10, 11, 12, 13], dtype=np.int64)
USER_EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def small_artifacts(normalized: bool = True) -> GNNArtifacts:
    """a: +10 (twice) +12 ; b: +12 −10 ; c: +13 −11  (node indices: response id − 10)."""
    pos = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 2, 2, 3]])
    neg = torch.tensor([[1, 2], [0, 1]])
    return GNNArtifacts(
        USER_IDS, USER_EMB, RESPONSE_IDS, torch.arange(8.0).reshape(4, 2), pos, neg, normalized
    )


def write_artifacts(gnn_dir: Path, normalized: bool = True) -> GNNArtifacts:
    """Save :func:`small_artifacts` and a user file in another order than the graph's,
    with one adapted unseen user that must not be read as a seen one."""
    art = small_artifacts(normalized)
    art.save(gnn_dir)
    records = [UserEmbedding("z", np.array([9.0, 9.0]), seen=False, kind=ADAPTED)]
    records += [
        UserEmbedding(u, USER_EMB[i].numpy(), seen=True, kind=TRAINED)
        for i, u in reversed(list(enumerate(USER_IDS)))
    ]
    UserEmbeddings.from_records(records).write(gnn_dir)
    return art


def test_save_load_round_trip(tmp_path):
    art = write_artifacts(tmp_path / "gnn", normalized=False)
    back = GNNArtifacts.load(tmp_path / "gnn")
    assert back.user_ids == USER_IDS and back.normalized is False and back.dim == 2
    assert torch.equal(back.user_embeddings, USER_EMB)  # graph order, "z" left out
    assert back.response_ids.tolist() == RESPONSE_IDS.tolist()
    assert torch.equal(back.response_embeddings, art.response_embeddings)
    assert torch.equal(back.pos_edge_index, art.pos_edge_index)
    assert torch.equal(back.neg_edge_index, art.neg_edge_index)
    assert back.response_index(np.array([13, 10, 99])).tolist() == [3, 0, -1]


def test_load_names_the_missing_file(tmp_path):
    write_artifacts(tmp_path)
    (tmp_path / "graph.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"graph.json is missing \(run the gnn stage\)"):
        GNNArtifacts.load(tmp_path)


def test_binary_adjacency_by_hand_duplicates_count_once():
    art = small_artifacts()
    assert art.binary_adjacency("pos").to_dense().tolist() == [
        [1, 0, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ]
    assert art.binary_adjacency("neg").to_dense().tolist() == [
        [0, 0, 0, 0],
        [1, 0, 0, 0],
        [0, 1, 0, 0],
    ]
    assert art.binary_adjacency("pos", transpose=True).to_dense().tolist() == [
        [1, 0, 0],
        [0, 0, 0],
        [1, 1, 0],
        [0, 0, 1],
    ]
    assert art.binary_adjacency("pos") is art.binary_adjacency("pos")  # built once


def test_neighbour_lists_by_hand():
    art = small_artifacts()
    indptr, indices = art.neighbour_lists("pos")
    assert indptr.tolist() == [0, 2, 3, 4] and indices.tolist() == [0, 2, 2, 3]
    indptr, indices = art.neighbour_lists("pos", transpose=True)
    assert indptr.tolist() == [0, 1, 1, 3, 4] and indices.tolist() == [0, 0, 1, 2]
    indptr, indices = art.neighbour_lists("neg", transpose=True)
    assert indptr.tolist() == [0, 1, 2, 2, 2] and indices.tolist() == [1, 2]


def test_mean_user_at_export_scale():
    """mean of (1,0), (0,1), (1,1) = (2/3, 2/3); unit norm when exports are normalised."""
    raw = small_artifacts(normalized=False).mean_user()
    assert torch.allclose(raw, torch.tensor([2 / 3, 2 / 3]))
    unit = small_artifacts(normalized=True)
    assert torch.allclose(unit.mean_user(), torch.full((2,), 1 / math.sqrt(2)))
    unit.mean_user().zero_()  # a copy: the cached mean is not changed through it
    assert torch.allclose(unit.mean_user(), torch.full((2,), 1 / math.sqrt(2)))
