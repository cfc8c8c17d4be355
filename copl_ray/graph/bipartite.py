"""The signed user–response bipartite graph of CoPL (docs/method.md §2).

Nodes: every **seen** user (also those without a survey label, so every seen user gets
an embedding — docs/reference-code.md B2) and every response that occurs in a ``survey``
annotation. Edges: for each survey annotation ``(u, chosen ≻ rejected)`` a positive
edge ``u–chosen`` and a negative edge ``u–rejected``. ``val`` and ``test`` annotations
never enter the graph.

Responses that occur only in ``val``/``test`` pairs have no node and therefore no
trained embedding: GNN accuracies are computed on pairs whose two responses are both
in the graph, and the others are counted (``n_skipped``). The reward model scores
response *text* and needs no node.

Each sign is normalised with its own degrees (LightGCN-style)::

    Â⁺[u, r] = A⁺[u, r] / sqrt(|N⁺_u| |N⁺_r|),   Â⁻ likewise with the negative degrees.

Duplicate edges (the same user labelling the same response twice) add up, as in the
official code.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


def coo_to_csr(indices: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """COO → CSR without torch's "beta"/"invariant checks" warnings (sizes are ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(indices, values, size=size, check_invariants=False)
        return coo.coalesce().to_sparse_csr()


def csr_with_values(adj: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The CSR ``adj`` with its stored values replaced (same sparsity pattern)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            adj.crow_indices(),
            adj.col_indices(),
            values,
            size=adj.shape,
            device=adj.device,
            check_invariants=False,
        )


REQUIRED_ANNOTATION_COLUMNS = ("user_id", "chosen", "rejected", "split")


@dataclass
class SignedAdjacency:
    """Normalised signed adjacency in both orientations, as CSR for ``torch.sparse.mm``.

    ``user_pos``/``user_neg`` are ``[U, R]`` (aggregate responses into users),
    ``resp_pos``/``resp_neg`` their transposes ``[R, U]``.
    """

    user_pos: torch.Tensor
    user_neg: torch.Tensor
    resp_pos: torch.Tensor
    resp_neg: torch.Tensor

    def to(self, device: torch.device | str) -> SignedAdjacency:
        return SignedAdjacency(*(t.to(device) for t in self.astuple()))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.user_pos, self.user_neg, self.resp_pos, self.resp_neg)


