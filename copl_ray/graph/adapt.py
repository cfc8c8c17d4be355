"""Optimization-free adaptation of unseen users (docs/method.md §4), vectorised over users.

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
   sees; docs/reference-code.md B5) and ``e_a, e_b`` the trained response embeddings.
   ``variant="naive"``: uniform ``w_v = 1/|N(k)|``. ``variant="user_opt"``: a free
   embedding (started at the mean seen user) optimised with Adam on
   ``Σ −log σ(<e, e_a − e_b>)`` for ``adapt.user_opt_steps`` steps (the only variant
   that takes gradient steps; the paper's Table 4 "User Opt").
3. **Scale**: with normalised exports and ``adapt.renormalize`` the result is re-normalised
   to unit length like every seen user's (the official code leaves it shorter).

Labels on responses without a node are accepted and counted (``n_unknown`` = labels with
at least one unknown response); a known chosen/rejected response still yields its edge,
but only pairs with both responses known enter ``γ``/User-Opt.

**Fallback** (never a zero vector; docs/reference-code.md B12): no neighbour by the configured rule
→ every seen user sharing a labelled response with either sign (``fallback_kind=
"any_sign"``; see :func:`neighbour_masks` for why more hops alone cannot help) → the mean
seen user (``"mean_user"``). ``fallback=True`` marks both (User-Opt: no pair with both
responses known). Pure torch, no Ray.

Every adapted user is a :class:`~copl_ray.graph.users.UserEmbedding` (``seen=False``,
``kind="adapted"``): the record the GNN stage writes and serving stores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from copl_ray.config import AdaptConfig, ConfigError
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.users import ADAPTED, UserEmbedding, UserEmbeddings

VARIANTS = ("weighted", "naive", "user_opt")
METHODS = ("auto", "dense", "sparse")
# method="auto": batches of at most this many new users take the per-user sparse path. It
# reads only the adjacency rows of the responses a user labelled and scores only their
# neighbours; the dense path costs O(M·R + M·U + U·J) whatever the batch, and wins when
# many users share one pass (offline adaptation of every unseen user).
SPARSE_MAX_USERS = 16


def _check_params(cfg: AdaptConfig, variant: str, method: str = "auto") -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"adapt variant: expected one of {list(VARIANTS)}, got {variant!r}")
    if method not in METHODS:
        raise ValueError(f"adapt method: expected one of {list(METHODS)}, got {method!r}")
    if cfg.hops < 2 or cfg.hops % 2:
        raise ConfigError(f"adapt.hops: must be an even number >= 2, got {cfg.hops}")
    if cfg.kappa <= 0:
        raise ConfigError(f"adapt.kappa: must be > 0, got {cfg.kappa}")


def _zero_annotations() -> ValueError:
    return ValueError(
        "adaptation annotations: zero annotations given; an unseen user needs at least "
        "one labelled pair (chosen ≻ rejected) to be adapted"
    )


def _check_input(annotations: pd.DataFrame, cfg: AdaptConfig, variant: str, method: str) -> None:
    _check_params(cfg, variant, method)
    missing = [c for c in ("user_id", "chosen", "rejected") if c not in annotations.columns]
    if missing:
        raise ValueError(f"adaptation annotations: missing column(s) {missing}")
    if len(annotations) == 0:
        raise _zero_annotations()
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
    method: str = "auto",
) -> pd.DataFrame:
    """One embedding per distinct ``user_id`` of ``annotations`` (columns: user_id, chosen,
    rejected — response ids). Returns one row per user in first-appearance order, with the
    columns of :class:`~copl_ray.graph.users.UserEmbedding` (``user_id``, ``embedding``
    np.float32 ``[d]``, ``seen``, ``kind``, ``n_neighbors``, ``fallback``,
    ``fallback_kind``, ``n_unknown``).

    ``method``: ``"dense"`` (one pass of matrix products for the whole batch), ``"sparse"``
    (per user, only the rows it reaches; :func:`adapt_one_user`) or ``"auto"`` (sparse up
    to :data:`SPARSE_MAX_USERS` users). Both give the same results up to float rounding.
    """
    _check_input(annotations, cfg, variant, method)
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
        how = np.where(n_scored == 0, "mean_user", "").astype(object)
    elif method == "sparse" or (method == "auto" and n_new <= SPARSE_MAX_USERS):
        rows = [_adapt_one(art, a[owner == m], b[owner == m], cfg, variant) for m in range(n_new)]
        emb = torch.stack([r[0] for r in rows])
        n_neighbors = np.array([r[1] for r in rows], dtype=np.int64)
        how = np.array([r[2] for r in rows], dtype=object)
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
    emb = _export_scale(art, emb, cfg).numpy().astype(np.float32)
    records = [
        _record(str(u), emb[m], int(n_neighbors[m]), str(how[m]), int(n_unknown[m]))
        for m, u in enumerate(user_ids)
    ]
    return UserEmbeddings.from_records(records, "adaptation").frame()


def _record(
    user_id: str, embedding: np.ndarray, n_neighbors: int, how: str, n_unknown: int
) -> UserEmbedding:
    """An unseen user's adapted record (``how``: the fallback kind, ``""`` for none)."""
    return UserEmbedding(
        user_id=user_id,
        embedding=embedding,
        seen=False,
        kind=ADAPTED,
        n_neighbors=n_neighbors,
        fallback=how != "",
        fallback_kind=how,
        n_unknown=n_unknown,
    )


