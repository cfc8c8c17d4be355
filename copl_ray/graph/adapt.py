"""Optimization-free adaptation of unseen users (METHOD.md §4), vectorised over users.

For a new user ``u*`` with labels ``D_u* = {(a ≻ b)}``:

1. **Neighbours** ``N(k)``: seen users reached in ``k`` hops (``k`` even). Two hops =
   users with a positive edge to a response ``u*`` chose (``include_negative``: also
   users with a negative edge to a response ``u*`` rejected); each further two hops
   repeats that user→response→user step from the users reached so far. As matrices
   (``X`` = the new users' edge rows, ``A⁺`` the seen users' 0/1 positive edges)::

       R₂ = [X⁺ A⁺ᵀ (+ X⁻ A⁻ᵀ)] > 0,     R_{k+2} = [R_k (A⁺ A⁺ᵀ (+ A⁻ A⁻ᵀ))] > 0

   evaluated right-to-left as sparse–dense products (never a ``U×U`` matrix).
2. **Weights** (``variant="weighted"``)::

       γ_v = Σ_{(a≻b)∈D_u*} log σ(<e_v, e_a − e_b>)    (adapt.gamma="mean": the mean instead)
       w_v = softmax_{v∈N(k)}(γ_v / κ),     e_u* = Σ_v w_v e_v

   with ``e_v`` the seen users' embeddings **at the export scale** (what the reward model
   sees; REFERENCE.md B5) and ``e_a, e_b`` the trained response embeddings.
   ``variant="naive"``: uniform ``w_v = 1/|N(k)|``. ``variant="user_opt"``: a free
   embedding (started at the mean seen user) optimised with Adam on
   ``Σ −log σ(<e, e_a − e_b>)`` for ``adapt.user_opt_steps`` steps (the only variant
   that takes gradient steps; METHOD Table 4's "User Opt").
3. **Scale**: with normalised exports and ``adapt.renormalize`` the result is re-normalised
   to unit length like every seen user's (the official code leaves it shorter).

Labels on responses without a node are accepted and counted (``n_unknown`` = labels with
at least one unknown response); a known chosen/rejected response still yields its edge,
but only pairs with both responses known enter ``γ``/User-Opt.

**Fallback** (never a zero vector; REFERENCE.md B12): no neighbour by the configured rule
→ every seen user sharing a labelled response with either sign (``fallback_kind=
"any_sign"``; see :func:`neighbour_masks` for why more hops alone cannot help) → the mean
seen user (``"mean_user"``). ``fallback=True`` marks both (User-Opt: no pair with both
responses known). Pure torch, no Ray.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from copl_ray.config import AdaptConfig
from copl_ray.graph.artifacts import GNNArtifacts

VARIANTS = ("weighted", "naive", "user_opt")
OUTPUT_COLUMNS = ["user_id", "embedding", "n_neighbors", "fallback", "n_unknown", "fallback_kind"]


def _check_input(annotations: pd.DataFrame, cfg: AdaptConfig, variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"adapt variant: expected one of {list(VARIANTS)}, got {variant!r}")
    if cfg.hops < 2 or cfg.hops % 2:
        raise ValueError(f"adapt.hops: must be an even number >= 2, got {cfg.hops}")
    if cfg.kappa <= 0:
        raise ValueError(f"adapt.kappa: must be > 0, got {cfg.kappa}")
    missing = [c for c in ("user_id", "chosen", "rejected") if c not in annotations.columns]
    if missing:
        raise ValueError(f"adaptation annotations: missing column(s) {missing}")
    if len(annotations) == 0:
        raise ValueError(
            "adaptation annotations: zero annotations given; an unseen user needs at least "
            "one labelled pair (chosen ≻ rejected) to be adapted"
        )
    for col in ("user_id", "chosen", "rejected"):
        bad = annotations[col].isna().to_numpy()
        if bad.any():
            raise ValueError(
                f"adaptation annotations: column {col!r} is null in row {int(np.argmax(bad))}"
            )
    same = annotations["chosen"].to_numpy() == annotations["rejected"].to_numpy()
    if same.any():
        raise ValueError(
            f"adaptation annotations: row {int(np.argmax(same))} has chosen == rejected"
        )


def _rows(index: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Dense 0/1 ``[M, R]`` matrix with ones at (index, cols) where cols >= 0."""
    out = torch.zeros(shape)
    keep = cols >= 0
    out[torch.from_numpy(index[keep]), torch.from_numpy(cols[keep])] = 1.0
    return out


