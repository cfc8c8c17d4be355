"""Seeds report: mean ± sample sd of every cell, on hand-made per-seed report dicts."""

from __future__ import annotations

import json
import math

import pytest

from copl_ray.config import load_config
from copl_ray.report import build_report
from copl_ray.report_seeds import (
    aggregate_reports,
    build_seeds_report,
    gap_lines,
    merge,
    stat,
)


def _rep(copl_seen, oracle_seen, copl_unseen, curve, share, top, collapsed=False):
    """The parts of a report.json the aggregation reads, as eval writes them."""
    split = lambda o: {"overall": o, "common": None, "n_pairs": 4000, "n_users": 400}  # noqa: E731
    return {
        "schema_version": 1,
        "name": "tiny",
        "config": {"data": {"seed": 0}},
        "models": {
            "copl": {"seen": split(copl_seen), "unseen": split(copl_unseen)},
            "oracle": {"seen": split(oracle_seen), "unseen": split(0.9)},
        },
        "labels_curve": {"counts": [1, 2, 4, 8], "accuracy": curve},
        "gate_health": {
            "copl": {
                "share": share,
                "entropy": 0.5,
                "top_expert": top,
                "collapsed": collapsed,
                "collapse_share": 0.95,
            }
        },
        "executed": ["eval"],
        "figures": {"tsne": "gnn/tsne.png"},
    }


def test_stat_is_mean_and_sample_sd():
    s = stat([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9, abs=1e-15)
    assert s["sd"] == pytest.approx(0.1, abs=1e-15)  # n - 1: population sd would be 0.0816
    assert (s["n"], s["values"]) == (3, [0.8, 0.9, 1.0])
    one_missing = stat([0.5, None, 0.7])  # a seed without the cell does not count
    assert (one_missing["n"], one_missing["mean"]) == (2, pytest.approx(0.6))
    assert one_missing["sd"] == pytest.approx(math.sqrt(0.02))
    assert stat([None, None]) is None and stat([0.4])["sd"] is None


def test_merge_rules():
    assert merge([400, 400, 400]) == 400  # a count equal in every seed stays plain
    assert merge([0.5, 0.5])["sd"] == 0.0  # a fraction is a stat even when equal
    assert merge([10, 12])["mean"] == 11
    assert merge([True, False]) is True and merge(["a", "a"]) == "a"
    assert merge([[0.1, 0.2], [0.3, 0.4]])[1]["mean"] == pytest.approx(0.3)
    assert merge([{"x": 0.2}, {}])["x"]["values"] == [0.2, None]


def test_aggregate_cells_and_gap():
    reports = {
        0: _rep(0.92, 0.936, 0.93, [0.8, 0.9, 0.9, 0.93], [0.0, 0.0, 0.49, 0.51], 3),
        1: _rep(0.88, 0.930, 0.92, [0.7, 0.8, 0.9, 0.92], [0.5, 0.5, 0.0, 0.0], 0),
        2: _rep(0.90, 0.933, 0.94, [0.9, 0.9, 0.9, 0.94], [0.0, 0.97, 0.03, 0.0], 1, True),
    }
    agg = aggregate_reports(reports, {s: f"seed-{s}" for s in reports}, "/runs/x")
    seen = agg["models"]["copl"]["seen"]
    assert seen["overall"]["mean"] == pytest.approx(0.9)
    assert seen["overall"]["sd"] == pytest.approx(0.02)
    assert seen["overall"]["values"] == [0.92, 0.88, 0.90]
    assert seen["n_users"] == 400 and seen["common"] is None
    curve = agg["labels_curve"]
    assert curve["counts"] == [1, 2, 4, 8]
    assert curve["accuracy"][0]["mean"] == pytest.approx(0.8)
    assert curve["accuracy"][0]["sd"] == pytest.approx(0.1)
    gate = agg["gate_health"]["copl"]
    # shares are compared busiest expert first (expert indices differ between seeds)
    assert gate["share"][0]["values"] == [0.51, 0.5, 0.97]
    assert gate["top_expert"] == [3, 0, 1] and gate["collapsed"] is True
    assert gate["collapse_share"] == 0.95
    gap = agg["seeds"]["copl_oracle_gap"]["seen"]
    assert gap["per_seed"] == {
        "0": pytest.approx(1.6),
        "1": pytest.approx(5.0),
        "2": pytest.approx(3.3),
    }
    assert gap["mean"] == pytest.approx(3.3) and gap["worst"] == pytest.approx(5.0)
    assert gap["sd"] == pytest.approx(stat([1.6, 5.0, 3.3])["sd"])
    assert agg["seeds"]["copl_oracle_gap"]["unseen"]["worst"] == pytest.approx(-2.0)
    assert gap_lines(agg)[0] == (
        "Oracle − CoPL (seen users, points): seed 0 1.60, seed 1 5.00, seed 2 3.30; "
        "mean 3.30 ± 1.70, worst 5.00"
    )
    assert agg["config"] == reports[0]["config"] and agg["figures"] == {"tsne": None}
    assert agg["seeds"]["seeds"] == [0, 1, 2] and agg["run_dir"] == "/runs/x"


def test_seeds_report_files(tmp_path):
    """Real per-seed reports (build_report on contract artifacts) → report.json / .md."""
    from tests.test_report import _write_contract_run

    paths = {}
    for seed, copl in ((0, 0.8), (1, 0.7)):
        root = tmp_path / f"seed-{seed}"
        cfg = load_config("tiny", [f"run.dir={root}", f"data.seed={seed}"])
        paths[seed] = build_report(cfg, _write_contract_run(root, cfg, copl_seen=copl), {})
    out = build_seeds_report(tmp_path, str(tmp_path), {0: "seed-0", 1: "seed-1"}, paths)
    agg = json.loads(out.read_text())
    overall = agg["models"]["copl"]["seen"]["overall"]
    assert overall["values"] == [0.8, 0.7] and overall["sd"] == pytest.approx(math.sqrt(0.005))
    md = (tmp_path / "report.md").read_text()
    assert f"| CoPL | 75.00 ± {100 * math.sqrt(0.005):.2f} | 4 / 40 |" in md
    assert "Mean ± sample sd over 2 seeds (0, 1)" in md and "[seed 1](seed-1/report.md)" in md
    assert "| seen | 5.00 | 15.00 | 10.00 | 7.07 | 15.00 |" in md  # Oracle 0.85 − CoPL
    assert (tmp_path / "report_accuracy.png").read_bytes()[:4] == b"\x89PNG"
