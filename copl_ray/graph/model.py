"""``CoPLGNN``: learnable node embeddings + ``L`` signed bipartite layers (docs/method.md §2).

Score ``s_ur = <e_u^(L), e_r^(L)>`` on the last layer (no layer mean). Loss on annotated
pairs ``(u, a ≻ b)`` (BPR; the L2 form of the official code, docs/reference-code.md)::

    L = mean_B −log σ(s_ua − s_ub) + λ Σ_B (‖e_u‖² + ‖e_a‖² + ‖e_b‖²)

with the score difference clamped to ±2000 as in the official code (keeps ``log σ``
finite). Pure torch: no Ray import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from copl_ray.graph.bipartite import PairIndex, SignedAdjacency, coo_to_csr
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
    """``bpr_loss(...).backward()`` with the loss's gradient in closed form; returns the loss.

    With ``m_p = <e_u, e_a − e_b>`` and ``c_p = ∂L/∂m_p = −σ(−m_p)/N`` (0 where the clamp
    at ±2000 holds) the gradient w.r.t. the last-layer embeddings is two sparse products::

        ∂L/∂E_user = C E_resp + 2λ n_u ⊙ E_user     ∂L/∂E_resp = Cᵀ E_user + 2λ n_r ⊙ E_resp

    where ``C [U, R]`` holds ``+c_p`` at ``(u_p, a_p)`` and ``−c_p`` at ``(u_p, b_p)`` and
    ``n_u, n_r`` count each node's occurrences in the pairs. Autograd of the gathers
    instead scatters ``[N, d]`` rows back one by one (index backward): at UF-P scale (160k
    pairs, d=512) that was ~25% of a full-graph CPU step. The margins are computed without
    grad in chunks of at most ``chunk`` pairs (bounds memory); the accumulated gradient is
    then sent through the GNN once.
    """
    n = len(pairs)
    n_users, n_resp = e_user.shape[0], e_resp.shape[0]
    with torch.no_grad():
        eu, er = e_user.detach(), e_resp.detach()
        coef = torch.empty(n, dtype=eu.dtype, device=eu.device)
        nll = torch.zeros((), dtype=eu.dtype, device=eu.device)
        for s in range(0, n, chunk):
            margin = score_margin(eu, er, pairs.select(slice(s, s + chunk)))
            inside = (margin >= -2000.0) & (margin <= 2000.0)  # clamp's gradient mask
            margin = margin.clamp(-2000.0, 2000.0)
            nll += -F.logsigmoid(margin).sum()
            coef[s : s + chunk] = torch.where(inside, -torch.sigmoid(-margin) / n, 0.0)
        n_u = torch.bincount(pairs.user, minlength=n_users).to(eu.dtype)
        n_r = torch.bincount(pairs.chosen, minlength=n_resp).to(eu.dtype)
        n_r += torch.bincount(pairs.rejected, minlength=n_resp).to(eu.dtype)
        sq = (n_u * eu.pow(2).sum(-1)).sum() + (n_r * er.pow(2).sum(-1)).sum()
        rows = torch.cat([pairs.user, pairs.user])
        cols = torch.cat([pairs.chosen, pairs.rejected])
        vals = torch.cat([coef, -coef])
        c_ur = coo_to_csr(torch.stack([rows, cols]), vals, (n_users, n_resp))
        c_ru = coo_to_csr(torch.stack([cols, rows]), vals, (n_resp, n_users))
        g_user = torch.sparse.mm(c_ur, er) + 2 * l2 * n_u[:, None] * eu
        g_resp = torch.sparse.mm(c_ru, eu) + 2 * l2 * n_r[:, None] * er
        loss = nll / max(1, n) + l2 * sq
    torch.autograd.backward([e_user, e_resp], [g_user, g_resp])
    return float(loss)


@torch.no_grad()
def pair_accuracy(e_user: torch.Tensor, e_resp: torch.Tensor, pairs: PairIndex) -> float | None:
    """Share of pairs with ``s_ua > s_ub`` (``None`` when there are no pairs)."""
    if len(pairs) == 0:
        return None
    return float((score_margin(e_user, e_resp, pairs) > 0).float().mean())


def export_user_embeddings(e_user: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The user embeddings at the scale the reward model sees (unit L2 norm if ``normalize``)."""
    return F.normalize(e_user, dim=-1) if normalize else e_user
