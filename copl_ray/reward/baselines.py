"""The personalised baselines' user models, on the backbone every variant shares.

Each baseline keeps one free row ``w_u`` per seen user (``PersonalRewardModel.user_table``)
and reads the pooled final hidden state ``h(x)`` of the backbone (LoRA of rank
``reward.baseline_rank`` unless the method freezes it). ``K = reward.num_prototypes``.

- **I2E** (the CoPL paper's "individual to embedding" baseline): ``w_u ∈ R^d`` projected
  to one extra input token ``t_u = W w_u`` prepended to the text; one shared LoRA;
  ``r_u(x) = s·h(t_u, x)``.
- **I2E-proxy** (same paper): ``t_u = W (softmax(w_u)ᵀ P)``, a user is a mixture of
  ``P = K`` learnable proxy embeddings.
- **PAL** (Chen et al., "PAL: Sample-efficient personalized reward modeling for
  pluralistic alignment", ICLR 2025; PAL-A, ideal points): items map to ``f(x) = A h(x)``,
  a user's ideal point is a mixture of ``K`` prototypes ``a_u = softmax(w_u)ᵀ Q``, and
  ``r_u(x) = −‖f(x) − a_u‖²``.
- **PReF** (Shenfeld et al., "Language model personalization via reward factorization",
  2025): ``K`` base rewards ``φ(x) = B h(x)`` and ``r_u(x) = λ_uᵀ φ(x)`` with ``λ_u = w_u``
  free; ``λ`` starts from the SVD of the seen users' user × pair label matrix
  (:func:`svd_user_factors`), then everything trains jointly.
- **LoRe** (Bose et al., "LoRe: Personalizing LLMs via low-rank reward modeling",
  COLM 2025): FROZEN backbone features (the method's premise: no backbone update), a
  low-rank basis ``V ∈ R^{H×K}`` and ``r_u(x) = softmax(w_u)ᵀ Vᵀ h(x)``.
- **VPL** (Poddar et al., "Personalizing reinforcement learning from human feedback with
  variational preference learning", NeurIPS 2024): FROZEN backbone features (VPL reads
  precomputed LLM embeddings); no user row but the user's labelled pairs ``(c_i, r_i)``,
  ``i ≤ C = reward.vpl_context``: ``e = mean_i MLP([h(c_i); h(r_i)])``, ``(μ, log σ²) =
  Linear(e)``, ``z = μ + σ·ε`` in training (``μ`` at inference) and ``r(x, z) =
  MLP([h(x); z])``; loss = BTL NLL + ``β_t·KL(N(μ, σ²) ‖ N(0, I))`` with ``β_t`` ramped
  from 0 to ``reward.vpl_beta`` over the first ``reward.vpl_anneal`` of the steps.
  VPL's latent is known to collapse (the decoder ignores ``z``): :func:`active_units`
  counts the latent units the seen users actually use.

Unseen users (the five with rows): ``w_u`` is fitted on the user's few labels with every
other weight frozen (copl_ray/reward/fit_users.py), as PAL's, PReF's and LoRe's code
onboard new users; the CoPL paper gives I2E no other way to represent a user it never
saw. VPL encodes the unseen user's labelled pairs, no optimisation.
The BTL loss, the Ray Train + DeepSpeed loop and the safetensors format are the ones of
every variant (copl_ray/reward/train.py, model.py).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from copl_ray.variants import I2E, I2E_PROXY, LORE, NO_GNN, NO_MOLE, PAL, PREF, VPL

# variants whose user enters as an extra input token (the full forward runs per user)
TOKEN_ARCHITECTURES = (NO_MOLE, I2E, I2E_PROXY)
# variants whose method keeps the backbone frozen (their LoRA never trains: B = 0)
FROZEN_ARCHITECTURES = (LORE, VPL)
# variants scoring with a user head on h(x) instead of the one ``score`` vector
HEAD_ARCHITECTURES = (PAL, PREF, LORE, VPL)


def user_row_dim(architecture: str, user_dim: int, k: int) -> int:
    """Width of a user's free row: an embedding (no_gnn, I2E) or ``K`` mixing weights."""
    return user_dim if architecture in (NO_GNN, I2E) else k


def init_user_rows(table: nn.Embedding, architecture: str) -> None:
    """Embeddings ~ N(0, 1/d); mixing logits near 0 (every user starts near the mean
    mixture, broken by small noise so users can drift apart)."""
    std = 1.0 / math.sqrt(table.embedding_dim) if architecture in (NO_GNN, I2E) else 0.1
    nn.init.normal_(table.weight, std=std)


class ProxyMix(nn.Module):
    """I2E-proxy: a user's embedding ``softmax(w_u)ᵀ P`` over ``P`` learnable proxies."""

    def __init__(self, n_proxies: int, user_dim: int, dtype, device) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.empty(n_proxies, user_dim, dtype=dtype, device=device))
        nn.init.normal_(self.proxies, std=1.0 / math.sqrt(user_dim))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.softmax(rows.float(), -1).to(self.proxies.dtype) @ self.proxies


