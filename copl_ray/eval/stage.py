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
from copl_ray.console import log
from copl_ray.eval.metrics import accuracy_summary, allocation_matrix, expert_usage, gate_health
from copl_ray.eval.plots import plot_expert_allocation, plot_labels_curve, plot_onboarding
from copl_ray.eval.scoring import (
    ADAPTED_VARIANT,
    EvalData,
    Scorer,
    adapted_correct,
    adapted_table,
    first_labels,
)
from copl_ray.graph.users import UserEmbeddings
from copl_ray.variants import COPL, Variant, variant

if TYPE_CHECKING:
    from copl_ray.config import AdaptConfig
    from copl_ray.config import EvalConfig as FitConfig
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.reward.model import PersonalRewardModel


def _summary(pairs: pd.DataFrame, correct: np.ndarray | None) -> dict[str, Any]:
    if correct is None:
        return accuracy_summary(None)
    return accuracy_summary(pairs.assign(correct=correct))


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
    t0 = time.time()
    if not len(survey):
        return None
    pairs, correct = adapted_correct(scorer, model, art, flipped_labels(survey), adapt_cfg, "flip")
    keep = unseen["user_id"].isin(set(pairs["user_id"])).to_numpy()
    s = accuracy_summary(pairs.assign(correct=correct != prefers[keep]))
    seconds = round(time.time() - t0, 2)
    return {"rate": s.pop("overall"), **s, "variant": ADAPTED_VARIANT, "seconds": seconds}


