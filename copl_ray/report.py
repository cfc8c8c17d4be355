"""The run report: ``report.json`` (for tools), ``report.md`` + PNGs (for people).

``build_report(cfg, run)`` reads whatever the run directory holds (any stage may be
missing: its section is then null/empty) and writes ``run.report_json``,
``run.report_md``, ``report_labels_curve.png`` and ``report_accuracy.png``.

report.json schema (``schema_version`` 1; stable: fields are only ever added)
-----------------------------------------------------------------------------
All accuracies are fractions in [0, 1]; ``null`` means "does not exist / not run".

- ``schema_version``: int (1)
- ``name``: config name; ``run_dir``: the run directory (local path or URI)
- ``created``: ISO-8601 UTC time the report was written
- ``data``: null | {``source``, ``n_users_seen``, ``n_users_unseen``, ``n_responses``,
  ``n_pairs``, ``n_pool_pairs``, ``n_annotations``: {split: int},
  ``labels_per_user``: {min, median, max}, ``controversial_share``,
  ``controversial_definition``: str|null (the rule that made a pair controversial), ``groups``: [str],
  ``drops``: {reason: int}, ``n_dropped``: int (sum of drops), ``notes``: [str]}
- ``gnn``: {``heldout_accuracy``, ``val_accuracy``, ``test_accuracy_in_graph``,
  ``truth_accuracy`` (vs the true group labels, synthetic data), ``best_epoch``,
  ``epochs``, ``ari``, ``seconds``} (each null when unknown)
- ``models``: {name: {``seen``: S, ``unseen``: S, ``training``: {scalar metrics of
  reward/<name>/metrics.json, ``seconds`` its training time}, and for VPL
  ``active_units``: {``share``, ``active``, ``units``, ``n_users``}}} where
  S = {``overall``, ``common``, ``controversial``, ``by_group``: {group: acc},
  ``n_pairs``: int|null, ``n_users``: int|null}
- ``adaptation``: {variant: {``unseen``: S, ``gnn_accuracy``: acc|null,
  ``gnn_truth_accuracy``: acc|null}}
- ``labels_curve``: null | {``counts``: [int], ``accuracy``: [acc] (CoPL) or {model:
  [acc]} (every model that adapts: CoPL and the baselines that fit or encode a user)}
  (unseen-user accuracy when adapted from that many labels, Fig. 2)
- ``expert_usage``: the eval stage's expert-allocation record, verbatim (Fig. 3)
- ``gate_health``: {model: {``share``: [users per expert, top-1, seen users],
  ``entropy``: H(share)/log M in [0, 1], ``top_expert``, ``top_share``, ``collapsed``: bool
  (``top_share`` ≥ ``collapse_share``, 0.95), ``n_users``, ``n_gates``}} for every model
  with a MoLE gate (copl, no_gnn); {} when none was evaluated
- ``flip_test``: null | {``rate``: share of unseen users' test pairs whose predicted
  preference (CoPL) flips when the user is re-adapted from their labels flipped,
  ``common``, ``controversial``, ``by_group`` (the same rate on those pairs), ``n_pairs``,
  ``n_users``, ``variant``, ``seconds``} (is the user signal used at all?)
- ``gnn_scorer``: null | {``seen``: S, ``unseen``: S} with ``n_skipped`` in each S: the
  GNN alone (``<e_u, e_x>``) on the test pairs whose two responses are graph nodes (the
  reward models' users and embeddings; pairs with an unseen response are skipped)
- ``onboarding``: null | {``selectors``: {name: {``answers``: [int], ``accuracy``: [acc],
  ``draws``, ``selection_ms_p50``}}, ``answers_to_match_random16``: {name: int|null},
  ``reference_answers`` (16), ``random_reference_accuracy``, ``truth`` ("group": synthetic
  users answer as their group prefers; "own": real users' own survey labels),
  ``n_users``, ``n_pairs``, ``n_pool``, ``candidates_per_user``, ``seconds``}: CoPL's
  unseen accuracy after that many answers to the questions each selector chose
  (copl_ray/eval/onboarding.py)
- ``paper``: null unless ``data.source == "ufp"``; then {``column``: e.g. "UF-P-2-ALL",
  ``backbone``, ``seen``: {model: acc}, ``unseen``: {model: acc}, ``common``: {model: acc},
  ``controversial``: {model: acc}} (the paper's, docs/method.md §6, converted from % to fractions)
- ``timings``: {``<stage>_s``: float|null for data, gnn, reward, eval; ``total_s``}
  (wall seconds of the run that produced each artifact)
- ``executed``: [stages executed by the invocation that wrote this report]
- ``figures``: {``tsne``, ``expert_allocation``, ``onboarding``, ``labels_curve``, ``accuracy``}: paths
  relative to the run directory, null when absent
- ``config``: the resolved config (same tree as config.yaml)
- ``versions``: {package: version} (python, copl-ray, ray, torch, ...)
"""