class UserHead(nn.Module):
    """``r_u(x)`` of PAL / PReF / LoRe from the pooled features ``h [N, H]`` and the users'
    rows ``w [N, K]`` (one per input row); the equations are in the module docstring."""

    def __init__(self, architecture: str, hidden: int, k: int, dim: int, dtype, device) -> None:
        super().__init__()
        self.architecture = architecture
        width = dim if architecture == PAL else k
        self.proj = nn.Linear(hidden, width, bias=False, dtype=dtype, device=device)
        nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(hidden))
        self.prototypes = None
        if architecture == PAL:
            self.prototypes = nn.Parameter(torch.empty(k, dim, dtype=dtype, device=device))
            nn.init.normal_(self.prototypes, std=1.0 / math.sqrt(dim))

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        f = self.proj(h.to(self.proj.weight.dtype)).float()
        w = w.float()
        if self.architecture == PAL:
            ideal = torch.softmax(w, -1) @ self.prototypes.float()
            return -((f - ideal) ** 2).sum(-1)
        if self.architecture == PREF:
            return (w * f).sum(-1)
        return (torch.softmax(w, -1) * f).sum(-1)  # LoRe


def svd_user_factors(
    annotations: pd.DataFrame, user_ids: list[str], k: int, seed: int
) -> np.ndarray:
    """PReF's start: the top-``k`` left singular vectors (scaled by √σ) of the user × pair
    matrix ``M[u, p] = ±1`` (+1 when the user chose the pair's lower response id, 0 when
    unlabelled), one row per ``user_ids`` entry; users with no label get 0. Fewer than
    ``k`` singular directions (tiny data) are padded with small noise."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.01, size=(len(user_ids), k)).astype(np.float32)
    row = pd.Index(user_ids).get_indexer(annotations["user_id"].astype(str))
    ok = row >= 0
    ann = annotations[ok]
    if not len(ann):
        return out
    pairs, col = np.unique(ann["pair_id"].to_numpy(), return_inverse=True)
    sign = np.where(ann["chosen"].astype(str) < ann["rejected"].astype(str), 1.0, -1.0)
    m = np.zeros((len(user_ids), len(pairs)), dtype=np.float32)
    m[row[ok], col] = sign
    u, s, _ = np.linalg.svd(m, full_matrices=False)
    n = min(k, len(s))
    out[:, :n] = u[:, :n] * np.sqrt(s[:n])[None]
    return out


class VPLHead(nn.Module):
    """VPL's encoder of a user's labelled pairs and its latent-conditioned reward (module
    docstring). A context is ``[B, C, 2H + 1]``: per pair ``[h(chosen); h(rejected); 1]``,
    all zeros where the user has fewer than ``C`` pairs."""

    def __init__(self, hidden: int, latent: int, dtype, device) -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.pair = nn.Sequential(
            nn.Linear(2 * hidden, latent, **kw), nn.ReLU(), nn.Linear(latent, latent, **kw)
        )
        self.stats = nn.Linear(latent, 2 * latent, **kw)
        self.decoder = nn.Sequential(
            # no bias on the output: a constant cancels in every BTL margin (never learns)
            nn.Linear(hidden + latent, latent, **kw),
            nn.ReLU(),
            nn.Linear(latent, 1, bias=False, **kw),
        )
        self.kl = torch.zeros(())  # KL of the last encoding (the loss adds β_t·kl)

    def posterior(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of ``z`` given each user's context ``[B, C, 2H + 1]``."""
        x, valid = context[..., :-1], context[..., -1:].float()
        e = self.pair(x.to(self.stats.weight.dtype)).float()
        e = (e * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        mu, logvar = self.stats(e.to(self.stats.weight.dtype)).float().chunk(2, -1)
        return mu, logvar.clamp(-10.0, 10.0)

    def encode(self, context: torch.Tensor) -> torch.Tensor:
        """``z`` per user: sampled while training (and its KL kept), ``μ`` in eval mode."""
        mu, logvar = self.posterior(context)
        self.kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        if not self.training:
            return mu
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = torch.cat([h.float(), z.float()], -1).to(self.stats.weight.dtype)
        return self.decoder(x).squeeze(-1).float()


def context_tensor(
    features: torch.Tensor,
    chosen_rows: np.ndarray,
    rejected_rows: np.ndarray,
    label_user: np.ndarray,
    n_users: int,
    c: int,
) -> torch.Tensor:
    """VPL contexts ``[n_users, C, 2H + 1]`` from per-response features ``[R, H]`` and
    labels (rows into ``features``, the user position of each label): each user's first
    ``C`` labels in the given order; missing pairs are zeros (valid flag 0)."""
    h = features.shape[1]
    out = torch.zeros(n_users, c, 2 * h + 1, dtype=features.dtype, device=features.device)
    slot = pd.Series(label_user).groupby(label_user).cumcount().to_numpy()
    keep = slot < c
    u, k = torch.as_tensor(label_user[keep]), torch.as_tensor(slot[keep])
    out[u, k, :h] = features[torch.as_tensor(chosen_rows[keep])]
    out[u, k, h : 2 * h] = features[torch.as_tensor(rejected_rows[keep])]
    out[u, k, -1] = 1.0
    return out


def active_units(mu: np.ndarray, threshold: float = 0.01) -> dict[str, float | int]:
    """Share of latent units whose posterior mean varies across users,
    ``Var_u(μ_{u,d}) > threshold`` (the active-units measure of Burda et al., 2016): 0 is
    a collapsed latent, the reward then ignores who the user is."""
    var = mu.var(0) if len(mu) > 1 else np.zeros(mu.shape[1])
    n = int((var > threshold).sum())
    return {"share": n / mu.shape[1], "active": n, "units": int(mu.shape[1]), "n_users": len(mu)}
