"""copl_ray/report_md.py: the markdown of a small hand-made report dict (no run needed)."""

from __future__ import annotations

import copy

from copl_ray.report_md import is_stat, render_markdown
from copl_ray.variants import COPL, UNIFORM


def _split(overall, common=None, controversial=None, by_group=None, users=10, pairs=100):
    return {
        "overall": overall,
        "common": common,
        "controversial": controversial,
        "by_group": by_group or {},
        "n_pairs": pairs,
        "n_users": users,
    }


REPORT = {
    "schema_version": 3,
    "name": "unit",
    "run_dir": "/tmp/unit",
    "created": "2026-01-01T00:00:00",
    "models": {
        # given out of REPORT_ORDER on purpose: the table lists uniform before copl
        COPL: {
            "seen": _split(0.61234, 0.7, 0.55, {"detail": 0.625}, users=400, pairs=4000),
            "unseen": _split(0.61236, users=40, pairs=2000),
            "training": {"seconds": 61.4},  # the "train s" column; Uniform has none (—)
        },
        UNIFORM: {"seen": _split(0.5), "unseen": _split(None, users=None, pairs=None)},
    },
    "gnn": {
        "heldout_accuracy": 0.9,
        "val_accuracy": 0.875,
        "test_accuracy_in_graph": None,
        "best_epoch": 7,
        "epochs": 10,
        "ari": 0.12345,
    },
    "adaptation": {},
    "figures": {"tsne": "gnn/tsne.png"},
    "data": None,
    "timings": {"data_s": 0.25, "gnn_s": 2.0, "reward_s": None, "eval_s": None, "total_s": 2.25},
    "executed": ["gnn"],
    "versions": {"python": "3.11.7", "ray": None},
    "config": {"name": "unit"},
}


def _lines(rep: dict) -> list[str]:
    return render_markdown(rep).splitlines()


def test_table1_rows_in_report_order_with_rounding() -> None:
    lines = _lines(REPORT)
    rows = [ln for ln in lines if ln.startswith(("| CoPL |", "| Uniform (one BTL) |"))]
    assert rows == [
        # Table 1 row: % to 2 decimals (61.234 -> 61.23, 61.236 -> 61.24), users / labels
        "| Uniform (one BTL) | 50.00 | 10 / 100 | — | — / — | — |",
        "| CoPL | 61.23 | 400 / 4000 | 61.24 | 40 / 2000 | 61 |",
        # Table 2: only the split with a common/controversial figure
        "| CoPL | seen | 70.00 | 55.00 |",
        # by preference group
        "| CoPL | seen | 62.50 |",
    ]
    assert "| Model | Seen acc. % | seen users / test labels | Unseen acc. % | " in "\n".join(lines)


def test_gnn_table_stage_times_and_missing_values() -> None:
    lines = _lines(REPORT)
    assert "| held-out (seen users' val pair) | 90.00 |" in lines
    assert "| validation | 87.50 |" in lines
    assert "| test pairs scored in-graph | — |" in lines  # None renders as the dash
    assert "| vs true group labels (synthetic) | — |" in lines  # key absent
    assert "| best epoch / epochs | 7 / 10 |" in lines
    assert "| ARI of user clusters vs true groups | 0.123 |" in lines
    assert "| data | 0.2 | reused |" in lines  # format(0.25, ".1f") rounds half to even
    assert "| gnn | 2.0 | this run |" in lines
    assert "| reward | — | — |" in lines and "| total | 2.2 |  |" in lines
    assert "| ray | — |" in lines
    assert "Data stage not run." in lines
    assert "![tsne](gnn/tsne.png)" in lines and lines.count("(not produced)") == 4


def test_paper_columns_and_paper_only_rows() -> None:
    rep = copy.deepcopy(REPORT)
    rep["paper"] = {
        "column": "UF-P-2-ALL",
        "backbone": "gemma-2b-it",
        "seen": {COPL: 0.6381, "i2e": 0.6148},
        "unseen": {COPL: 0.6392},
        "common": {},
        "controversial": {},
    }
    lines = _lines(rep)
    assert "Paper figures: CoPL paper, UF-P-2-ALL, gemma-2b-it, mean of 3 seeds." in lines
    assert "| CoPL | 61.23 | 400 / 4000 | 61.24 | 40 / 2000 | 61 | 63.81 | 63.92 |" in lines
    # a model the paper has no figure for, and a paper baseline this run did not train
    assert "| Uniform (one BTL) | 50.00 | 10 / 100 | — | — / — | — | — | — |" in lines
    assert "| I2E (user token) | — | — / — | — | — / — | — | 61.48 | — |" in lines
    assert not any(ln.startswith("| VPL") for ln in lines)  # not in paper["seen"]


def test_seed_stats_render_mean_and_sd() -> None:
    stat = {"mean": 0.6, "sd": 0.012, "n": 3, "values": [0.588, 0.6, 0.612]}
    assert is_stat(stat) and not is_stat({"mean": 0.6}) and not is_stat(0.6)
    rep = copy.deepcopy(REPORT)
    rep["models"][COPL]["unseen"]["overall"] = stat
    rep["models"][UNIFORM]["seen"]["overall"] = {**stat, "sd": None}
    lines = _lines(rep)
    assert "| CoPL | 61.23 | 400 / 4000 | 60.00 ± 1.20 | 40 / 2000 | 61 |" in lines
    assert "| Uniform (one BTL) | 60.00 ± — | 10 / 100 | — | — / — | — |" in lines


def test_collapsed_gate_warning_on_top() -> None:
    rep = copy.deepcopy(REPORT)
    rep["gate_health"] = {
        COPL: {
            "share": [0.95, 0.05],
            "entropy": 0.2864,
            "collapsed": True,
            "top_expert": 0,
            "top_share": 0.95,
            "n_users": 400,
            "collapse_share": 0.9,
        }
    }
    md = render_markdown(rep)
    assert md.index("Warning: the CoPL gate collapsed") < md.index("## Reward-model accuracy")
    assert "expert 0 takes 95.00 % of 400 seen users (routing entropy 0.29)" in md
    assert "| CoPL | 95.00 / 5.00 | 0.286 | **yes** | 400 |" in md.splitlines()
