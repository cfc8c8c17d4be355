"""Active onboarding: the survey pairs to ask a new user next (docs/method.md §8).

**The posterior CoPL already has.** Adaptation (:mod:`copl_ray.graph.adapt`) gives a
new user who answered ``D = {(a ≻ b)}`` the embedding ``e = Σ_v w_v e_v`` with::

    w_v ∝ exp(γ_v / κ),     γ_v = Σ_{(a≻b)∈D} log σ(s_v(a, b)),   s_v(a, b) = <e_v, e_a − e_b>

Read ``w`` as a tempered posterior over *which seen user this new user is like*: each
answer multiplies ``w_v`` by ``σ(±s_v)^{1/κ}``. Before any answer it is uniform over
every seen user. The selectors rank candidate pairs ``c = (a, b)`` (pairs of responses
that are graph nodes, so they have embeddings):

``copl`` — **expected change of the adapted embedding**::

    p_c  = Σ_v w_v σ(s_vc)                               chance the user picks a
    w⁺_v ∝ w_v σ(s_vc)^{1/κ},   w⁻_v ∝ w_v σ(−s_vc)^{1/κ}   the posterior after each answer
    score_c = p_c ‖ē(w⁺) − ē(w)‖² + (1 − p_c) ‖ē(w⁻) − ē(w)‖²,   ē(w) = Σ_v w_v e_v

(``ē`` at the export scale, what the reward model reads). A pair every likely user
agrees on moves nothing; one that splits them into camps with different embeddings moves
the most — the answer that changes what the reward model is told about the user.

``pref`` — **PReF's D-optimal logistic rule** in the GNN's space: ``v_c = e_a − e_b``,
``λ̂`` the user's current adapted embedding (the mean seen user before any answer)::

    Σ = ρ I + Σ_{answered} σ′(λ̂ᵀv) v vᵀ,       score_c = σ′(λ̂ᵀv_c)² · v_cᵀ Σ⁻¹ v_c

``random`` — uniform over the candidates not yet asked: the control.

**Support and cost.** ``w`` is kept over the ``onboarding.max_users`` seen users of
largest ``γ`` (every seen user when there are fewer), not cut to the hop neighbours
adaptation averages over: the next answer adds neighbours (whoever chose what the user
chooses), so which users it can reweight is not known before it is given. The users cut carry a share
``≤ (U − M)·e^{(γ_M − γ_1)/κ}`` of the mass, negligible once a few answers are in
(κ = 0.07 makes each answer a factor up to ``2^{14}``). Before any answer the posterior
is the uniform prior, represented by a fixed uniform sample of ``max_users`` seen users;
it is the same for every new user, so that *opening* ranking of the whole pool is
computed once and kept. After answers, only the ``onboarding.shortlist`` candidates of
highest opening score are scored (all when there are fewer): a pair that no group of
users disagrees on a priori cannot split the few users still likely later. A selection
then costs ``U·n·d`` (``γ``) plus a handful of ``[M, shortlist]`` products, whatever the
pool size. A pair already answered (either orientation) is never asked again. Pure
torch, no Ray.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from copl_ray.config import COPL_SELECTOR, RANDOM_SELECTOR, SELECTORS, AdaptConfig, OnboardingConfig
from copl_ray.graph.adapt import adapt_one_user
from copl_ray.graph.artifacts import GNNArtifacts

# candidates scored per matrix product in the opening ranking ([U, chunk] floats)
OPENING_CHUNK = 2_000_000


@dataclass(frozen=True)
class QuestionPool:
    """Candidate pairs: ``pair_ids [C]`` and their responses as graph node indices
    ``a [C]``, ``b [C]`` (both ``>= 0``)."""

    pair_ids: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return len(self.pair_ids)

    @classmethod
    def from_pairs(cls, art: GNNArtifacts, pairs: pd.DataFrame) -> QuestionPool:
        """The pairs of ``pairs`` (columns pair_id, response_a, response_b; ``heldout``
        if present) that are not held out and whose two responses are graph nodes."""
        keep = np.ones(len(pairs), dtype=bool)
        if "heldout" in pairs.columns:
            keep &= ~pairs["heldout"].fillna(False).to_numpy(dtype=bool)
        a = art.response_index(pairs["response_a"].to_numpy())
        b = art.response_index(pairs["response_b"].to_numpy())
        keep &= (a >= 0) & (b >= 0) & (a != b)
        return cls(pairs["pair_id"].to_numpy(np.int64)[keep], a[keep], b[keep])

    def positions(self, pair_ids: np.ndarray) -> np.ndarray:
        """Pool positions of ``pair_ids`` (-1 where a pair is not in the pool)."""
        index = pd.Index(self.pair_ids)
        return index.get_indexer(np.asarray(pair_ids, dtype=np.int64))


def _unordered(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(a, b) * n + np.maximum(a, b)


def stable_seed(*parts: object) -> int:
    """A seed from ``parts`` that is the same in every process (``hash`` is salted)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class QuestionSelector:
    """Ranks the pairs of one :class:`QuestionPool` for a new user's answers so far.

    ``select(selector, chosen, rejected, k)`` → the pool positions of the next ``k``
    questions (best first), given the user's answers as response ids ``chosen[i] ≻
    rejected[i]`` (ids without a graph node are ignored, as adaptation ignores them).
    """

    def __init__(
        self, art: GNNArtifacts, pool: QuestionPool, adapt: AdaptConfig, cfg: OnboardingConfig
    ):
        if len(pool) == 0:
            raise ValueError(
                "onboarding: no candidate pair has both responses in the graph (nothing to ask)"
            )
        self.art, self.pool, self.adapt, self.cfg = art, pool, adapt, cfg
        emb = art.response_embeddings
        self.diff = (emb[torch.from_numpy(pool.a)] - emb[torch.from_numpy(pool.b)]).contiguous()
        self.keys = _unordered(pool.a, pool.b, art.n_responses)
        self._opening: dict[str, torch.Tensor] = {}
        n_users, m = art.n_users, min(cfg.max_users, art.n_users)
        sample = torch.randperm(n_users, generator=torch.Generator().manual_seed(0))[:m]
        self.prior_sample = sample if m < n_users else torch.arange(n_users)

    # ------------------------------------------------------------------ public
    def select(
        self,
        selector: str,
        chosen: np.ndarray,
        rejected: np.ndarray,
        k: int,
        candidates: np.ndarray | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Pool positions of the next ``k`` questions (fewer if fewer remain).

        ``candidates``: pool positions the user may be asked (default: the whole pool);
        ``seed``: the ``random`` selector's draw.
        """
        if selector not in SELECTORS:
            raise ValueError(
                f"onboarding selector: expected one of {list(SELECTORS)}, got {selector!r}"
            )
        a = self.art.response_index(np.asarray(chosen, dtype=np.int64))
        b = self.art.response_index(np.asarray(rejected, dtype=np.int64))
        known = (a >= 0) & (b >= 0)
        a, b = a[known], b[known]
        cand = np.arange(len(self.pool)) if candidates is None else np.asarray(candidates)
        cand = cand[~np.isin(self.keys[cand], _unordered(a, b, self.art.n_responses))]
        if len(cand) == 0 or k <= 0:
            return cand[:0]
        if selector == RANDOM_SELECTOR:
            return np.random.default_rng(seed).permutation(cand)[:k]
        opening = self.opening(selector)[torch.from_numpy(cand)]
        if len(a) == 0:  # the opening scores do not depend on the user: computed once
            return cand[torch.topk(opening, min(k, len(cand))).indices.numpy()]
        if len(cand) > self.cfg.shortlist:
            cand = cand[torch.topk(opening, self.cfg.shortlist).indices.numpy()]
        rule = self.expected_change if selector == COPL_SELECTOR else self.d_optimal
        score = rule(a, b, cand)
        return cand[torch.topk(score, min(k, len(cand))).indices.numpy()]

    def opening(self, selector: str) -> torch.Tensor:
        """Scores of the whole pool before any answer (the same for every user), kept."""
        if selector not in self._opening:
            cand = np.arange(len(self.pool))
            empty = np.zeros(0, dtype=np.int64)
            score = self.expected_change if selector == COPL_SELECTOR else self.d_optimal
            self._opening[selector] = score(empty, empty, cand)
        return self._opening[selector]

    # ------------------------------------------------------------------ the rules
    def posterior(self, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users [M], log w [M])``: the seen users of largest ``γ`` and their log
        weights (before any answer: the prior sample, uniform)."""
        users = self.art.user_embeddings
        if len(a) == 0:
            return self.prior_sample, torch.full(
                (len(self.prior_sample),), -np.log(len(self.prior_sample))
            )
        gamma = F.logsigmoid(users @ (self.diff_of(a, b)).T).sum(1)
        m = min(self.cfg.max_users, len(users))
        top = torch.topk(gamma, m).indices if m < len(users) else torch.arange(len(users))
        return top, torch.log_softmax(gamma[top] / self.adapt.kappa, 0)

    def diff_of(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        emb = self.art.response_embeddings
        return emb[torch.from_numpy(a)] - emb[torch.from_numpy(b)]

    @torch.no_grad()
    def expected_change(self, a: np.ndarray, b: np.ndarray, cand: np.ndarray) -> torch.Tensor:
        """The ``copl`` score of each candidate (module docstring)."""
        users, log_w = self.posterior(a, b)
        e_users = self.art.user_embeddings[users]  # [M, d]
        now = self._scale(torch.exp(log_w) @ e_users)
        out = torch.empty(len(cand))
        step = max(1, OPENING_CHUNK // max(1, len(users)))
        for s in range(0, len(cand), step):
            c = torch.from_numpy(cand[s : s + step])
            margin = e_users @ self.diff[c].T  # [M, c]
            up = F.logsigmoid(margin)  # log σ(s); log σ(−s) = log σ(s) − s
            p = torch.exp(log_w[:, None] + up).sum(0)  # [c]
            kappa = self.adapt.kappa
            e_up = self._scale(torch.softmax(log_w[:, None] + up / kappa, 0).T @ e_users)
            down = log_w[:, None] + (up - margin) / kappa
            e_down = self._scale(torch.softmax(down, 0).T @ e_users)
            gain_up = (e_up - now).pow(2).sum(1)
            gain_down = (e_down - now).pow(2).sum(1)
            out[s : s + step] = p * gain_up + (1 - p) * gain_down
        return out

    @torch.no_grad()
    def d_optimal(self, a: np.ndarray, b: np.ndarray, cand: np.ndarray) -> torch.Tensor:
        """The ``pref`` score of each candidate (module docstring)."""
        lam = self.current(a, b)
        fisher = torch.eye(self.art.dim) * self.cfg.pref_ridge
        if len(a):
            v = self.diff_of(a, b)
            s = torch.sigmoid(v @ lam)
            fisher += (v * (s * (1 - s))[:, None]).T @ v
        v = self.diff[torch.from_numpy(cand)]
        s = torch.sigmoid(v @ lam)
        spread = (torch.linalg.solve(fisher, v.T).T * v).sum(1)  # vᵀ Σ⁻¹ v
        return (s * (1 - s)).pow(2) * spread

    def current(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        """The user's adapted embedding now (:func:`adapt_one_user`, weighted); the mean
        seen user before any answer."""
        if len(a) == 0:
            return self.art.mean_user()
        ids = self.art.response_ids
        user = adapt_one_user(self.art, ids[a], ids[b], self.adapt, variant="weighted")
        return torch.from_numpy(user.embedding)

    def _scale(self, emb: torch.Tensor) -> torch.Tensor:
        if self.art.normalized and self.adapt.renormalize:
            return F.normalize(emb, dim=-1)
        return emb