from __future__ import annotations

import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from copl_ray.artifacts import STAGES, RunDir
from copl_ray.config import Config
from copl_ray.paper import paper_numbers

SCHEMA_VERSION = 1
SPLIT_KEYS = ("overall", "common", "controversial", "by_group", "n_pairs", "n_users")
PACKAGES = (
    "copl-ray",
    "ray",
    "torch",
    "torch-geometric",
    "transformers",
    "peft",
    "deepspeed",
    "datasets",
    "pyarrow",
    "numpy",
    "scikit-learn",
)


class ReportError(ValueError):
    """An artifact does not follow its contract; the message names file and key."""


# ---------------------------------------------------------------------- reading
def _load_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: invalid JSON ({e})") from None


def _acc(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ReportError(
            f"{where}: expected an accuracy in [0, 1] or null, got {value!r}"
        ) from None
    if math.isnan(v):
        return None
    if not 0.0 <= v <= 1.0:
        raise ReportError(f"{where}: accuracy {v} outside [0, 1]")
    return v


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def normalize_split(s: dict | None, where: str) -> dict[str, Any]:
    """One S record with every key present, accuracies checked to lie in [0, 1]."""
    s = s or {}
    return {
        "overall": _acc(s.get("overall"), f"{where}.overall"),
        "common": _acc(s.get("common"), f"{where}.common"),
        "controversial": _acc(s.get("controversial"), f"{where}.controversial"),
        "by_group": {
            str(g): _acc(a, f"{where}.by_group.{g}") for g, a in (s.get("by_group") or {}).items()
        },
        "n_pairs": _count(s.get("n_pairs")),
        "n_users": _count(s.get("n_users")),
    }


def _scalars(d: dict | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool))}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _flip_test(f: dict | None, where: str) -> dict[str, Any] | None:
    """The eval stage's flip test with its rates checked to lie in [0, 1]."""
    if f is None:
        return None
    out = dict(f)
    for key in ("rate", "common", "controversial"):
        out[key] = _acc(f.get(key), f"{where}.{key}")
    return out


def _gnn_scorer(g: dict | None, where: str) -> dict[str, Any] | None:
    """The eval stage's GNN-only row with its accuracies checked."""
    if g is None:
        return None
    return {
        split: {
            **normalize_split(g.get(split), f"{where}.{split}"),
            "n_skipped": _count((g.get(split) or {}).get("n_skipped")),
        }
        for split in ("seen", "unseen")
    }


def _onboarding(o: dict | None, where: str) -> dict[str, Any] | None:
    """The eval stage's onboarding record with every curve point checked."""
    if o is None:
        return None
    for name, curve in (o.get("selectors") or {}).items():
        if len(curve.get("answers") or []) != len(curve.get("accuracy") or []):
            raise ReportError(f"{where}.selectors.{name}: answers and accuracy differ in length")
        for i, a in enumerate(curve["accuracy"]):
            _acc(a, f"{where}.selectors.{name}.accuracy[{i}]")
    return dict(o)


def _models(cfg: Config, run: RunDir, results: dict, where: str) -> dict[str, Any]:
    """``models``: the configured and the evaluated models, each with its S records and
    the scalar training metrics of reward/<name>/metrics.json."""
    names = list(dict.fromkeys([*cfg.reward.models, *(results.get("models") or {})]))
    models = {}
    for name in names:
        r = (results.get("models") or {}).get(name) or {}
        models[name] = {
            "seen": normalize_split(r.get("seen"), f"{where}:models.{name}.seen"),
            "unseen": normalize_split(r.get("unseen"), f"{where}:models.{name}.unseen"),
            "training": _scalars(_load_json(run.reward(name) / "metrics.json")),
        }
        if r.get("active_units") is not None:  # VPL: the latent units its users use
            models[name]["active_units"] = _scalars(r["active_units"])
    return models


