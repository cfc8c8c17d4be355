"""One signed bipartite layer of CoPL (docs/method.md §2), in aggregated form.

``message="paper"`` (default), for a user ``u`` (responses are symmetric with their own
``Ŵ1..Ŵ4, Ŵ_self``)::

    z⁺_u = Σ_{r∈N⁺_u} α_ur e_r          z⁻_u = Σ_{r∈N⁻_u} β_ur e_r       (sparse: Â± E_r)
    m_u  = W_self e_u + W1 z⁺_u + W2 (e_u ⊙ z⁺_u) + W3 z⁻_u + W4 (e_u ⊙ z⁻_u)
    e_u' = LeakyReLU(m_u)

which equals the per-edge sum ``Σ α (W1 e_r + W2 (e_r ⊙ e_u))`` because ``W2`` is linear
and ``e_u`` is constant inside the sum: one sparse aggregation per sign, then dense
per-node products — never a ``d×d`` product per edge. No biases (the formula has none).

``message="reference"`` reproduces the official code (docs/reference-code.md B4): the first
term is unweighted, negative messages are subtracted, ``W_pos, W_neg, W_self`` (with
bias) are shared by both sides::

    m_u = z⁺_u + W_pos(z⁺_u ⊙ e_u) − [z⁻_u + W_neg(z⁻_u ⊙ e_u)] + W_self e_u

Edge dropout drops values of ``Â`` (rescaled by ``1/(1−p)``), independently per sign and
per side, in every layer, only in training mode.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from copl_ray.graph.bipartite import SignedAdjacency, csr_with_values

Message = Literal["paper", "reference"]


def drop_edges(adj: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """CSR ``adj`` with each stored value zeroed with probability ``p`` (rescaled)."""
    if not training or p <= 0.0:
        return adj
    return csr_with_values(adj, F.dropout(adj.values(), p=p, training=True))


def aggregate(adj: torch.Tensor, x_src: torch.Tensor) -> torch.Tensor:
    """``Â x_src``: normalised neighbour sum, one CSR sparse–dense product."""
    return torch.sparse.mm(adj, x_src)


def _linear(dim: int, bias: bool) -> nn.Linear:
    lin = nn.Linear(dim, dim, bias=bias)
    nn.init.xavier_uniform_(lin.weight)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


def paper_message(
    x: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, w: nn.ModuleDict
) -> torch.Tensor:
    """``W_self x + W1 z⁺ + W2 (x ⊙ z⁺) + W3 z⁻ + W4 (x ⊙ z⁻)`` (pre-activation)."""
    return w["self"](x) + w["w1"](z_pos) + w["w2"](x * z_pos) + w["w3"](z_neg) + w["w4"](x * z_neg)


def reference_message(
    x: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor, w: nn.ModuleDict
) -> torch.Tensor:
    """``z⁺ + W_pos(z⁺ ⊙ x) − [z⁻ + W_neg(z⁻ ⊙ x)] + W_self x`` (official code)."""
    return z_pos + w["pos"](z_pos * x) - (z_neg + w["neg"](z_neg * x)) + w["self"](x)


def signed_bipartite_conv(
    x_user: torch.Tensor,
    x_resp: torch.Tensor,
    adj: SignedAdjacency,
    user_weights: nn.ModuleDict,
    resp_weights: nn.ModuleDict,
    message: Message = "paper",
    negative_slope: float = 0.2,
    edge_dropout: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional layer: returns the updated ``(x_user, x_resp)``; both read the old values."""
    fn = paper_message if message == "paper" else reference_message
    zu_pos = aggregate(drop_edges(adj.user_pos, edge_dropout, training), x_resp)
    zu_neg = aggregate(drop_edges(adj.user_neg, edge_dropout, training), x_resp)
    zr_pos = aggregate(drop_edges(adj.resp_pos, edge_dropout, training), x_user)
    zr_neg = aggregate(drop_edges(adj.resp_neg, edge_dropout, training), x_user)
    new_user = F.leaky_relu(fn(x_user, zu_pos, zu_neg, user_weights), negative_slope)
    new_resp = F.leaky_relu(fn(x_resp, zr_pos, zr_neg, resp_weights), negative_slope)
    return new_user, new_resp


class SignedBipartiteConv(nn.Module):
    """One layer; ``paper``: 10 ``d×d`` matrices (5 per side), ``reference``: 3 shared."""

    def __init__(
        self,
        dim: int,
        message: Message = "paper",
        negative_slope: float = 0.2,
        edge_dropout: float = 0.0,
    ):
        super().__init__()
        if message not in ("paper", "reference"):
            raise ValueError(f"gnn.message: expected 'paper' or 'reference', got {message!r}")
        self.dim, self.message = dim, message
        self.negative_slope, self.edge_dropout = negative_slope, edge_dropout
        if message == "paper":
            names = ("self", "w1", "w2", "w3", "w4")
            self.user = nn.ModuleDict({n: _linear(dim, bias=False) for n in names})
            self.resp = nn.ModuleDict({n: _linear(dim, bias=False) for n in names})
        else:
            # one set for both sides: the official code's sharing (B4)
            self.shared = nn.ModuleDict(
                {n: _linear(dim, bias=True) for n in ("self", "pos", "neg")}
            )

    def forward(
        self, x_user: torch.Tensor, x_resp: torch.Tensor, adj: SignedAdjacency
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return signed_bipartite_conv(
            x_user,
            x_resp,
            adj,
            self.user if self.message == "paper" else self.shared,
            self.resp if self.message == "paper" else self.shared,
            message=self.message,
            negative_slope=self.negative_slope,
            edge_dropout=self.edge_dropout,
            training=self.training,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, message={self.message}, edge_dropout={self.edge_dropout}"