def gnn_scorer(
    art: GNNArtifacts,
    data: EvalData,
    tables: dict[str, UserEmbeddings],
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
        ok = (a >= 0) & (b >= 0) & pairs["user_id"].isin(set(table.ids)).to_numpy()
        scored = pairs[ok]
        correct = None
        if len(scored):
            users = table.matrix_for(scored["user_id"].tolist(), f"gnn_scorer/{split}")
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
def _load_model(path: Path, device: str) -> PersonalRewardModel:
    from copl_ray.reward.model import PersonalRewardModel

    if not (path / "reward_config.json").exists():
        raise FileNotFoundError(f"{path}: no trained reward model (run the reward stage)")
    return PersonalRewardModel.load(path, device=device).eval()


def _splits(data: EvalData) -> tuple[tuple[str, pd.DataFrame], ...]:
    return (("seen", data.seen), ("unseen", data.unseen))


def score_shared(scorer: Scorer, model: PersonalRewardModel) -> dict[str, Any]:
    """A user-free model: one score per distinct response, the same for every user."""
    s = scorer.response_scores(model)
    res = {}
    for split, pairs in _splits(scorer.data):
        correct = s[pairs["chosen_row"].to_numpy()] > s[pairs["rejected_row"].to_numpy()]
        res[split] = _summary(pairs, correct)
    return res


def score_per_group(scorer: Scorer, model_dir: Path, device: str) -> dict[str, Any]:
    """One user-free model per known group (``<model_dir>/<group>/``); each user is scored
    by the model of their group, users of no known group are left out."""
    groups = json.loads((model_dir / "groups.json").read_text())
    scores = {g: scorer.response_scores(_load_model(model_dir / g, device)) for g in groups}
    res = {}
    for split, pairs in _splits(scorer.data):
        correct = np.zeros(len(pairs), dtype=bool)
        for g, s in scores.items():
            sel = (pairs["group"] == g).to_numpy()
            correct[sel] = (
                s[pairs.loc[sel, "chosen_row"].to_numpy()]
                > s[pairs.loc[sel, "rejected_row"].to_numpy()]
            )
        known = pairs["group"].isin(list(scores)).to_numpy()
        res[split] = _summary(pairs[known], correct[known])
    return res


def score_table(
    scorer: Scorer, model: PersonalRewardModel, model_dir: Path, fit: FitConfig | None
) -> dict[str, Any]:
    """A model with a free row per seen user (``user_ids.json`` gives the rows): the seen
    users' pairs; unseen users' rows fitted on their survey labels (``fit``, the variant's
    ``unseen == "fit"``) or, without a fit, no row (null)."""
    data = scorer.data
    ids = json.loads((model_dir / "user_ids.json").read_text())
    index = pd.Index(ids).get_indexer(data.seen["user_id"])
    ok = index >= 0
    seen = data.seen[ok]
    correct = scorer.pair_correct(model, seen, user_index=index[ok])
    unseen = None
    if fit is not None and len(data.unseen):
        unseen = fitted_correct(scorer, model, data.unseen_survey, data.unseen, fit)
    return {"seen": _summary(seen, correct), "unseen": _summary(data.unseen, unseen)}


def fitted_correct(
    scorer: Scorer,
    model: PersonalRewardModel,
    labels: pd.DataFrame,
    pairs: pd.DataFrame,
    fit: FitConfig,
) -> np.ndarray:
    """``correct`` per row of ``pairs`` with each user's row fitted on their ``labels``
    (copl_ray/reward/fit_users.py; a user without labels keeps the mean seen row)."""
    from copl_ray.reward.fit_users import fit_user_rows

    users = pd.Index(pd.unique(pairs["user_id"]))
    labels = labels[labels["user_id"].isin(users)]
    key = (id(model), tuple(labels.index), tuple(pairs.index))
    if key in scorer.fitted:  # the curve's largest k is often every label: fitted already
        return scorer.fitted[key]
    d = scorer.data
    c_rows, r_rows = labels["chosen_row"].to_numpy(), labels["rejected_row"].to_numpy()
    rows = fit_user_rows(
        model,
        d.ids[c_rows],
        d.mask[c_rows],
        d.ids[r_rows],
        d.mask[r_rows],
        users.get_indexer(labels["user_id"]),
        len(users),
        fit.fit_steps,
        fit.fit_lr,
        fit.fit_l2,
        scorer.batch_size,
        features=_row_features(scorer, model, c_rows, r_rows),
    )
    user_row = rows[users.get_indexer(pairs["user_id"])].astype(np.float32)
    scorer.fitted[key] = scorer.pair_correct(model, pairs, user_row=user_row)
    return scorer.fitted[key]


def _row_features(scorer: Scorer, model, c_rows: np.ndarray, r_rows: np.ndarray):
    """The scorer's pooled features of the chosen and rejected rows (user-head models; None
    for a model whose user enters before pooling)."""
    if not model.user_at_head:
        return None
    feats = scorer.features(model)
    return feats[scorer.torch.from_numpy(c_rows)], feats[scorer.torch.from_numpy(r_rows)]


def user_contexts(scorer: Scorer, model, labels: pd.DataFrame, users: pd.Index, c: int):
    """VPL contexts ``[len(users), C, 2H + 1]`` of ``users`` from their ``labels``."""
    from copl_ray.reward.baselines import context_tensor

    labels = labels[labels["user_id"].isin(users)]
    return context_tensor(
        scorer.features(model),
        labels["chosen_row"].to_numpy(),
        labels["rejected_row"].to_numpy(),
        users.get_indexer(labels["user_id"]),
        len(users),
        c,
    )


def encoded_correct(
    scorer: Scorer, model, labels: pd.DataFrame, pairs: pd.DataFrame, cfg: Config
) -> np.ndarray:
    """``correct`` per row of ``pairs`` with each user encoded from their ``labels``
    (VPL; no optimisation)."""
    users = pd.Index(pd.unique(pairs["user_id"]))
    ctx = user_contexts(scorer, model, labels, users, cfg.reward.vpl_context)
    return scorer.pair_correct(model, pairs, user_emb=ctx[users.get_indexer(pairs["user_id"])])


def score_context(scorer: Scorer, model, cfg: Config) -> dict[str, Any]:
    """VPL: seen and unseen users encoded from their survey labels, and the share of
    latent units the seen users use (copl_ray/reward/baselines.py active_units)."""
    from copl_ray.reward.baselines import active_units

    d = scorer.data
    unseen = (
        encoded_correct(scorer, model, d.unseen_survey, d.unseen, cfg) if len(d.unseen) else None
    )
    users = pd.Index(pd.unique(d.seen["user_id"]))
    ctx = user_contexts(scorer, model, d.survey, users, cfg.reward.vpl_context)
    with scorer.torch.no_grad():
        mu = model.head.posterior(ctx)[0].cpu().numpy()
    return {
        "seen": _summary(d.seen, encoded_correct(scorer, model, d.survey, d.seen, cfg)),
        "unseen": _summary(d.unseen, unseen),
        "active_units": active_units(mu),
    }


def answered_correct(
    scorer: Scorer, model, v: Variant, labels: pd.DataFrame, pairs: pd.DataFrame, cfg: Config
) -> np.ndarray:
    """``correct`` per row of ``pairs``, each user answered from their ``labels`` the way
    the variant takes a new user: its row fitted, or its labels encoded."""
    if v.unseen == "fit":
        return fitted_correct(scorer, model, labels, pairs, cfg.eval)
    return encoded_correct(scorer, model, labels, pairs, cfg)


def score_graph(
    scorer: Scorer, model: PersonalRewardModel, tables: dict[str, UserEmbeddings], name: str
) -> tuple[dict[str, Any], np.ndarray | None]:
    """A model routed by the GNN user embedding: seen users by their trained row, unseen
    users by their adapted one. Also returns the unseen pairs' ``chosen > rejected``."""
    res, unseen_correct = {}, None
    for split, pairs in _splits(scorer.data):
        correct = None
        if len(pairs):
            e = tables[split].matrix_for(pairs["user_id"].tolist(), f"{name}/{split}")
            correct = scorer.pair_correct(model, pairs, user_emb=e)
        res[split] = _summary(pairs, correct)
        unseen_correct = correct
    return res, unseen_correct


def score_models(
    cfg: Config, run: RunDir, scorer: Scorer, tables: dict[str, UserEmbeddings], device: str
) -> dict[str, Any]:
    """Seen / unseen accuracy of every model of ``reward.models``, dispatched on what the
    variant takes for a user (copl_ray/variants.py); the CoPL model is kept for the
    adaptation analyses (``adapt_model``, with its unseen ``prefers``)."""
    out: dict[str, Any] = {
        "models": {},
        "notes": [],
        "health": {},
        "adapt_model": None,
        "prefers": None,
        "answering": {},  # baselines that take a new user from labels: their curves
    }
    for name in cfg.reward.models:
        t0 = time.time()
        _score_model(cfg, run, scorer, tables, device, name, out)
        log(f"eval: {name} scored in {time.time() - t0:.1f}s")
    return out


def _score_model(
    cfg: Config,
    run: RunDir,
    scorer: Scorer,
    tables: dict[str, UserEmbeddings],
    device: str,
    name: str,
    out: dict[str, Any],
) -> None:
    """One model's seen / unseen records into ``out`` (see :func:`score_models`)."""
    v, path = variant(name), run.reward(name)
    if v.per_group:
        out["models"][name] = score_per_group(scorer, path, device)
        return
    model = _load_model(path, device)
    if v.user_input == "none":
        out["models"][name] = score_shared(scorer, model)
    elif v.user_input == "table":
        fit = cfg.eval if v.unseen == "fit" else None
        out["models"][name] = score_table(scorer, model, path, fit)
        if model.mole.gate is not None:
            out["health"][name] = health_record(table_gate_usage(model, device))
        if fit is None:
            out["notes"].append(
                f"{name}: unseen users have no row in the free embedding table (null)"
            )
    elif v.user_input == "context":
        out["models"][name] = score_context(scorer, model, cfg)
    else:
        out["models"][name], prefers = score_graph(scorer, model, tables, name)
        if name == COPL:
            out["adapt_model"], out["prefers"] = model, prefers
    if v.adapts and v.unseen != "adapt":  # fitted or encoded from labels: a curve of its own
        out["answering"][name] = (v, model)


def adaptation_variants(scorer: Scorer, copl: PersonalRewardModel, gnn_dir: Path) -> dict[str, Any]:
    """CoPL's unseen accuracy with each adaptation variant of the GNN stage
    (``adaptation.parquet``; {} without it)."""
    adapt_file = gnn_dir / "adaptation.parquet"
    out: dict[str, Any] = {}
    if not adapt_file.exists():
        return out
    unseen = scorer.data.unseen
    for name, frame in pq.read_table(adapt_file).to_pandas().groupby("variant", sort=False):
        table = adapted_table(frame, f"{adapt_file} (variant {name})")
        e = table.matrix_for(unseen["user_id"].tolist(), f"adaptation/{name}")
        correct = scorer.pair_correct(copl, unseen, user_emb=e)
        out[str(name)] = {"unseen": _summary(unseen, correct)}
    return out


def answered_curve(scorer: Scorer, model, v: Variant, cfg: Config) -> list[float]:
    """A baseline's unseen accuracy with each unseen user answered (row fitted or labels
    encoded) from their first ``k`` survey labels, for every ``k`` of
    ``eval.label_counts`` (users with at least one label, as in CoPL's curve)."""
    survey, unseen = scorer.data.unseen_survey, scorer.data.unseen
    curve = []
    for k in cfg.eval.label_counts:
        first_k = first_labels(survey, k)
        pairs = unseen[unseen["user_id"].isin(set(first_k["user_id"]))]
        curve.append(float(answered_correct(scorer, model, v, first_k, pairs, cfg).mean()))
    return curve


def labels_curve(
    scorer: Scorer, copl: PersonalRewardModel, art: GNNArtifacts, survey: pd.DataFrame, cfg: Config
) -> dict[str, Any]:
    """CoPL's unseen accuracy with each unseen user re-adapted from their first ``k``
    survey labels, for every ``k`` of ``eval.label_counts`` (paper Fig. 2)."""
    curve = []
    for k in cfg.eval.label_counts:
        first_k = first_labels(survey, k)
        _, correct = adapted_correct(scorer, copl, art, first_k, cfg.adapt, f"labels_curve/k={k}")
        curve.append(float(correct.mean()))
    return {"counts": list(cfg.eval.label_counts), "accuracy": curve}


def copl_expert_usage(
    copl: PersonalRewardModel,
    data: EvalData,
    tables: dict[str, UserEmbeddings],
    out_dir: Path,
    device: str,
) -> dict[str, Any]:
    """Noise-free expert weights of the seen and unseen users under CoPL's gate, and the
    seen users' group × expert allocation (``expert_allocation.png``, paper Fig. 3)."""
    import torch

    usage: dict[str, Any] = {}
    for split, table in tables.items():
        in_split = data.users.loc[data.users["seen"] == (split == "seen"), "user_id"]
        ids = [u for u in in_split if u in table]
        if not ids:
            continue
        with torch.no_grad():
            w = copl.gate_weights(torch.as_tensor(table.matrix_for(ids, split)).to(device))
        w = w.float().cpu().numpy()
        usage[split] = expert_usage(w)
        if split == "seen":
            group_of = dict(zip(data.users["user_id"], data.users["group"].fillna("")))
            groups, matrix = allocation_matrix(w, [group_of[u] for u in ids])
            layers = list(copl.mole.module_names) if w.ndim == 3 else None
            usage["allocation"] = {"groups": groups, "matrix": matrix.tolist(), "layers": layers}
            plot_expert_allocation(groups, matrix, out_dir / "expert_allocation.png", layers)
    return usage


def _adaptation_analyses(
    cfg: Config, run: RunDir, scorer: Scorer, scored: dict[str, Any], art: GNNArtifacts
) -> dict[str, Any]:
    """Adaptation variants, labels curve and flip test of the CoPL model (empty without
    it or without unseen test pairs)."""
    copl, data = scored["adapt_model"], scorer.data
    if copl is None or not len(data.unseen):
        empty = {"counts": list(cfg.eval.label_counts), "accuracy": []}
        return {"adaptation": {}, "labels_curve": empty, "flip_test": None}
    survey = data.unseen_survey
    return {
        "adaptation": adaptation_variants(scorer, copl, run.gnn),
        "labels_curve": labels_curve(scorer, copl, art, survey, cfg),
        "flip_test": flip_test(
            scorer, copl, art, survey, data.unseen, scored["prefers"], cfg.adapt
        ),
    }


def onboarding_record(
    cfg: Config, run: RunDir, scorer: Scorer, copl, art: GNNArtifacts
) -> dict[str, Any] | None:
    """Simulated active onboarding of the unseen users with CoPL (copl_ray/eval/onboarding.py)
    and its figure ``onboarding.png``; None without a CoPL model or unseen users."""
    from copl_ray.eval.onboarding import simulate_onboarding

    if copl is None:
        return None
    record = simulate_onboarding(scorer, copl, art, run, cfg)
    if record is not None:
        curves = {s: c["accuracy"] for s, c in record["selectors"].items()}
        plot_onboarding(
            record["selectors"][next(iter(curves))]["answers"], curves, run.eval / "onboarding.png"
        )
    return record


def evaluate(cfg: Config, run: RunDir, device: str = "cpu") -> dict[str, Any]:
    """All metrics of the results contract (pure computation; no Ray)."""
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.reward.backbone import load_tokenizer

    t0 = time.time()
    tokenizer = load_tokenizer(run.root / "tokenizer")
    tokenizer.padding_side = "right"
    data = EvalData(run, tokenizer, cfg.reward.max_length)
    scorer = Scorer(data, cfg.eval.batch_size, device)
    users = UserEmbeddings.read(run.gnn)
    tables = {"seen": users.seen(), "unseen": users.adapted_unseen()}
    scored = score_models(cfg, run, scorer, tables, device)
    models, copl, health = scored["models"], scored["adapt_model"], scored["health"]
    results: dict[str, Any] = {"models": models, "adaptation": {}, "notes": scored["notes"]}
    results["flip_test"] = None
    art = GNNArtifacts.load(run.gnn)
    results["gnn_scorer"] = gnn_scorer(art, data, tables)
    results.update(_adaptation_analyses(cfg, run, scorer, scored, art))
    results["onboarding"] = onboarding_record(cfg, run, scorer, copl, art)
    copl_curve = results["labels_curve"]["accuracy"]
    if scored["answering"] and len(data.unseen):  # one curve per model that adapts
        curves = {
            m: answered_curve(scorer, model, v, cfg)
            for m, (v, model) in scored["answering"].items()
        }
        results["labels_curve"]["accuracy"] = {
            **({COPL: copl_curve} if copl_curve else {}),
            **curves,
        }
    results["expert_usage"] = {}
    if copl is not None and copl.mole.gate is not None:
        results["expert_usage"] = copl_expert_usage(copl, data, tables, run.eval, device)
        if "seen" in results["expert_usage"]:
            health = {COPL: health_record(results["expert_usage"]["seen"]), **health}
    results["gate_health"] = health
    if copl_curve:  # the paper's Fig. 2 (every model's curve: the report's figure)
        ref = {f"{m} (unseen)": models[m]["unseen"]["overall"] for m in models if m != COPL}
        plot_labels_curve(
            results["labels_curve"]["counts"], copl_curve, run.eval / "labels_curve.png", ref
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
    for line in collapse_warnings(results["gate_health"]):
        log(line)
    headline = {
        f"{m}/{split}": r[split]["overall"]
        for m, r in results["models"].items()
        for split in ("seen", "unseen")
    }
    headline["seconds"] = results["seconds"]
    return headline
