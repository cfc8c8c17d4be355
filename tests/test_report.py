"""Report builder: synthetic artifacts in the contract formats, and the real tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from copl_ray.artifacts import RunDir
from copl_ray.config import load_config
from copl_ray.report import SPLIT_KEYS, ReportError, build_report, paper_numbers


def _split(overall, common=None, controversial=None, by_group=None, n_pairs=10, n_users=5):
    return {
        "overall": overall,
        "common": common,
        "controversial": controversial,
        "by_group": by_group or {},
        "n_pairs": n_pairs,
        "n_users": n_users,
    }


def _write_contract_run(root, cfg, *, copl_seen=0.8):
    """Artifacts exactly in the formats the stages write (data, gnn, reward, eval; the layout
    of copl_ray/artifacts.py)."""
    run = RunDir(root)
    for d in (run.data, run.gnn, run.eval, run.reward("copl"), run.reward("uniform")):
        d.mkdir(parents=True, exist_ok=True)
    summary = {
        "source": "synthetic",
        "n_users_seen": 4,
        "n_users_unseen": 2,
        "n_responses": 40,
        "n_pairs": 30,
        "n_pool_pairs": 25,
        "n_annotations": {"survey": 24, "val": 4, "test": 20},
        "labels_per_user": {"min": 6.0, "median": 7.0, "max": 7.0},
        "controversial_share": 0.5,
        "groups": ["a", "b"],
        "drops": {"tie": 3, "too_long": 2},
        "notes": ["synthetic truth known"],
    }
    (run.data / "summary.json").write_text(json.dumps(summary))
    gnn = {
        "heldout_accuracy": 0.9,
        "val_accuracy": 0.9,
        "test_accuracy_in_graph": 0.85,
        "best_epoch": 7,
        "epochs": 10,
        "loss_curve": [0.7, 0.5],
        "val_curve": [0.6, 0.9],
        "seconds": 3.0,
        "ari": 1.0,
        "adaptation": {"weighted": {"gnn_accuracy": 0.8}, "naive": {"gnn_accuracy": 0.7}},
    }
    (run.gnn / "metrics.json").write_text(json.dumps(gnn))
    results = {
        "models": {
            "copl": {
                "seen": _split(copl_seen, 0.9, 0.7, {"a": 0.8, "b": 0.8}, 40, 4),
                "unseen": _split(0.75, 0.8, 0.7, {"a": 0.7, "b": 0.8}, 100, 2),
            },
            "uniform": {
                "seen": _split(0.6, 0.95, 0.25, {"a": 0.6, "b": 0.6}, 40, 4),
                "unseen": _split(0.6, 0.95, 0.25, {"a": 0.6, "b": 0.6}, 100, 2),
            },
            "oracle": {"seen": _split(0.85, 0.9, 0.8), "unseen": _split(None, n_pairs=None)},
        },
        "adaptation": {"weighted": {"unseen": _split(0.75)}, "naive": {"unseen": _split(0.7)}},
        "labels_curve": {"counts": [1, 2, 4, 8], "accuracy": [0.55, 0.6, 0.7, 0.75]},
        "expert_usage": {"a": [0.9, 0.1], "b": [0.1, 0.9]},
    }
    (run.eval / "results.json").write_text(json.dumps(results))
    (run.reward("copl") / "metrics.json").write_text(
        json.dumps({"val_accuracy": 0.78, "steps": 50, "curve": [0.5, 0.7], "seconds": 61.4})
    )
    for stage, sec in (("data", 1.0), ("gnn", 3.0), ("reward", 20.0), ("eval", 4.0)):
        run.mark_done(stage, cfg, sec)
    return run


def test_report_from_contract_artifacts(tmp_path):
    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    run = _write_contract_run(tmp_path, cfg)
    path = build_report(cfg, run, executed={"eval": 4.0})
    rep = json.loads(path.read_text())

    assert rep["schema_version"] == 1 and rep["run_dir"] == str(tmp_path)
    assert rep["data"]["drops"] == {"tie": 3, "too_long": 2} and rep["data"]["n_dropped"] == 5
    assert rep["gnn"]["heldout_accuracy"] == 0.9 and rep["gnn"]["ari"] == 1.0
    # every model of cfg.reward.models and of results.json, each split with every key
    assert list(rep["models"]) == ["copl", "uniform", "oracle"]
    for m in rep["models"].values():
        for split in ("seen", "unseen"):
            assert set(m[split]) == set(SPLIT_KEYS)
    assert rep["models"]["copl"]["seen"]["overall"] == 0.8
    assert rep["models"]["oracle"]["unseen"]["overall"] is None  # no such split: null
    assert rep["models"]["copl"]["training"] == {"val_accuracy": 0.78, "steps": 50, "seconds": 61.4}
    assert rep["adaptation"]["weighted"]["unseen"]["overall"] == 0.75
    assert rep["adaptation"]["naive"]["gnn_accuracy"] == 0.7
    assert rep["timings"] == {
        "data_s": 1.0,
        "gnn_s": 3.0,
        "reward_s": 20.0,
        "eval_s": 4.0,
        "total_s": 28.0,
    }
    assert rep["executed"] == ["eval"]
    assert rep["paper"] is None  # synthetic data: no paper column
    assert rep["versions"]["ray"] and rep["versions"]["torch"]
    assert rep["config"]["reward"]["models"] == ["copl", "uniform", "oracle"]

    # figures: ours written, the stages' (absent here) reported as null
    assert rep["figures"]["labels_curve"] == "report_labels_curve.png"
    assert (tmp_path / "report_labels_curve.png").stat().st_size > 1000
    assert (tmp_path / "report_accuracy.png").stat().st_size > 1000
    assert rep["figures"]["tsne"] is None

    md = run.report_md.read_text()
    assert "| CoPL | 80.00 | 4 / 40 | 75.00 | 2 / 100 | 61 |" in md  # + training seconds
    assert "| Uniform (one BTL) | seen | 95.00 | 25.00 |" in md  # Table 2 row
    assert "| tie | 3 |" in md and "Dropped rows: 5" in md
    assert "| weighted | 75.00 |" in md  # Table 4
    assert "| CoPL | 55.00 | 60.00 | 70.00 | 75.00 |" in md  # Fig. 2 numbers
    assert "paper" not in md.split("## Reward-model accuracy")[1].split("##")[0]


def test_report_shows_gate_health_and_flip_test(tmp_path):
    """report.json carries the eval stage's gate_health and flip_test; report.md shows both,
    with a warning at the top only for the model whose gate collapsed."""
    from copl_ray.eval.metrics import expert_usage
    from copl_ray.eval.stage import health_record

    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    run = _write_contract_run(tmp_path, cfg)
    results = json.loads((run.eval / "results.json").read_text())
    split_users = np.repeat(np.eye(4)[[2, 3]], 2, axis=0)  # 2 users on expert 2, 2 on 3
    one_expert = np.tile([1.0, 0.0, 0.0, 0.0], (4, 1))
    results["gate_health"] = {
        "copl": health_record(expert_usage(split_users)),
        "no_gnn": health_record(expert_usage(one_expert)),
    }
    results["flip_test"] = {
        "rate": 0.52,
        "common": 0.04,
        "controversial": 0.96,
        "by_group": {"a": 0.5, "b": 0.54},
        "n_pairs": 100,
        "n_users": 2,
        "variant": "weighted",
    }
    (run.eval / "results.json").write_text(json.dumps(results))
    rep = json.loads(build_report(cfg, run).read_text())

    assert rep["gate_health"]["copl"]["share"] == [0.0, 0.0, 0.5, 0.5]
    assert rep["gate_health"]["copl"]["entropy"] == pytest.approx(0.5)
    assert rep["gate_health"]["copl"]["collapsed"] is False
    assert rep["gate_health"]["no_gnn"]["collapsed"] is True
    assert rep["flip_test"]["rate"] == 0.52 and rep["flip_test"]["n_pairs"] == 100
    md = run.report_md.read_text()
    top = md.split("## Reward-model accuracy")[0]
    assert "**Warning: the CoPL w/o GNN (learned user emb.) gate collapsed**" in top
    assert "the CoPL gate" not in top
    assert "| CoPL | 0.00 / 0.00 / 50.00 / 50.00 | 0.500 | no | 4 |" in md
    assert "flips CoPL's predicted preference on **52.00 %** of their test pairs" in md
    assert "in-context learning has been measured to flip 14 %" in md

    results["flip_test"]["rate"] = 52.0  # a percentage where a fraction belongs
    (run.eval / "results.json").write_text(json.dumps(results))
    with pytest.raises(ReportError, match="flip_test.rate"):
        build_report(cfg, run)


def test_report_without_gate_or_flip_test(tmp_path):
    """Runs whose eval predates these checks (or has no gated model) report {} and null."""
    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    rep = json.loads(build_report(cfg, _write_contract_run(tmp_path, cfg)).read_text())
    assert rep["gate_health"] == {} and rep["flip_test"] is None
    assert "## Gate health" not in RunDir(tmp_path).report_md.read_text()


def test_report_rejects_percentages_naming_the_file(tmp_path):
    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    run = _write_contract_run(tmp_path, cfg, copl_seen=80.0)  # percent, not a fraction
    with pytest.raises(ReportError, match=r"eval/results.json:models.copl.seen.overall.*80"):
        build_report(cfg, run)


def test_report_with_no_stages_run(tmp_path):
    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    rep = json.loads(build_report(cfg, RunDir(tmp_path)).read_text())
    assert rep["data"] is None and rep["gnn"]["heldout_accuracy"] is None
    assert rep["models"]["copl"]["seen"]["overall"] is None
    assert rep["timings"]["total_s"] is None and rep["labels_curve"] is None
    assert "Data stage not run." in RunDir(tmp_path).report_md.read_text()


@pytest.mark.parametrize(
    "overrides,column,copl_seen,uniform_unseen",
    [
        (["data.n_groups=2", "data.sampling=all"], "UF-P-2-ALL", 0.6381, 0.6282),
        (["data.n_groups=4", "data.sampling=avg"], "UF-P-4-AVG", 0.6208, 0.5565),
    ],
)
def test_paper_numbers_stand_beside_ufp_runs(
    tmp_path, overrides, column, copl_seen, uniform_unseen
):
    cfg = load_config("tiny", ["data.source=ufp", *overrides, f"run.dir={tmp_path}"])
    paper = paper_numbers(cfg)
    assert paper["column"] == column
    assert paper["seen"]["copl"] == pytest.approx(copl_seen)
    assert paper["unseen"]["uniform"] == pytest.approx(uniform_unseen)
    run = _write_contract_run(tmp_path, cfg)
    build_report(cfg, run)
    md = run.report_md.read_text()
    assert f"paper seen % ({column})" in md
    assert f"| CoPL | 80.00 | 4 / 40 | 75.00 | 2 / 100 | 61 | {100 * copl_seen:.2f} |" in md
    if column == "UF-P-2-ALL":  # Table 2 figures exist only for UF-P-2-ALL
        assert "| 71.23 | 56.89 |" in md


def test_paper_numbers_for_7b_are_copl_seen_only():
    cfg = load_config("ufp4-gemma-7b")
    paper = paper_numbers(cfg)
    assert paper["backbone"] == "gemma-7b-it"
    assert set(paper["seen"]) == {"copl"} and paper["unseen"] == {}


def test_report_shows_the_gnn_only_row_beside_the_reward_models(tmp_path):
    """eval's gnn_scorer becomes report.json["gnn_scorer"] and a Table-1 row with its own
    users / pairs; a percentage where a fraction belongs is refused naming the field."""
    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    run = _write_contract_run(tmp_path, cfg)
    results = json.loads((run.eval / "results.json").read_text())
    results["gnn_scorer"] = {
        "seen": {**_split(0.777, n_pairs=30, n_users=4), "n_skipped": 10},
        "unseen": {**_split(0.5, n_pairs=80, n_users=2), "n_skipped": 20},
    }
    (run.eval / "results.json").write_text(json.dumps(results))
    rep = json.loads(build_report(cfg, run).read_text())
    assert rep["gnn_scorer"]["seen"]["overall"] == 0.777
    assert rep["gnn_scorer"]["unseen"]["n_skipped"] == 20
    table = run.report_md.read_text().split("## Reward-model accuracy")[1].split("\n## ")[0]
    assert "| GNN only (in-graph pairs) | 77.70 | 4 / 30 | 50.00 | 2 / 80 |" in table
    assert "10 seen / 20 unseen pairs skipped" in table

    results["gnn_scorer"]["seen"]["overall"] = 77.7
    (run.eval / "results.json").write_text(json.dumps(results))
    with pytest.raises(ReportError, match="gnn_scorer.seen.overall"):
        build_report(cfg, run)
    rep_without = _write_contract_run(
        tmp_path / "old", load_config("tiny", [f"run.dir={tmp_path / 'old'}"])
    )
    assert json.loads(build_report(cfg, rep_without).read_text())["gnn_scorer"] is None


def test_report_carries_the_onboarding_curves_and_what_they_mean(tmp_path):
    """report.json's onboarding record is the eval stage's (the answers-to-match numbers
    computed by copl_ray/eval/onboarding.py from the curves); report.md shows a row per
    selector and says whether CoPL's selector reaches random's 16-answer accuracy."""
    from copl_ray.eval.onboarding import onboarding_summary

    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    run = _write_contract_run(tmp_path, cfg)
    counts = [1, 2, 4, 8, 16]
    curves = {
        "copl": {"answers": counts, "accuracy": [0.7, 0.8, 0.86, 0.9, 0.92]},
        "pref": {"answers": counts, "accuracy": [0.6, 0.7, 0.8, 0.85, 0.87]},
        "random": {"answers": counts, "accuracy": [0.55, 0.62, 0.74, 0.82, 0.86]},
    }
    record = {**onboarding_summary(curves, counts), "truth": "group", "n_users": 40}
    record.update(n_pairs=2000, n_pool=979, candidates_per_user=979.0, seconds=12.0)
    results = json.loads((run.eval / "results.json").read_text())
    results["onboarding"] = record
    (run.eval / "results.json").write_text(json.dumps(results))
    rep = json.loads(build_report(cfg, run).read_text())

    o = rep["onboarding"]
    assert o["answers_to_match_random16"] == {"copl": 4, "pref": 16, "random": 16}
    assert o["selectors"]["copl"]["accuracy"] == curves["copl"]["accuracy"]
    assert o["random_reference_accuracy"] == 0.86 and o["reference_answers"] == 16
    md = run.report_md.read_text()
    assert "| copl | 70.00 | 80.00 | 86.00 | 90.00 | 92.00 | 4 |" in md
    assert "reaches random's 16-answer accuracy (86.00 %) after 4 answers" in md

    curves["copl"]["accuracy"] = [0.5, 0.6, 0.7, 0.8, 0.85]  # never reaches 0.86
    results["onboarding"] = {**record, **onboarding_summary(curves, counts)}
    (run.eval / "results.json").write_text(json.dumps(results))
    rep = json.loads(build_report(cfg, run).read_text())
    assert rep["onboarding"]["answers_to_match_random16"]["copl"] is None
    assert "falls short of random's 16-answer accuracy (86.00 %): 85.00 % after 16" in (
        run.report_md.read_text()
    )
    results["onboarding"]["selectors"]["pref"]["accuracy"][0] = 60.0  # a percentage
    (run.eval / "results.json").write_text(json.dumps(results))
    with pytest.raises(ReportError, match="onboarding.selectors.pref.accuracy"):
        build_report(cfg, run)
