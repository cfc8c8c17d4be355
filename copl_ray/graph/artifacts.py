"""What the GNN stage leaves in ``run.gnn`` and how serving/adaptation reads it back.

Files (all safetensors/parquet/JSON, never pickle)::

    model.safetensors                 best GNN weights (``CoPLGNN`` state dict)
    gnn_config.json                   GNNShape + export switches
    graph.safetensors                 pos_edge_index, neg_edge_index  [2, E] (user, response) node ids
    graph.json                        user_ids (node order), n_users, n_responses, normalized
    response_embeddings.safetensors   response_ids [R] int64, embeddings [R, d] float32
    <users.FILE_NAME>                 every user's UserEmbedding record (copl_ray.graph.users)

``GNNArtifacts`` is the graph (:class:`~copl_ray.graph.bipartite.BipartiteGraph`: node
ids and signed edge lists) plus the **trained** (seen) users in graph node order at the
export scale (L2-normalised when ``normalized``) and the raw last-layer response embeddings.
The seen users are read from the user-embedding file through
:class:`~copl_ray.graph.users.UserEmbeddings` (its one reader).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from copl_ray.graph.bipartite import BipartiteGraph, coo_to_csr, csr_with_values
from copl_ray.graph.users import UserEmbeddings, path_in


class GNNArtifacts(BipartiteGraph):
    """The trained graph: a :class:`BipartiteGraph` (ids, signed edges, index lookups) plus
    the seen users' embeddings ``[U, d]`` in graph node order at the export scale and the
    raw last-layer response embeddings ``[R, d]``.

    Treated as immutable once built: adaptation reads the derived structures below
    (0/1 adjacency as torch CSR for the batched path, as numpy CSR arrays for the per-user
    fast path, the mean seen user), each built on first use and then kept, so a server
    that adapts one user per request never rebuilds them.
    """

    def __init__(
        self,
        user_ids: list[str],
        user_embeddings: torch.Tensor,
        response_ids: np.ndarray,
        response_embeddings: torch.Tensor,
        pos_edge_index: torch.Tensor,
        neg_edge_index: torch.Tensor,
        normalized: bool,
    ):
        super().__init__(
            list(user_ids), np.asarray(response_ids, np.int64), pos_edge_index, neg_edge_index
        )
        self.user_embeddings = user_embeddings.float().contiguous()
        self.response_embeddings = response_embeddings.float().contiguous()
        self.normalized = bool(normalized)
        self._adjacency: dict[tuple[str, bool], torch.Tensor] = {}
        self._neighbours: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def dim(self) -> int:
        return int(self.user_embeddings.shape[1])

    def binary_adjacency(self, sign: str, transpose: bool = False) -> torch.Tensor:
        """``[U, R]`` (``[R, U]`` if ``transpose``) 0/1 CSR of the ``"pos"``/``"neg"`` edges
        (duplicate edges count once)."""
        key = (sign, transpose)
        if key not in self._adjacency:
            edges = self.pos_edge_index if sign == "pos" else self.neg_edge_index
            shape = (self.n_users, self.n_responses)
            if transpose:
                edges, shape = edges.flip(0), shape[::-1]
            csr = coo_to_csr(edges, torch.ones(edges.shape[1]), shape)
            self._adjacency[key] = csr_with_values(csr, torch.ones_like(csr.values()))
        return self._adjacency[key]

    def neighbour_lists(self, sign: str, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr, indices)`` of :meth:`binary_adjacency` as numpy arrays: the responses
        of user ``u`` with a ``sign`` edge are ``indices[indptr[u]:indptr[u + 1]]`` (with
        ``transpose``: the users of response ``r``), each once, sorted."""
        key = (sign, transpose)
        if key not in self._neighbours:
            csr = self.binary_adjacency(sign, transpose)
            self._neighbours[key] = (
                csr.crow_indices().numpy().astype(np.int64),
                csr.col_indices().numpy().astype(np.int64),
            )
        return self._neighbours[key]

    @functools.cached_property
    def mean_user_embedding(self) -> torch.Tensor:
        """The mean seen user (at export scale): the last-resort fallback embedding."""
        mean = self.user_embeddings.mean(0)
        return torch.nn.functional.normalize(mean, dim=0) if self.normalized else mean

    def mean_user(self) -> torch.Tensor:
        return self.mean_user_embedding.clone()

    # ------------------------------------------------------------------ io
    def save(self, gnn_dir: str | Path) -> None:
        """Graph, response embeddings and graph.json (user embeddings:
        :meth:`~copl_ray.graph.users.UserEmbeddings.write`)."""
        d = Path(gnn_dir)
        d.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "pos_edge_index": self.pos_edge_index.contiguous(),
                "neg_edge_index": self.neg_edge_index.contiguous(),
            },
            str(d / "graph.safetensors"),
        )
        save_file(
            {
                "response_ids": torch.from_numpy(self.response_ids.astype(np.int64)),
                "embeddings": self.response_embeddings.float().contiguous(),
            },
            str(d / "response_embeddings.safetensors"),
        )
        (d / "graph.json").write_text(
            json.dumps(
                {
                    "user_ids": self.user_ids,
                    "n_users": self.n_users,
                    "n_responses": self.n_responses,
                    "normalized": self.normalized,
                }
            )
        )

    @classmethod
    def load(cls, gnn_dir: str | Path) -> GNNArtifacts:
        """The graph of ``gnn_dir`` and its seen users' trained embeddings in node order."""
        d = Path(gnn_dir)
        for path in (
            d / "graph.json",
            d / "graph.safetensors",
            d / "response_embeddings.safetensors",
            path_in(d),
        ):
            if not path.exists():
                raise FileNotFoundError(f"GNN artifacts: {path} is missing (run the gnn stage)")
        meta = json.loads((d / "graph.json").read_text())
        graph = load_file(str(d / "graph.safetensors"))
        resp = load_file(str(d / "response_embeddings.safetensors"))
        trained = UserEmbeddings.read(d).trained()
        emb = trained.matrix_for(meta["user_ids"], "graph (trained)")
        return cls(
            user_ids=list(meta["user_ids"]),
            user_embeddings=torch.from_numpy(emb),
            response_ids=resp["response_ids"].numpy(),
            response_embeddings=resp["embeddings"],
            pos_edge_index=graph["pos_edge_index"],
            neg_edge_index=graph["neg_edge_index"],
            normalized=bool(meta["normalized"]),
        )
