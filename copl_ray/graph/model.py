"""``CoPLGNN``: learnable node embeddings + ``L`` signed bipartite layers (METHOD.md §2).

Score ``s_ur = <e_u^(L), e_r^(L)>`` on the last layer (no layer mean). Loss on annotated
pairs ``(u, a ≻ b)`` (BPR; REFERENCE.md §1.3 for the L2 form)::

    L = mean_B −log σ(s_ua − s_ub) + λ Σ_B (‖e_u‖² + ‖e_a‖² + ‖e_b‖²)

with the score difference clamped to ±2000 as in the official code (keeps ``log σ``
finite). Pure torch: no Ray import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from copl_ray.graph.bipartite import PairIndex, SignedAdjacency
from copl_ray.graph.conv import Message, SignedBipartiteConv


@dataclass
class GNNShape:
    """Everything needed to rebuild the module (saved as ``gnn_config.json``)."""

    n_users: int
    n_responses: int
    dim: int = 512
    layers: int = 4
    message: Message = "paper"
    leaky_slope: float = 0.2
    edge_dropout: float = 0.1


class CoPLGNN(nn.Module):
    def __init__(self, shape: GNNShape):
        super().__init__()
        self.shape = shape
        self.user_emb = nn.Parameter(torch.empty(shape.n_users, shape.dim))
        self.resp_emb = nn.Parameter(torch.empty(shape.n_responses, shape.dim))
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.resp_emb)
        self.convs = nn.ModuleList(
            SignedBipartiteConv(shape.dim, shape.message, shape.leaky_slope, shape.edge_dropout)
            for _ in range(shape.layers)
        )

    def forward(self, adj: SignedAdjacency) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-graph propagation: last-layer ``(E_user [U, d], E_resp [R, d])``."""
        x_user, x_resp = self.user_emb, self.resp_emb
        for conv in self.convs:
            x_user, x_resp = conv(x_user, x_resp, adj)
        return x_user, x_resp


def score_margin(e_user: torch.Tensor, e_resp: torch.Tensor, pairs: PairIndex) -> torch.Tensor:
    """``s_ua − s_ub`` for every pair, computed as ``<e_u, e_a − e_b>``."""
    eu = e_user[pairs.user]
    return (eu * (e_resp[pairs.chosen] - e_resp[pairs.rejected])).sum(-1)


def bpr_terms(
    e_user: torch.Tensor, e_resp: torch.Tensor, pairs: PairIndex
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ −log σ(s_ua − s_ub), Σ ‖e_u‖² + ‖e_a‖² + ‖e_b‖²)`` over ``pairs``."""
    eu, ea, eb = e_user[pairs.user], e_resp[pairs.chosen], e_resp[pairs.rejected]
    margin = (eu * (ea - eb)).sum(-1).clamp(-2000.0, 2000.0)
    sq = eu.pow(2).sum() + ea.pow(2).sum() + eb.pow(2).sum()
    return -F.logsigmoid(margin).sum(), sq


def bpr_loss(
    e_user: torch.Tensor, e_resp: torch.Tensor, pairs: PairIndex, l2: float = 0.0
) -> torch.Tensor:
    nll, sq = bpr_terms(e_user, e_resp, pairs)
    return nll / max(1, len(pairs)) + l2 * sq


def bpr_backward(
    e_user: torch.Tensor, e_resp: torch.Tensor, pairs: PairIndex, l2: float, chunk: int
) -> float:
    """``bpr_loss(...).backward()`` over pair chunks of at most ``chunk``; returns the loss.

    The pair gathers (``[N, d]`` each) dominate memory for full-graph steps at scale, so
    the loss is back-propagated chunk by chunk into detached copies of the embeddings
    and the accumulated gradient is sent through the GNN once — the same gradient as one
    big backward, with memory bounded by ``chunk``.
    """
    n = len(pairs)
    if n <= chunk:
        loss = bpr_loss(e_user, e_resp, pairs, l2)
        loss.backward()
        return float(loss.detach())
    eu = e_user.detach().requires_grad_(True)
    er = e_resp.detach().requires_grad_(True)
    total = 0.0
    for s in range(0, n, chunk):
        part = PairIndex(
            pairs.user[s : s + chunk], pairs.chosen[s : s + chunk], pairs.rejected[s : s + chunk]
        )
        nll, sq = bpr_terms(eu, er, part)
        loss = nll / n + l2 * sq
        loss.backward()
        total += float(loss.detach())
    torch.autograd.backward([e_user, e_resp], [eu.grad, er.grad])
    return total


@torch.no_grad()
def pair_accuracy(e_user: torch.Tensor, e_resp: torch.Tensor, pairs: PairIndex) -> float | None:
    """Share of pairs with ``s_ua > s_ub`` (``None`` when there are no pairs)."""
    if len(pairs) == 0:
        return None
    return float((score_margin(e_user, e_resp, pairs) > 0).float().mean())


def export_user_embeddings(e_user: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The user embeddings at the scale the reward model sees (unit L2 norm if ``normalize``)."""
    return F.normalize(e_user, dim=-1) if normalize else e_user
