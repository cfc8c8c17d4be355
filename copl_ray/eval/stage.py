"""Eval stage: seen / unseen accuracy of every trained reward model, CoPL's adaptation
variants, the labels curve (paper Fig. 2) and expert allocation (Fig. 3).

``run_eval_stage(cfg, run)`` writes ``run.eval/results.json``::

    {"models": {name: {"seen": S, "unseen": S}},
     "adaptation": {variant: {"unseen": S}},
     "labels_curve": {"counts": [...], "accuracy": [...]},
     "expert_usage": {"seen": U, "unseen": U, "allocation": {...}},
     "gate_health": {model: H}, "flip_test": F | null,
     "gnn_scorer": {"seen": S, "unseen": S}}

with ``S = {overall, common, controversial, by_group, n_pairs, n_users}`` (see
:mod:`copl_ray.eval.metrics`; null where a split does not exist) and
``expert_allocation.png`` / ``labels_curve.png``. ``H`` (:func:`copl_ray.eval.metrics.
gate_health`) is the routing of the seen users by every model with a MoLE gate (copl,
no_gnn); ``F`` (:func:`flip_test`) whether CoPL uses an unseen user's labels at all;
``gnn_scorer`` (:func:`gnn_scorer`) the GNN alone on the test pairs it can score (S plus
``n_skipped``), the row that shows where the text model stands against the graph.

Users' embeddings: seen users use their trained GNN embedding; unseen users the
optimisation-free adapted one (``kind="adapted"``; no gradient step). ``no_gnn`` has no
representation of unseen users (its table is learnt per seen user), so its unseen entry
is null. Oracle scores each user with the model of the user's true group.

Scoring is batched: user-independent models (uniform, oracle) score each distinct
response once; user-routed models score ``[chosen; rejected]`` of ``eval.batch_size``
pairs per forward, trimmed to the batch's longest sequence (exact: right padding and
causal attention leave earlier positions untouched).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from copl_ray import tracking
from copl_ray.artifacts import RunDir
from copl_ray.config import Config, config_from_dict
from copl_ray.data.tables import format_text
from copl_ray.eval.metrics import accuracy_summary, allocation_matrix, expert_usage, gate_health
from copl_ray.eval.plots import plot_expert_allocation, plot_labels_curve

if TYPE_CHECKING:
    from copl_ray.config import AdaptConfig
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.reward.model import PersonalRewardModel

USER_FREE = ("uniform",)
ADAPTED_VARIANT = "weighted"  # the adaptation behind the unseen users' kind="adapted" rows


# ------------------------------------------------------------------ inputs
class EvalData:
    """Test pairs of every user with group / pair type, and tokenised responses."""

    def __init__(self, run: RunDir, tokenizer, max_length: int) -> None:
        from copl_ray.data.ray_data import tokenize_texts

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
        needed = np.unique(np.concatenate([test["chosen"].to_numpy(), test["rejected"].to_numpy()]))
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
        test["chosen_row"] = row.get_indexer(test["chosen"].to_numpy())
        test["rejected_row"] = row.get_indexer(test["rejected"].to_numpy())
        self.seen = test[test["seen"]].reset_index(drop=True)
        self.unseen = test[~test["seen"]].reset_index(drop=True)


def _embedding_lookup(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        str(u): np.asarray(e, dtype=np.float32)
        for u, e in zip(frame["user_id"], frame["embedding"])
    }


# ------------------------------------------------------------------ scoring
class Scorer:
    """Batched scoring of test pairs with one loaded model."""

    def __init__(self, data: EvalData, batch_size: int, device) -> None:
        import torch

        self.torch = torch
        self.data, self.batch_size, self.device = data, batch_size, device

    def _forward(self, model, rows_c, rows_r, user_emb=None, user_index=None) -> tuple:
        torch = self.torch
        ids = torch.as_tensor(np.concatenate([self.data.ids[rows_c], self.data.ids[rows_r]]))
        mask = torch.as_tensor(np.concatenate([self.data.mask[rows_c], self.data.mask[rows_r]]))
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width].to(self.device), mask[:, :width].to(self.device)
        kw = {}
        if user_emb is not None:
            kw["user_emb"] = torch.as_tensor(user_emb).to(self.device)
        if user_index is not None:
            kw["user_index"] = torch.as_tensor(user_index).to(self.device)
        s = model(ids, mask, **kw).float().cpu().numpy()
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

    def pair_correct(self, model, pairs: pd.DataFrame, user_emb=None, user_index=None):
        """``correct`` per row of ``pairs`` for a user-routed model."""
        out = np.zeros(len(pairs), dtype=bool)
        c_rows, r_rows = pairs["chosen_row"].to_numpy(), pairs["rejected_row"].to_numpy()
        with self.torch.no_grad():
            for i in range(0, len(pairs), self.batch_size):
                sl = slice(i, i + self.batch_size)
                c, r = self._forward(
                    model,
                    c_rows[sl],
                    r_rows[sl],
                    None if user_emb is None else user_emb[sl],
                    None if user_index is None else user_index[sl],
                )
                out[sl] = c > r
        return out


def _summary(pairs: pd.DataFrame, correct: np.ndarray | None) -> dict[str, Any]:
    if correct is None:
        return accuracy_summary(None)
    return accuracy_summary(pairs.assign(correct=correct))


def _embeddings_for(pairs: pd.DataFrame, table: dict[str, np.ndarray], what: str) -> np.ndarray:
    missing = sorted(set(pairs["user_id"]) - set(table))
    if missing:
        raise ValueError(
            f"{what}: no embedding for {len(missing)} users with test pairs (e.g. {missing[:3]})"
        )
    return np.stack([table[u] for u in pairs["user_id"]])


# ------------------------------------------------------------------ gate and user signal
def health_record(usage: dict[str, Any]) -> dict[str, Any]:
    """``gate_health`` of one :func:`expert_usage` record (its ``share``), with its counts."""
    return {**gate_health(usage["share"]), "n_users": usage["n_users"], "n_gates": usage["n_gates"]}


def table_gate_usage(model: PersonalRewardModel, device: str) -> dict[str, Any]:
    """Expert usage of a ``no_gnn`` model's gate over every row of its user table (the seen
    users it was trained on), noise-free."""
    import torch

    with torch.no_grad():
        w = model.gate_weights(user_index=torch.arange(model.n_users, device=device))
    return expert_usage(w.float().cpu().numpy())


def flipped_labels(annotations: pd.DataFrame) -> pd.DataFrame:
    """The same labels with chosen and rejected swapped: a user of the opposite taste."""
    return annotations.assign(
        chosen=annotations["rejected"].to_numpy(), rejected=annotations["chosen"].to_numpy()
    )


def flip_test(
    scorer: Scorer,
    model: PersonalRewardModel,
    art: GNNArtifacts,
    survey: pd.DataFrame,
    unseen: pd.DataFrame,
    prefers: np.ndarray,
    adapt_cfg: AdaptConfig,
) -> dict[str, Any] | None:
    """Does the reward model use the user's labels? Re-adapt each unseen user from their
    labels flipped (:func:`flipped_labels`; the adaptation the unseen embeddings came from,
    optimisation-free) and count their test pairs whose predicted preference flips.

    ``prefers``: the model's ``chosen > rejected`` per row of ``unseen`` with the user's
    own adaptation. A model that ignores the user flips nothing; one that reads only the
    user flips every pair. Returns ``{rate, common, controversial, by_group, n_pairs,
    n_users, variant, seconds}`` (the rates split as in :func:`accuracy_summary`), None
    without labels to flip. Users without adaptation labels are left out (nothing to flip).
    Cost: one adaptation pass and one scoring pass over the unseen test pairs (one point of
    the labels curve).
    """
    from copl_ray.graph.adapt import adapt_unseen_users

    t0 = time.time()
    if not len(survey):
        return None
    adapted = adapt_unseen_users(art, flipped_labels(survey), adapt_cfg, variant=ADAPTED_VARIANT)
    table = _embedding_lookup(adapted)
    keep = unseen["user_id"].isin(set(table)).to_numpy()
    pairs = unseen[keep]
    e = _embeddings_for(pairs, table, "flip_test")
    flips = scorer.pair_correct(model, pairs, user_emb=e) != prefers[keep]
    s = accuracy_summary(pairs.assign(correct=flips))
    seconds = round(time.time() - t0, 2)
    return {"rate": s.pop("overall"), **s, "variant": ADAPTED_VARIANT, "seconds": seconds}


def gnn_scorer(
    art: GNNArtifacts,
    data: EvalData,
    tables: dict[str, dict[str, np.ndarray]],
) -> dict[str, Any]:
    """The GNN alone as a scorer, ``s_u(x) = <e_u, e_x>``, on the test pairs it can score.

    Only pairs whose two responses are nodes of the graph (somebody labelled them in a
    survey) have a GNN score: a response the graph never saw has no embedding, where a
    reward model reads its text. ``n_pairs`` of each split counts the pairs scored; the
    rest are ``n_skipped``. Seen users use their trained embedding, unseen users the
    adapted one (``tables[split]``), exactly what the reward models are routed with.
    """
    import torch

    from copl_ray.graph.bipartite import PairIndex
    from copl_ray.graph.model import score_margin

    out: dict[str, Any] = {}
    for split, pairs in (("seen", data.seen), ("unseen", data.unseen)):
        table = tables[split]
        a = art.response_index(pairs["chosen"].to_numpy())
        b = art.response_index(pairs["rejected"].to_numpy())
        ok = (a >= 0) & (b >= 0) & pairs["user_id"].isin(set(table)).to_numpy()
        scored = pairs[ok]
        correct = None
        if len(scored):
            users = np.stack([table[u] for u in scored["user_id"]])
            index = PairIndex(
                torch.arange(len(scored)), torch.from_numpy(a[ok]), torch.from_numpy(b[ok])
            )
            margin = score_margin(torch.from_numpy(users), art.response_embeddings, index)
            correct = (margin > 0).numpy()
        out[split] = {**_summary(scored, correct), "n_skipped": int((~ok).sum())}
    return out


def collapse_warnings(health: dict[str, dict[str, Any]]) -> list[str]:
    """One console line per model whose gate sends (almost) every user to one expert."""
    return [
        f"warning: {name}: gate collapsed, expert {h['top_expert']} takes "
        f"{100 * h['top_share']:.1f}% of {h['n_users']} seen users (routing entropy "
        f"{h['entropy']:.2f}); the model is one shared adapter, not personalised"
        for name, h in health.items()
        if h.get("collapsed")
    ]


# ------------------------------------------------------------------ the stage
def evaluate(cfg: Config, run: RunDir, device: str = "cpu") -> dict[str, Any]:
    """All metrics of the results contract (pure computation; no Ray)."""
    import torch

    from copl_ray.graph.adapt import adapt_unseen_users
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.reward.backbone import load_tokenizer
    from copl_ray.reward.model import PersonalRewardModel

    t0 = time.time()
    tokenizer = load_tokenizer(run.root / "tokenizer")
    tokenizer.padding_side = "right"
    data = EvalData(run, tokenizer, cfg.reward.max_length)
    scorer = Scorer(data, cfg.eval.batch_size, device)
    emb = pq.read_table(run.gnn / "user_embeddings.parquet").to_pandas()
    seen_emb = _embedding_lookup(emb[emb["seen"]])
    unseen_emb = _embedding_lookup(emb[(~emb["seen"]) & (emb["kind"] == "adapted")])

    def load(path: Path):
        if not (path / "reward_config.json").exists():
            raise FileNotFoundError(f"{path}: no trained reward model (run the reward stage)")
        return PersonalRewardModel.load(path, device=device).eval()

    models: dict[str, Any] = {}
    notes: list[str] = []
    health: dict[str, dict[str, Any]] = {}
    copl, copl_prefers = None, None
    for name in cfg.reward.models:
        if name in USER_FREE:
            s = scorer.response_scores(load(run.reward(name)))
            res = {}
            for split, pairs in (("seen", data.seen), ("unseen", data.unseen)):
                correct = s[pairs["chosen_row"].to_numpy()] > s[pairs["rejected_row"].to_numpy()]
                res[split] = _summary(pairs, correct)
            models[name] = res
        elif name == "oracle":
            groups = json.loads((run.reward("oracle") / "groups.json").read_text())
            scores = {g: scorer.response_scores(load(run.reward("oracle") / g)) for g in groups}
            res = {}
            for split, pairs in (("seen", data.seen), ("unseen", data.unseen)):
                correct = np.zeros(len(pairs), dtype=bool)
                for g, s in scores.items():
                    sel = (pairs["group"] == g).to_numpy()
                    correct[sel] = (
                        s[pairs.loc[sel, "chosen_row"].to_numpy()]
                        > s[pairs.loc[sel, "rejected_row"].to_numpy()]
                    )
                known = pairs["group"].isin(list(scores)).to_numpy()
                res[split] = _summary(pairs[known], correct[known])
            models[name] = res
        elif name == "no_gnn":
            model = load(run.reward(name))
            ids = json.loads((run.reward(name) / "user_ids.json").read_text())
            index = pd.Index(ids).get_indexer(data.seen["user_id"])
            ok = index >= 0
            seen = data.seen[ok]
            correct = scorer.pair_correct(model, seen, user_index=index[ok])
            models[name] = {"seen": _summary(seen, correct), "unseen": _summary(data.unseen, None)}
            if model.mole.gate is not None:
                health["no_gnn"] = health_record(table_gate_usage(model, device))
            notes.append("no_gnn: unseen users have no row in the free embedding table (null)")
        else:  # copl, no_mole: routed by the GNN embedding
            model = load(run.reward(name))
            res = {}
            for split, pairs, table in (
                ("seen", data.seen, seen_emb),
                ("unseen", data.unseen, unseen_emb),
            ):
                e = _embeddings_for(pairs, table, f"{name}/{split}") if len(pairs) else None
                correct = scorer.pair_correct(model, pairs, user_emb=e) if len(pairs) else None
                res[split] = _summary(pairs, correct)
                if name == "copl" and split == "unseen":
                    copl_prefers = correct
            models[name] = res
            if name == "copl":
                copl = model

    results: dict[str, Any] = {"models": models, "adaptation": {}, "notes": notes}
    results["flip_test"] = None
    art = GNNArtifacts.load(run.gnn)
    results["gnn_scorer"] = gnn_scorer(art, data, {"seen": seen_emb, "unseen": unseen_emb})
    if copl is not None and len(data.unseen):
        # ---- adaptation variants (stage-1 output) on unseen users
        adapt_file = run.gnn / "adaptation.parquet"
        if adapt_file.exists():
            adaptation = pq.read_table(adapt_file).to_pandas()
            for variant, frame in adaptation.groupby("variant", sort=False):
                table = _embedding_lookup(frame)
                e = _embeddings_for(data.unseen, table, f"adaptation/{variant}")
                correct = scorer.pair_correct(copl, data.unseen, user_emb=e)
                results["adaptation"][str(variant)] = {"unseen": _summary(data.unseen, correct)}
        # ---- labels curve: re-adapt with each unseen user's first k survey labels
        survey = data.annotations[
            (data.annotations["split"] == "survey")
            & data.annotations["user_id"].isin(set(data.unseen["user_id"]))
        ]
        curve = []
        for k in cfg.eval.label_counts:
            first_k = survey.groupby("user_id", sort=False).head(k)
            adapted = adapt_unseen_users(art, first_k, cfg.adapt, variant=ADAPTED_VARIANT)
            table = _embedding_lookup(adapted)
            pairs = data.unseen[data.unseen["user_id"].isin(set(table))]
            e = _embeddings_for(pairs, table, f"labels_curve/k={k}")
            curve.append(float(scorer.pair_correct(copl, pairs, user_emb=e).mean()))
        results["labels_curve"] = {"counts": list(cfg.eval.label_counts), "accuracy": curve}
        # ---- user signal used: the same users with their labels flipped
        results["flip_test"] = flip_test(
            scorer, copl, art, survey, data.unseen, copl_prefers, cfg.adapt
        )
    else:
        results["labels_curve"] = {"counts": list(cfg.eval.label_counts), "accuracy": []}

    # ---- expert allocation / usage (CoPL gate, no noise)
    results["expert_usage"] = {}
    if copl is not None and copl.mole.gate is not None:
        usage = {}
        for split, table in (("seen", seen_emb), ("unseen", unseen_emb)):
            ids = [
                u
                for u in data.users.loc[data.users["seen"] == (split == "seen"), "user_id"]
                if u in table
            ]
            if not ids:
                continue
            with torch.no_grad():
                w = copl.gate_weights(torch.as_tensor(np.stack([table[u] for u in ids])).to(device))
            w = w.float().cpu().numpy()
            usage[split] = expert_usage(w)
            if split == "seen":
                health = {"copl": health_record(usage[split]), **health}
            if split == "seen":
                group_of = dict(zip(data.users["user_id"], data.users["group"].fillna("")))
                groups, matrix = allocation_matrix(w, [group_of[u] for u in ids])
                layers = list(copl.mole.module_names) if w.ndim == 3 else None
                usage["allocation"] = {
                    "groups": groups,
                    "matrix": matrix.tolist(),
                    "layers": layers,
                }
                plot_expert_allocation(groups, matrix, run.eval / "expert_allocation.png", layers)
        results["expert_usage"] = usage
    results["gate_health"] = health
    if results["labels_curve"]["accuracy"]:
        ref = {f"{m} (unseen)": models[m]["unseen"]["overall"] for m in models if m != "copl"}
        plot_labels_curve(
            results["labels_curve"]["counts"],
            results["labels_curve"]["accuracy"],
            run.eval / "labels_curve.png",
            ref,
        )
    results["seconds"] = round(time.time() - t0, 2)
    return results


def _evaluate_remote(cfg_dict: dict, root: str, device: str) -> dict[str, Any]:
    return evaluate(config_from_dict(cfg_dict), RunDir(root), device)


def run_eval_stage(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Evaluate and write ``run.eval/results.json``; returns the headline accuracies.

    On GPU presets the scoring runs in a Ray task holding one GPU (same code, other
    placement); on CPU it runs in the calling process.
    """
    run.eval.mkdir(parents=True, exist_ok=True)
    if cfg.train.use_gpu:
        import ray

        task = ray.remote(num_gpus=1, num_cpus=1)(_evaluate_remote)
        results = ray.get(task.remote(cfg.to_dict(), str(run.root.resolve()), "cuda"))
    else:
        results = evaluate(cfg, run)
    (run.eval / "results.json").write_text(json.dumps(results, indent=2))
    tracking.log_eval(cfg, run.root, results)
    from copl_ray.console import log

    for line in collapse_warnings(results["gate_health"]):
        log(line)
    headline = {
        f"{m}/{split}": r[split]["overall"] for m, r in results["models"].items() for split in r
    }
    headline["seconds"] = results["seconds"]
    return headline