def normalized_csr(edge_index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``D_row^{-1/2} A D_col^{-1/2}`` of the (summed) edge list, as a CSR tensor."""
    n_rows, n_cols = shape
    if edge_index.numel() == 0:
        return coo_to_csr(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0), shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(
            edge_index, torch.ones(edge_index.shape[1]), size=shape, check_invariants=False
        ).coalesce()
    row, col = coo.indices()
    val = coo.values()
    deg_row = torch.zeros(n_rows).index_add_(0, row, val)
    deg_col = torch.zeros(n_cols).index_add_(0, col, val)
    norm = val * deg_row[row].rsqrt() * deg_col[col].rsqrt()
    return coo_to_csr(torch.stack([row, col]), norm, shape)


@dataclass
class BipartiteGraph:
    """Index maps plus signed edge lists (``[2, E]`` rows = user index, response index)."""

    user_ids: list[str]  # node index -> user_id
    response_ids: np.ndarray  # node index -> response_id (int64)
    pos_edge_index: torch.Tensor
    neg_edge_index: torch.Tensor

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_responses(self) -> int:
        return len(self.response_ids)

    def user_index(self, user_ids: pd.Series | list[str]) -> np.ndarray:
        """Node indices of ``user_ids`` (-1 where the user is not in the graph)."""
        lookup = pd.Index(self.user_ids)
        return lookup.get_indexer(pd.Series(user_ids, dtype=str))

    def response_index(self, response_ids: pd.Series | np.ndarray) -> np.ndarray:
        """Node indices of ``response_ids`` (-1 where the response has no node)."""
        query = np.asarray(response_ids, dtype=np.int64)
        order, ids = self._sorted_responses
        if len(ids) == 0:
            return np.full(query.shape, -1, dtype=np.int64)
        pos = np.searchsorted(ids, query).clip(max=len(ids) - 1)
        return np.where(ids[pos] == query, order[pos], -1)

    @functools.cached_property
    def _sorted_responses(self) -> tuple[np.ndarray, np.ndarray]:
        # built once (a graph's nodes never change after build_graph / GNNArtifacts.load);
        # a binary search costs microseconds for the few ids a served request looks up
        order = np.argsort(self.response_ids, kind="stable")
        return order, np.asarray(self.response_ids, dtype=np.int64)[order]

    def adjacency(self) -> SignedAdjacency:
        shape = (self.n_users, self.n_responses)
        flip = torch.tensor([1, 0])
        return SignedAdjacency(
            user_pos=normalized_csr(self.pos_edge_index, shape),
            user_neg=normalized_csr(self.neg_edge_index, shape),
            resp_pos=normalized_csr(self.pos_edge_index[flip], shape[::-1]),
            resp_neg=normalized_csr(self.neg_edge_index[flip], shape[::-1]),
        )

    def to_hetero_data(self):
        """The graph as a PyG ``HeteroData`` (edge types ``prefers`` / ``rejects`` + reverses)."""
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["user"].num_nodes = self.n_users
        data["response"].num_nodes = self.n_responses
        data["response"].response_id = torch.from_numpy(self.response_ids)
        data["user", "prefers", "response"].edge_index = self.pos_edge_index
        data["user", "rejects", "response"].edge_index = self.neg_edge_index
        data["response", "rev_prefers", "user"].edge_index = self.pos_edge_index.flip(0)
        data["response", "rev_rejects", "user"].edge_index = self.neg_edge_index.flip(0)
        return data


def check_annotations(annotations: pd.DataFrame, where: str = "annotations") -> None:
    missing = [c for c in REQUIRED_ANNOTATION_COLUMNS if c not in annotations.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; have {list(annotations.columns)}")


def build_graph(annotations: pd.DataFrame, users: pd.DataFrame | None = None) -> BipartiteGraph:
    """Graph of the ``survey`` annotations of seen users.

    ``users`` (``user_id, seen``) lists the seen users; every one becomes a node, in
    table order. Without it, the users with a survey or val label are the nodes.
    Annotations of unseen users are never edges (their survey labels are adaptation input).
    """
    check_annotations(annotations)
    if users is not None:
        seen = users.loc[users["seen"].astype(bool), "user_id"].astype(str).tolist()
    else:
        mask = annotations["split"].isin(["survey", "val"])
        seen = pd.unique(annotations.loc[mask, "user_id"].astype(str)).tolist()
    if not seen:
        raise ValueError("build_graph: no seen users (users.seen is False everywhere)")
    user_lookup = pd.Index(seen)
    survey = annotations[annotations["split"] == "survey"]
    survey = survey[user_lookup.get_indexer(survey["user_id"].astype(str)) >= 0]
    if survey.empty:
        raise ValueError("build_graph: no 'survey' annotations of seen users; nothing to train on")
    response_ids = np.unique(
        np.concatenate([survey["chosen"].to_numpy(), survey["rejected"].to_numpy()])
    ).astype(np.int64)
    resp_lookup = pd.Index(response_ids)
    u = torch.from_numpy(user_lookup.get_indexer(survey["user_id"].astype(str)).astype(np.int64))
    a = torch.from_numpy(resp_lookup.get_indexer(survey["chosen"].to_numpy()).astype(np.int64))
    b = torch.from_numpy(resp_lookup.get_indexer(survey["rejected"].to_numpy()).astype(np.int64))
    return BipartiteGraph(
        user_ids=seen,
        response_ids=response_ids,
        pos_edge_index=torch.stack([u, a]),
        neg_edge_index=torch.stack([u, b]),
    )


@dataclass
class PairIndex:
    """Annotated pairs as node indices: user ``u`` prefers response ``a`` over ``b``."""

    user: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    n_skipped: int = 0  # pairs dropped because a user or response has no node

    def __len__(self) -> int:
        return int(self.user.numel())

    def select(self, idx: torch.Tensor | slice) -> PairIndex:
        """The pairs at ``idx`` (an index tensor or a slice)."""
        return PairIndex(self.user[idx], self.chosen[idx], self.rejected[idx])

    def to(self, device: torch.device | str) -> PairIndex:
        return PairIndex(
            self.user.to(device), self.chosen.to(device), self.rejected.to(device), self.n_skipped
        )


def pair_index(graph: BipartiteGraph, annotations: pd.DataFrame, split: str) -> PairIndex:
    """The ``split`` annotations of graph users whose two responses have nodes."""
    rows = annotations[annotations["split"] == split]
    u = graph.user_index(rows["user_id"].astype(str))
    a = graph.response_index(rows["chosen"].to_numpy())
    b = graph.response_index(rows["rejected"].to_numpy())
    users_known = u >= 0
    keep = users_known & (a >= 0) & (b >= 0)
    return PairIndex(
        user=torch.from_numpy(u[keep].astype(np.int64)),
        chosen=torch.from_numpy(a[keep].astype(np.int64)),
        rejected=torch.from_numpy(b[keep].astype(np.int64)),
        n_skipped=int(users_known.sum() - keep.sum()),
    )