def _export_scale(art: GNNArtifacts, emb: torch.Tensor, cfg: AdaptConfig) -> torch.Tensor:
    return F.normalize(emb, dim=-1) if art.normalized and cfg.renormalize else emb


# ------------------------------------------------------------- per-user sparse path
def adapt_one_user(
    art: GNNArtifacts,
    chosen: np.ndarray,
    rejected: np.ndarray,
    cfg: AdaptConfig,
    variant: str = "weighted",
    user_id: str = "",
) -> UserEmbedding:
    """One new user from response ids ``chosen[i] ≻ rejected[i]``, without pandas: the call
    a server makes per request. Same record as ``adapt_unseen_users`` on those rows
    (``n_unknown``: labels with at least one response that has no node)."""
    _check_params(cfg, variant)
    chosen = np.asarray(chosen, dtype=np.int64)
    rejected = np.asarray(rejected, dtype=np.int64)
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise ValueError(
            f"adaptation annotations: chosen {chosen.shape} and rejected {rejected.shape} "
            "must be 1-d of one length"
        )
    if len(chosen) == 0:
        raise _zero_annotations()
    same = chosen == rejected
    if same.any():
        raise ValueError(
            f"adaptation annotations: row {int(np.argmax(same))} has chosen == rejected"
        )
    a, b = art.response_index(chosen), art.response_index(rejected)
    emb, n_neighbors, how = _adapt_one(art, a, b, cfg, variant)
    embedding = _export_scale(art, emb, cfg).numpy().astype(np.float32)
    return _record(user_id, embedding, n_neighbors, how, int(((a < 0) | (b < 0)).sum()))


def _gather(lists: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``concat_r indices[indptr[r] : indptr[r + 1]]`` over ``rows``, without a Python loop."""
    indptr, indices = lists
    start = indptr[rows]
    lengths = indptr[rows + 1] - start
    # position p of row i's j-th entry is c_i + j (c = exclusive cumsum); want start_i + j
    shift = np.repeat(start - np.cumsum(lengths) + lengths, lengths)
    return indices[shift + np.arange(len(shift))]


def _sparse_reach(
    art: GNNArtifacts, own: dict[str, np.ndarray], hops: int, signs: tuple[str, ...]
) -> np.ndarray:
    """Boolean ``[U]``: :func:`_reach` for one user whose ``sign`` responses are ``own[sign]``."""
    reach = np.zeros(art.n_users, dtype=bool)
    for s in signs:
        reach[_gather(art.neighbour_lists(s, transpose=True), own[s])] = True
    for _ in range(2, hops, 2):  # user -> response -> user, same sign, from all reached
        users = np.flatnonzero(reach)
        nxt = np.zeros_like(reach)
        for s in signs:
            responses = np.unique(_gather(art.neighbour_lists(s), users))
            nxt[_gather(art.neighbour_lists(s, transpose=True), responses)] = True
        reach |= nxt
    return reach


def _adapt_one(
    art: GNNArtifacts, a: np.ndarray, b: np.ndarray, cfg: AdaptConfig, variant: str
) -> tuple[torch.Tensor, int, str]:
    """``(embedding before rescaling, n_neighbors, fallback kind)`` of one new user from
    node indices ``a[i] ≻ b[i]`` (-1: no node) — :func:`neighbour_masks` and the weights of
    the dense path, restricted to this user's neighbours."""
    known = (a >= 0) & (b >= 0)
    sa, sb = a[known], b[known]
    if variant == "user_opt":
        emb = user_opt(art, np.zeros(len(sa), np.int64), sa, sb, 1, cfg)[0]
        return emb, 0, "" if len(sa) else "mean_user"
    ca, cb = a[a >= 0], b[b >= 0]
    signs = ("pos", "neg") if cfg.include_negative else ("pos",)
    reach, how = _sparse_reach(art, {"pos": ca, "neg": cb}, cfg.hops, signs), ""
    if not reach.any():
        both = np.concatenate([ca, cb])
        reach = _sparse_reach(art, {"pos": both, "neg": both}, 2, ("pos", "neg"))
        how = "any_sign" if reach.any() else "mean_user"
    nb = torch.from_numpy(np.flatnonzero(reach))
    if len(nb) == 0:
        return art.mean_user(), 0, how
    users = art.user_embeddings[nb]  # [n, d]
    with torch.no_grad():
        if variant == "naive":
            return users.mean(0), len(nb), how
        gamma = torch.zeros(len(nb))
        if len(sa):
            diff = art.response_embeddings[sa] - art.response_embeddings[sb]  # [J, d]
            gamma = F.logsigmoid(users @ diff.T).sum(1)
            if cfg.gamma == "mean":
                gamma = gamma / len(sa)
        return torch.softmax(gamma / cfg.kappa, 0) @ users, len(nb), how