def _adaptation(results: dict, gnn_adapt: dict, where: str) -> dict[str, Any]:
    """``adaptation``: per variant, the reward model's unseen S record (eval) and the GNN's
    own accuracies (gnn/metrics.json)."""
    variants = list(dict.fromkeys([*(results.get("adaptation") or {}), *gnn_adapt]))
    return {
        v: {
            "unseen": normalize_split(
                ((results.get("adaptation") or {}).get(v) or {}).get("unseen"),
                f"{where}:adaptation.{v}.unseen",
            ),
            "gnn_accuracy": _acc(
                (gnn_adapt.get(v) or {}).get("gnn_accuracy"), f"gnn/metrics.json:adaptation.{v}"
            ),
            "gnn_truth_accuracy": _acc(
                (gnn_adapt.get(v) or {}).get("truth_accuracy"), f"gnn/metrics.json:adaptation.{v}"
            ),
        }
        for v in variants
    }


def collect(cfg: Config, run: RunDir, executed: dict[str, float] | None = None) -> dict:
    """Everything report.json holds, read from the run directory (see module docstring)."""
    data = _load_json(run.data / "summary.json")
    if data is not None:
        data = dict(data)
        data["n_dropped"] = int(sum((data.get("drops") or {}).values()))
    gm = _load_json(run.gnn / "metrics.json") or {}
    gnn_keys = ("heldout_accuracy", "val_accuracy", "test_accuracy_in_graph", "truth_accuracy")
    gnn = {k: _acc(gm.get(k), f"gnn/metrics.json:{k}") for k in gnn_keys}
    gnn.update({k: gm.get(k) for k in ("best_epoch", "epochs", "ari", "seconds")})

    results = _load_json(run.eval / "results.json") or {}
    where = "eval/results.json"
    models = _models(cfg, run, results, where)
    adaptation = _adaptation(results, gm.get("adaptation") or {}, where)
    curve = results.get("labels_curve")
    if curve is not None:
        acc = curve.get("accuracy")
        check = acc.values() if isinstance(acc, dict) else [acc]
        for i, series in enumerate(check):
            for a in series or []:
                _acc(a, f"{where}:labels_curve.accuracy[{i}]")

    timings = {f"{s}_s": run.stage_seconds(s) for s in STAGES}
    done = [t for t in timings.values() if t is not None]
    timings["total_s"] = round(sum(done), 3) if done else None
    figures = {
        "tsne": "gnn/tsne.png" if (run.gnn / "tsne.png").exists() else None,
        "expert_allocation": (
            "eval/expert_allocation.png" if (run.eval / "expert_allocation.png").exists() else None
        ),
        "onboarding": "eval/onboarding.png" if (run.eval / "onboarding.png").exists() else None,
        "labels_curve": None,
        "accuracy": None,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "run_dir": cfg.run.dir,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
        "gnn": gnn,
        "models": models,
        "adaptation": adaptation,
        "labels_curve": curve,
        "expert_usage": results.get("expert_usage"),
        "gate_health": results.get("gate_health") or {},
        "flip_test": _flip_test(results.get("flip_test"), f"{where}:flip_test"),
        "gnn_scorer": _gnn_scorer(results.get("gnn_scorer"), f"{where}:gnn_scorer"),
        "onboarding": _onboarding(results.get("onboarding"), f"{where}:onboarding"),
        "paper": paper_numbers(cfg),
        "timings": timings,
        "executed": sorted(executed or {}, key=STAGES.index),
        "figures": figures,
        "config": cfg.to_dict(),
        "versions": _versions(),
    }


def build_report(cfg: Config, run: RunDir, executed: dict[str, float] | None = None) -> Path:
    """Write report.json, report.md and the report PNGs into ``run``; return report.json."""
    from copl_ray.report_md import render_markdown, write_figures

    report = collect(cfg, run, executed)
    report["figures"].update(write_figures(report, run.root))
    run.report_json.write_text(json.dumps(report, indent=2, default=str))
    run.report_md.write_text(render_markdown(report))
    return run.report_json