def _hop(x: torch.Tensor, adj: torch.Tensor, adj_t: torch.Tensor) -> torch.Tensor:
    """``x [M, R] → x Aᵀ [M, U]`` with ``A [U, R]`` CSR, as ``(A xᵀ)ᵀ``."""
    return torch.sparse.mm(adj, x.T.contiguous()).T


def _reach(
    art: GNNArtifacts, x_pos: torch.Tensor, x_neg: torch.Tensor, hops: int, signs: tuple[str, ...]
) -> torch.Tensor:
    """Boolean ``[M, U]``: seen users within ``hops`` of each new user through ``signs``."""
    mats = {s: (art.binary_adjacency(s), art.binary_adjacency(s, transpose=True)) for s in signs}
    own = {"pos": x_pos, "neg": x_neg}
    reach = sum(_hop(own[s], *mats[s]) for s in signs) > 0
    for _ in range(2, hops, 2):  # each further 2 hops: user -> response -> user, same sign
        r = reach.float().T.contiguous()
        nxt = sum(_hop(torch.sparse.mm(mats[s][1], r).T, *mats[s]) for s in signs)
        reach = reach | (nxt > 0)
    return reach


def neighbour_masks(
    art: GNNArtifacts, x_pos: torch.Tensor, x_neg: torch.Tensor, cfg: AdaptConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """Neighbour mask ``[M, U]`` and per user how it was found: ``""`` (the configured
    ``adapt.hops`` rule), ``"any_sign"`` or ``"mean_user"`` (no neighbour at all).

    Why the fallback widens the *edge set*, not the hop count: more hops only grow a
    non-empty set — a user whose chosen responses have no positive edge has no 2-hop
    neighbour and so none at any ``k``. The fallback therefore takes every seen user who
    labelled (either sign) a response the new user labelled; the weighted rule's ``γ``
    then favours those whose scores agree with the new user's labels. A user with no
    labelled response in the graph gets the mean seen user.
    """
    signs = ("pos", "neg") if cfg.include_negative else ("pos",)
    reach = _reach(art, x_pos, x_neg, cfg.hops, signs)
    how = np.full(len(reach), "", dtype=object)
    empty = ~reach.any(1)
    if bool(empty.any()):
        wide = _reach(art, x_pos + x_neg, x_pos + x_neg, 2, ("pos", "neg"))
        reach = torch.where(empty[:, None], wide, reach)
        how[empty.numpy()] = "any_sign"
        how[(~reach.any(1)).numpy()] = "mean_user"
    return reach, how


def pair_log_sigmoid_sums(
    art: GNNArtifacts,
    user_of_pair: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_new: int,
    mean: bool,
    chunk: int = 2_000_000,
) -> torch.Tensor:
    """``Γ [n_new, U]``: Σ (or mean) over each new user's pairs of ``log σ(<e_v, e_a − e_b>)``."""
    gamma = torch.zeros(n_new, art.n_users)
    if len(a) == 0:
        return gamma
    diff = art.response_embeddings[a] - art.response_embeddings[b]  # [J, d]
    owner = torch.from_numpy(user_of_pair)
    step = max(1, chunk // max(1, art.n_users))
    for s in range(0, len(a), step):
        ls = F.logsigmoid(art.user_embeddings @ diff[s : s + step].T)  # [U, j]
        gamma.index_add_(0, owner[s : s + step], ls.T.contiguous())
    if mean:
        counts = torch.bincount(owner, minlength=n_new).clamp(min=1).float()
        gamma = gamma / counts[:, None]
    return gamma


def user_opt(
    art: GNNArtifacts,
    user_of_pair: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_new: int,
    cfg: AdaptConfig,
) -> torch.Tensor:
    """Free embeddings optimised on ``Σ −log σ(<e, e_a − e_b>)`` (Adam, ``user_opt_steps``)."""
    emb = art.mean_user().repeat(n_new, 1).clone().requires_grad_(True)
    if len(a) == 0:
        return emb.detach()
    diff = art.response_embeddings[a] - art.response_embeddings[b]
    owner = torch.from_numpy(user_of_pair)
    opt = torch.optim.Adam([emb], lr=cfg.user_opt_lr)
    for _ in range(cfg.user_opt_steps):
        loss = -F.logsigmoid((emb[owner] * diff).sum(-1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return emb.detach()


@torch.no_grad()
def _neighbour_average(
    art: GNNArtifacts, mask: torch.Tensor, gamma: torch.Tensor | None, kappa: float
) -> torch.Tensor:
    if gamma is None:
        weights = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)
    else:
        logits = (gamma / kappa).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all -inf rows -> 0
    return weights @ art.user_embeddings


def adapt_unseen_users(
    art: GNNArtifacts,
    annotations: pd.DataFrame,
    cfg: AdaptConfig,
    variant: str = "weighted",
) -> pd.DataFrame:
    """One embedding per distinct ``user_id`` of ``annotations`` (columns: user_id, chosen,
    rejected — response ids). Returns ``user_id, embedding (np.float32 [d]), n_neighbors,
    fallback, n_unknown, fallback_kind`` in first-appearance order of the users."""
    _check_input(annotations, cfg, variant)
    user_ids = pd.unique(annotations["user_id"].astype(str))
    owner = pd.Index(user_ids).get_indexer(annotations["user_id"].astype(str)).astype(np.int64)
    a = art.response_index(annotations["chosen"].to_numpy())
    b = art.response_index(annotations["rejected"].to_numpy())
    n_new = len(user_ids)
    unknown = (a < 0) | (b < 0)
    n_unknown = np.bincount(owner[unknown], minlength=n_new)
    scored = ~unknown
    sa, sb, so = a[scored], b[scored], owner[scored]
    n_scored = np.bincount(so, minlength=n_new)

    if variant == "user_opt":
        emb = user_opt(art, so, sa, sb, n_new, cfg)
        n_neighbors = np.zeros(n_new, dtype=np.int64)
        fallback = n_scored == 0
        how = np.where(fallback, "mean_user", "")
    else:
        shape = (n_new, art.n_responses)
        x_pos, x_neg = _rows(owner, a, shape), _rows(owner, b, shape)
        mask, how = neighbour_masks(art, x_pos, x_neg, cfg)
        gamma = None
        if variant == "weighted":
            gamma = pair_log_sigmoid_sums(art, so, sa, sb, n_new, mean=cfg.gamma == "mean")
        emb = _neighbour_average(art, mask, gamma, cfg.kappa)
        n_neighbors = mask.sum(1).numpy()
        emb[torch.from_numpy(n_neighbors == 0)] = art.mean_user()
        fallback = how != ""
    if art.normalized and cfg.renormalize:
        emb = F.normalize(emb, dim=-1)
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "embedding": list(emb.numpy().astype(np.float32)),
            "n_neighbors": n_neighbors.astype(np.int32),
            "fallback": np.asarray(fallback, dtype=bool),
            "n_unknown": n_unknown.astype(np.int32),
            "fallback_kind": how.astype(str),
        },
        columns=OUTPUT_COLUMNS,
    )
