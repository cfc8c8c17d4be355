"""What every eval computation reads: the test pairs with their tokens (:class:`EvalData`),
batched scoring through the one scoring path (:class:`Scorer`), and CoPL's accuracy for
unseen users adapted from given labels (:func:`adapted_correct`; the labels curve, the
flip test and the onboarding simulation all call it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from copl_ray.artifacts import RunDir
from copl_ray.data.tables import format_text
from copl_ray.graph.users import ADAPTED, UserEmbeddings

if TYPE_CHECKING:
    from copl_ray.config import AdaptConfig
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.reward.model import PersonalRewardModel

ADAPTED_VARIANT = "weighted"  # the adaptation behind the unseen users' kind="adapted" rows


# ------------------------------------------------------------------ inputs
class EvalData:
    """Test pairs of every user with group / pair type, and tokenised responses."""

    def __init__(self, run: RunDir, tokenizer, max_length: int) -> None:
        from copl_ray.reward.backbone import tokenize_texts

        ann = pq.read_table(run.data / "annotations.parquet").to_pandas()
        users = pq.read_table(run.data / "users.parquet").to_pandas()
        pairs = pq.read_table(run.data / "pairs.parquet", columns=["pair_id", "controversial"])
        pairs = pairs.to_pandas()
        resp = pq.read_table(run.data / "responses.parquet").to_pandas()
        self.annotations = ann
        self.users = users
        test = ann[ann["split"] == "test"].merge(users, on="user_id", how="inner")
        contr = pairs.set_index("pair_id")["controversial"]
        test["controversial"] = (
            contr.reindex(test["pair_id"].to_numpy()).map({True: 1, False: 0}).fillna(-1).to_numpy()
        )
        test["group"] = test["group"].fillna("")
        # every survey label: the unseen users' are what adaptation reads and the baselines
        # fit on; VPL encodes every user's
        survey = ann[ann["split"] == "survey"].copy()
        texts_of = [test, survey]
        needed = np.unique(
            np.concatenate([f[c].to_numpy() for f in texts_of for c in ("chosen", "rejected")])
        )
        resp = resp.set_index("response_id")
        missing = np.setdiff1d(needed, resp.index.to_numpy())
        if len(missing):
            raise ValueError(
                f"{run.data / 'annotations.parquet'}: test pairs reference {len(missing)} "
                f"response ids absent from responses.parquet (e.g. {missing[:3].tolist()})"
            )
        texts = [format_text(resp.at[r, "prompt"], resp.at[r, "text"]) for r in needed]
        ids, mask = tokenize_texts(tokenizer, texts, max_length)
        self.response_ids = needed
        self.ids, self.mask = ids.astype(np.int64), mask.astype(np.int64)
        row = pd.Index(needed)
        for frame in texts_of:
            frame["chosen_row"] = row.get_indexer(frame["chosen"].to_numpy())
            frame["rejected_row"] = row.get_indexer(frame["rejected"].to_numpy())
        self.seen = test[test["seen"]].reset_index(drop=True)
        self.unseen = test[~test["seen"]].reset_index(drop=True)
        self.survey = survey.reset_index(drop=True)
        unseen_ids = set(self.unseen["user_id"])
        self.unseen_survey = self.survey[self.survey["user_id"].isin(unseen_ids)]


def adapted_table(adapted: pd.DataFrame, source: str) -> UserEmbeddings:
    """Users adapted from labels (``adapt_unseen_users`` rows, or one variant's rows of
    ``adaptation.parquet``) as a :class:`UserEmbeddings` table of unseen, adapted users
    (an ``adaptation.parquet`` written before the rows carried ``seen``/``kind`` still reads)."""
    fill = {"seen": False, "kind": ADAPTED}
    missing = {c: v for c, v in fill.items() if c not in adapted.columns}
    return UserEmbeddings(adapted.assign(**missing), source)


# ------------------------------------------------------------------ scoring
class Scorer:
    """Batched scoring of test pairs with one loaded model."""

    def __init__(self, data: EvalData, batch_size: int, device) -> None:
        import torch

        self.torch = torch
        self.data, self.batch_size, self.device = data, batch_size, device
        self._features: dict[int, Any] = {}
        self.fitted: dict[tuple, np.ndarray] = {}  # fitted_correct, by model, labels, pairs

    def features(self, model):
        """User-free pooled features of every response row (user-head models), once."""
        if id(model) not in self._features:
            d = self.data
            self._features[id(model)] = model.response_features(d.ids, d.mask, 2 * self.batch_size)
        return self._features[id(model)]

    def _forward(self, model, rows_c, rows_r, user_emb=None, user_index=None, user_row=None):
        """Scores of chosen rows ``rows_c`` and rejected rows ``rows_r`` in one forward,
        through ``PersonalRewardModel.score_rows`` (the path serving scores by)."""
        ids = np.concatenate([self.data.ids[rows_c], self.data.ids[rows_r]])
        mask = np.concatenate([self.data.mask[rows_c], self.data.mask[rows_r]])
        s = model.score_rows(ids, mask, user_emb, user_index, user_row=user_row).cpu().numpy()
        return s[: len(rows_c)], s[len(rows_c) :]

    def response_scores(self, model) -> np.ndarray:
        """One score per distinct test response (user-independent models)."""
        n = len(self.data.response_ids)
        out = np.empty(n, dtype=np.float32)
        rows = np.arange(n)
        with self.torch.no_grad():
            for i in range(0, n, 2 * self.batch_size):
                r = rows[i : i + 2 * self.batch_size]
                half = len(r) // 2
                a, b = self._forward(model, r[:half], r[half:])
                out[r[:half]], out[r[half:]] = a, b
        return out

    def pair_scores(
        self, model, pairs: pd.DataFrame, user_emb=None, user_index=None, user_row=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(chosen, rejected)`` scores per row of ``pairs``, ``batch_size`` pairs per
        forward; ``user_emb`` / ``user_index`` / ``user_row`` have one row per pair."""
        chosen = np.zeros(len(pairs), dtype=np.float32)
        rejected = np.zeros(len(pairs), dtype=np.float32)
        c_rows, r_rows = pairs["chosen_row"].to_numpy(), pairs["rejected_row"].to_numpy()
        with self.torch.no_grad():
            for i in range(0, len(pairs), self.batch_size):
                sl = slice(i, i + self.batch_size)
                chosen[sl], rejected[sl] = self._forward(
                    model,
                    c_rows[sl],
                    r_rows[sl],
                    None if user_emb is None else user_emb[sl],
                    None if user_index is None else user_index[sl],
                    None if user_row is None else user_row[sl],
                )
        return chosen, rejected

    def pair_correct(
        self, model, pairs: pd.DataFrame, user_emb=None, user_index=None, user_row=None
    ):
        """``correct`` (chosen scored above rejected) per row of ``pairs``."""
        chosen, rejected = self.pair_scores(model, pairs, user_emb, user_index, user_row)
        return chosen > rejected


def adapted_correct(
    scorer: Scorer,
    copl: PersonalRewardModel,
    art: GNNArtifacts,
    labels: pd.DataFrame,
    adapt_cfg: AdaptConfig,
    where: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The unseen test pairs of the users of ``labels`` and CoPL's ``correct`` on them, each
    user adapted (optimisation-free, as the run's unseen users) from their rows of ``labels``
    (user_id, chosen, rejected). ``where`` names the caller in a lookup error."""
    from copl_ray.graph.adapt import adapt_unseen_users

    table = adapted_table(adapt_unseen_users(art, labels, adapt_cfg, ADAPTED_VARIANT), where)
    pairs = scorer.data.unseen[scorer.data.unseen["user_id"].isin(set(table.ids))]
    e = table.matrix_for(pairs["user_id"].tolist(), where)
    return pairs, scorer.pair_correct(copl, pairs, user_emb=e)


def first_labels(labels: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each user's first ``k`` rows of ``labels`` (the labels curve's ``k`` labels)."""
    return labels.groupby("user_id", sort=False).head(k)
