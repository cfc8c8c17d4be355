"""copl_ray/artifacts.py: RunDir paths and the ``_SUCCESS`` marker that makes a stage done
only for the config sections it was built from."""

from __future__ import annotations

import json
from pathlib import Path

from copl_ray.artifacts import STAGE_SECTIONS, STAGES, RunDir
from copl_ray.config import load_config
from copl_ray.variants import COPL


def test_paths(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    assert run.root == tmp_path
    assert (run.data, run.gnn, run.eval) == (tmp_path / "data", tmp_path / "gnn", tmp_path / "eval")
    assert run.reward() == tmp_path / "reward" / COPL
    assert run.reward("uniform") == tmp_path / "reward" / "uniform"
    assert run.report_md == tmp_path / "report.md" and run.report_json == tmp_path / "report.json"
    assert STAGES == ("data", "gnn", "reward", "eval")


def test_marker_records_hash_and_seconds(tmp_path: Path) -> None:
    cfg, run = load_config("tiny"), RunDir(tmp_path)
    assert not run.is_done("gnn", cfg) and run.stage_seconds("gnn") is None
    run.mark_done("gnn", cfg, 12.34567)
    info = json.loads((tmp_path / "gnn" / "_SUCCESS").read_text())
    assert info["config_hash"] == cfg.section_hash("data", "gnn", "adapt")
    assert info["seconds"] == 12.346 and run.stage_seconds("gnn") == 12.346
    assert run.is_done("gnn", cfg)


def test_done_follows_the_stage_sections_only(tmp_path: Path) -> None:
    cfg, run = load_config("tiny"), RunDir(tmp_path)
    for stage in STAGES:
        run.mark_done(stage, cfg, 1.0)
    # an eval-only change: data, gnn and reward stay done, eval reruns
    changed = load_config("tiny", ["eval.batch_size=7"])
    assert {s: run.is_done(s, changed) for s in STAGES} == {
        "data": True,
        "gnn": True,
        "reward": True,
        "eval": False,
    }
    # an adapt change: gnn and eval depend on it, reward does not
    adapt = load_config("tiny", ["adapt.kappa=0.08"])
    assert (
        [s for s in STAGES if not run.is_done(s, adapt)]
        == [s for s in STAGES if "adapt" in STAGE_SECTIONS[s]]
        == ["gnn", "eval"]
    )


def test_damaged_marker_is_not_done(tmp_path: Path) -> None:
    cfg, run = load_config("tiny"), RunDir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "_SUCCESS").write_text("")  # cut off by a crash
    assert not run.is_done("data", cfg)
    assert run.stage_seconds("data") is None  # the report of a --stages report run
    run.mark_done("data", cfg, 0.5)
    assert run.is_done("data", cfg) and run.stage_seconds("data") == 0.5
