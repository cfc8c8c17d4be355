"""Accuracy summaries and expert-allocation statistics (pure numpy/pandas).

Pairwise accuracy of a reward ``f`` on labelled pairs ``(u, a ≻ b)``::

    acc = mean 1[f(u, a) > f(u, b)]

(a tie counts as wrong, so a constant model scores 0, not 0.5). Reported overall, per
true group, and on *common* (all groups agree) vs *controversial* pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _acc(x: pd.Series) -> float | None:
    return float(x.mean()) if len(x) else None


def accuracy_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Accuracy summary of one split from a frame with ``correct:bool, user_id, group,
    controversial``: ``{overall, common, controversial, by_group, n_pairs, n_users}``,
    accuracies as fractions, None where the subset has no pair.

    ``controversial`` is 1/0 (or True/False), -1/NaN where unknown; ``group`` "" / None
    where unknown (then ``by_group`` is empty).
    """
    if frame is None or len(frame) == 0:
        return {
            "overall": None,
            "common": None,
            "controversial": None,
            "by_group": {},
            "n_pairs": 0,
            "n_users": 0,
        }
    correct = frame["correct"].astype(bool)
    contr = pd.to_numeric(frame["controversial"], errors="coerce")
    groups = frame["group"].fillna("").astype(str)
    by_group = {
        g: _acc(correct[groups == g])
        for g in sorted(set(groups))
        if g  # unknown groups skipped
    }
    return {
        "overall": _acc(correct),
        "common": _acc(correct[contr == 0]),
        "controversial": _acc(correct[contr == 1]),
        "by_group": by_group,
        "n_pairs": int(len(frame)),
        "n_users": int(frame["user_id"].nunique()),
    }


def top_expert(gate_weights: np.ndarray) -> np.ndarray:
    """Index of the largest gate weight: ``[..., U, M] -> [..., U]``."""
    return np.asarray(gate_weights).argmax(axis=-1)


def allocation_matrix(
    gate_weights: np.ndarray, groups: list[str] | np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Group × expert share of users whose top-1 expert is ``e`` (rows sum to 1).

    ``gate_weights``: ``[U, M]`` (one global gate) → ``[n_groups, M]``;
    ``[G, U, M]`` (one gate per wrapped module) → ``[G, n_groups, M]``.
    """
    w = np.asarray(gate_weights)
    groups = np.asarray([g if g else "unknown" for g in groups])
    names = sorted(set(groups.tolist()))
    m = w.shape[-1]
    top = top_expert(w)
    squeeze = w.ndim == 2
    if squeeze:
        top = top[None]
    out = np.zeros((top.shape[0], len(names), m))
    for gi, g in enumerate(names):
        sel = top[:, groups == g]  # [G, n_g]
        for e in range(m):
            out[:, gi, e] = (sel == e).mean(axis=1) if sel.shape[1] else 0.0
    return names, out[0] if squeeze else out


def expert_usage(gate_weights: np.ndarray) -> dict[str, Any]:
    """Per-expert share of users routed there (top-1) and mean gate weight.

    Idle experts (share 0) are the paper's stated limitation without load balancing.
    """
    w = np.asarray(gate_weights)
    if w.ndim == 2:
        w = w[None]
    m = w.shape[-1]
    top = top_expert(w)  # [G, U]
    share = np.stack([(top == e).mean(axis=1) for e in range(m)], axis=-1)  # [G, M]
    return {
        "share": share.mean(axis=0).tolist(),
        "mean_weight": w.mean(axis=(0, 1)).tolist(),
        "idle_experts": int((share.mean(axis=0) == 0).sum()),
        "n_users": int(w.shape[1]),
        "n_gates": int(w.shape[0]),
    }


COLLAPSE_SHARE = 0.95  # one expert taking this share of users or more: a collapsed gate


def gate_health(share: Sequence[float], collapse_share: float = COLLAPSE_SHARE) -> dict[str, Any]:
    """Is the gate routing users at all? From ``share`` (users per expert, top-1; sums to 1).

    ``entropy`` is the routing entropy normalised by its maximum, ``H(share) / log M``
    (0 log 0 = 0): 0 when every user has the same top expert, 1 when the experts hold
    equal shares, ``log k / log M`` for an even split over k experts. ``collapsed`` when one
    expert takes ``collapse_share`` of the users or more: then the reward model is one
    shared adapter and personalisation can only come from elsewhere.
    """
    p = np.asarray(share, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p < 0).any() or not np.isclose(p.sum(), 1.0, atol=1e-6):
        raise ValueError(f"share: expected fractions over experts summing to 1, got {list(p)}")
    m = len(p)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(m)) if m > 1 else 0.0
    top = int(p.argmax())
    return {
        "share": p.tolist(),
        "entropy": min(max(entropy, 0.0), 1.0),
        "top_expert": top,
        "top_share": float(p[top]),
        "collapsed": bool(p[top] >= collapse_share),
        "collapse_share": float(collapse_share),
    }
