"""Spectral initialisation of the GNN's embedding tables (``gnn.init=spectral``).

The paper starts ``e^(0)`` at random (docs/method.md §2; the official code: Xavier) and trains
it. From there a full-graph step first fits what all users share (every user alike: held-out
0.60 on the planted UF-P-4 graph) and spends ~50 steps on that plateau before the groups
separate. The groups are already in the data's low-rank structure, so this switch starts
the tables there. With the survey edges as a signed matrix (duplicates add up)::

    M[u, r] = #(u chose r) − #(u rejected r)              [U, R]
    Â = D_u^{-1/2} M D_r^{-1/2}                           D = edge counts, both signs
    Â ≈ Σ_{j<k} s_j p_j q_jᵀ                              top-k singular triplets
    w_j = (s_j − s_k) / (s_0 − s_k)                       shrunk by the first one not kept
    e_u^(0)[j] = c·√U·√w_j·p_j[u]            e_r^(0)[j] = c·√R·√w_j·q_j[r]        j < k

so coordinate ``j`` has RMS ``c·√w_j`` over the nodes (``c = gnn.spectral_scale``) and,
on those ``k`` coordinates, ``<e_u, e_r> = c²√(UR) · Σ_j w_j p_j[u] q_j[r]``: the rank-k
reconstruction of the signed labels with its singular values soft-thresholded at the noise
level ``s_k``. The shrinkage makes ``k`` forgiving: on the planted 4-group graph the
spectrum is 0.649, 0.647, 0.644, 0.606, then a flat bulk from 0.595, so with ``k = 8`` the
four bulk directions get weights under 0.05 instead of diluting the groups. The other
``d − k`` coordinates keep the random init (node identity; the model is unchanged and
every entry still trains). Signs are fixed (largest-magnitude entry of ``q_j`` positive)
so a run is reproducible.

Measured on the planted UF-P-4 graph (10k users, 49.8k responses, 160k survey pairs): the
rank-4 reconstruction alone ranks 0.775 of held-out pairs right (random tables: 0.5), the
shrunk rank-8 one 0.778 (unshrunk: 0.715, the bulk dilutes it);
at d=512, L=4 the full-graph schedule from it reaches 0.818 at step 20 and 0.888 at step 40
(from random tables: 0.731 at step 100) — benchmarks/RESULTS.md "GNN time-to-accuracy".

Pure numpy/scipy/torch: the decomposition runs on the CPU (ARPACK; a dense SVD for tiny
graphs) whatever the training device: 0.6 s at UF-P scale, 11 s at 10× its users (k=8).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from copl_ray.graph.bipartite import BipartiteGraph

log = logging.getLogger("copl_ray.gnn")

DENSE_SVD_MAX = 64  # min(U, R) up to which a dense SVD is cheaper than ARPACK


@dataclass
class SpectralFactors:
    """``k`` singular triplets of ``Â``, largest first: ``user [U, k]``, ``resp [R, k]``."""

    user: np.ndarray
    resp: np.ndarray
    singular_values: np.ndarray
    floor: float = 0.0  # the (k+1)-th singular value: the noise level the k are shrunk by

    @property
    def k(self) -> int:
        return len(self.singular_values)


def normalized_signed_matrix(graph: BipartiteGraph) -> sp.csr_matrix:
    """``Â = D_u^{-1/2} M D_r^{-1/2}`` of the survey edges (scipy CSR, float64)."""
    shape = (graph.n_users, graph.n_responses)
    pos, neg = graph.pos_edge_index.numpy(), graph.neg_edge_index.numpy()
    rows = np.concatenate([pos[0], neg[0]])
    cols = np.concatenate([pos[1], neg[1]])
    sign = np.concatenate([np.ones(pos.shape[1]), -np.ones(neg.shape[1])])
    signed = sp.csr_matrix((sign, (rows, cols)), shape=shape)  # duplicates add up
    deg_u = np.bincount(rows, minlength=shape[0]).astype(np.float64)
    deg_r = np.bincount(cols, minlength=shape[1]).astype(np.float64)
    inv_u = np.where(deg_u > 0, 1.0 / np.sqrt(np.maximum(deg_u, 1.0)), 0.0)
    inv_r = np.where(deg_r > 0, 1.0 / np.sqrt(np.maximum(deg_r, 1.0)), 0.0)
    return sp.diags(inv_u) @ signed @ sp.diags(inv_r)


def signed_spectral_factors(graph: BipartiteGraph, k: int, seed: int = 0) -> SpectralFactors:
    """Top-``k`` singular triplets of :func:`normalized_signed_matrix` (``k`` capped at
    ``min(U, R)``) and ``floor``, the next singular value (0 if there is none). ARPACK
    (``svds``) unless the graph is tiny or ``k + 1 ≥ min(U, R) − 1`` (ARPACK's limit),
    where a dense SVD is exact."""
    if k < 1:
        raise ValueError(f"gnn.spectral_k: expected >= 1, got {k}")
    mat = normalized_signed_matrix(graph)
    small = min(mat.shape)
    if small <= DENSE_SVD_MAX or k + 1 >= small - 1:
        p, s, qt = np.linalg.svd(mat.toarray(), full_matrices=False)
        p, s, q = p[:, : k + 1], s[: k + 1], qt[: k + 1].T
    else:
        # deterministic start vector (ARPACK's default is random); tol 1e-4 and a wider
        # Krylov space: the bulk below the groups is flat, and converging it to machine
        # precision cost 28 s at 10x UF-P's users for the same top vectors (cosine 1.0
        # to 5 digits) that these settings give in 11 s (0.6 s at UF-P scale)
        v0 = np.random.default_rng(seed).standard_normal(small)
        ncv = min(small - 1, max(2 * (k + 1) + 1, 40))
        p, s, qt = svds(mat, k=k + 1, v0=v0, tol=1e-4, ncv=ncv)
        order = np.argsort(-s)
        p, s, q = p[:, order], s[order], qt[order].T
    k_used = min(k, len(s))
    floor = float(s[k_used]) if len(s) > k_used else 0.0
    if k_used < k:
        log.info("gnn.spectral_k=%d capped at %d by the graph's size %s", k, k_used, mat.shape)
    p, s, q = p[:, :k_used], s[:k_used], q[:, :k_used]
    flip = np.sign(q[np.abs(q).argmax(0), np.arange(q.shape[1])])
    flip[flip == 0] = 1.0
    return SpectralFactors(user=p * flip, resp=q * flip, singular_values=s, floor=floor)


def shrunk_weights(f: SpectralFactors) -> np.ndarray:
    """``√((s_j − s_k)/(s_0 − s_k))``: singular values soft-thresholded at the first one not
    kept, as per-coordinate weights (the score's weight is their square)."""
    gap = f.singular_values[0] - f.floor if f.k else 0.0
    if gap <= 0:
        log.warning("gnn spectral init: no spectral gap (flat spectrum): the k coordinates are 0")
        return np.zeros(f.k)
    return np.sqrt(np.clip((f.singular_values - f.floor) / gap, 0.0, None))


@torch.no_grad()
def spectral_init_(
    user_emb: torch.Tensor,
    resp_emb: torch.Tensor,
    graph: BipartiteGraph,
    k: int,
    scale: float,
    seed: int = 0,
) -> SpectralFactors:
    """Overwrite the first ``k`` columns of both tables in place (module docstring)."""
    if k > user_emb.shape[1]:
        raise ValueError(f"gnn.spectral_k={k} exceeds gnn.dim={user_emb.shape[1]}")
    f = signed_spectral_factors(graph, k, seed)
    weight = shrunk_weights(f)
    n_users, n_resp = user_emb.shape[0], resp_emb.shape[0]
    user = scale * np.sqrt(n_users) * f.user * weight
    resp = scale * np.sqrt(n_resp) * f.resp * weight
    user_emb[:, : f.k] = torch.from_numpy(user).to(user_emb)
    resp_emb[:, : f.k] = torch.from_numpy(resp).to(resp_emb)
    return f
