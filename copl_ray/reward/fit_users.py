"""Fit unseen users' rows on their few labels, every model weight frozen.

For a variant with a free row ``w_u`` per seen user (copl_ray/reward/baselines.py), a user
the training never saw gets a row fitted on their ``n`` labels ``(chosen_i, rejected_i)``:

    w_u = argmin_w  (1/n) Σ_i −log σ(r_w(chosen_i) − r_w(rejected_i)) + λ‖w − w̄‖²

``w̄`` is the mean seen user's row (the start and the prior: with one label the fit moves
little from the average user), ``λ = eval.fit_l2``; Adam, ``eval.fit_steps`` steps at
``eval.fit_lr``, all users at once (their losses are independent, so one optimiser over the
stacked rows is the same as one per user). Where the user enters only after pooling
(PAL / PReF / LoRe) the pooled features are computed once; token variants (I2E) run the
frozen backbone forward and backward each step, in chunks of ``batch_size`` labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def fit_user_rows(
    model,
    chosen_ids: np.ndarray,
    chosen_mask: np.ndarray,
    rejected_ids: np.ndarray,
    rejected_mask: np.ndarray,
    label_user: np.ndarray,
    n_users: int,
    steps: int,
    lr: float,
    l2: float,
    batch_size: int = 256,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """Rows ``[n_users, D]`` fitted on the labels; ``label_user[i]`` is label ``i``'s user
    (0..n_users-1). Users without a label keep the mean seen row. ``features``: the pooled
    features of the chosen and rejected rows when the caller holds them already
    (user-head models; computed here otherwise)."""
    table = model.user_table.weight.detach().float()
    prior = table.mean(0, keepdim=True).expand(n_users, -1).clone()
    rows = prior.clone().requires_grad_(True)
    user = torch.as_tensor(label_user, dtype=torch.long, device=rows.device)
    per_user = torch.bincount(user, minlength=n_users).clamp(min=1).float()
    weight = 1.0 / per_user[user]  # each user's labels average to one term
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # only the rows learn; no gradient is kept for the model
        p.requires_grad_(False)
    try:
        return _fit(
            model,
            (chosen_ids, chosen_mask, rejected_ids, rejected_mask),
            user,
            weight,
            rows,
            prior,
            steps,
            lr,
            l2,
            batch_size,
            features,
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _fit(model, tokens, user, weight, rows, prior, steps, lr, l2, batch_size, feats) -> np.ndarray:
    """The Adam loop of :func:`fit_user_rows` (model weights already frozen)."""
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = tokens
    n = len(user)
    opt = torch.optim.Adam([rows], lr=lr)
    if feats is None and model.user_at_head:  # h(x) is user-free: once, only the head re-runs
        feats = [
            model.response_features(ids, mask, batch_size)
            for ids, mask in ((chosen_ids, chosen_mask), (rejected_ids, rejected_mask))
        ]
    for _ in range(steps):
        opt.zero_grad()
        for sl in _chunks(n, batch_size):
            w = rows[user[sl]]
            if feats is not None:
                c = model.head_scores(feats[0][sl], w)
                r = model.head_scores(feats[1][sl], w)
            else:
                both = model.score_rows(
                    np.concatenate([chosen_ids[sl], rejected_ids[sl]]),
                    np.concatenate([chosen_mask[sl], rejected_mask[sl]]),
                    user_row=w.to(model.user_table.weight.dtype),
                )
                c, r = both[: sl.stop - sl.start], both[sl.stop - sl.start :]
            nll = -(F.logsigmoid(c - r) * weight[sl]).sum()
            nll.backward()
        (l2 * ((rows - prior) ** 2).sum()).backward()
        opt.step()
    return rows.detach().cpu().numpy()
