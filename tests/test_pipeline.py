"""Pipeline orchestration with the real data stage: reuse, resume, invalidation, URIs."""

from __future__ import annotations

import json
import shutil

import pytest

from copl_ray.artifacts import RunDir
from copl_ray.config import load_config
from copl_ray.pipeline import PipelineError, load_stage, parse_stages, run_pipeline, user_error

SMALL = ["data.n_users=40", "data.n_unseen_users=4", "data.synthetic.n_prompts=60"]


def _cfg(root, *extra):
    return load_config("tiny", [*SMALL, *extra, f"run.dir={root}"])


def test_parse_stages_orders_and_rejects_unknown():
    cfg = load_config("tiny")
    assert parse_stages("eval,data", cfg) == ["data", "eval"]
    assert parse_stages(None, cfg) == ["data", "gnn", "reward", "eval"]
    assert parse_stages("report", cfg) == []
    with pytest.raises(PipelineError, match="unknown stage.*trian"):
        parse_stages("data,trian", cfg)
    with pytest.raises(PipelineError, match="unknown stage"):
        load_stage("bogus")


def test_data_stage_reuse_rerun_and_config_change(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    report = run_pipeline(cfg, "data")
    run = RunDir(tmp_path)
    assert report == run.report_json and run.is_done("data", cfg)
    rep = json.loads(report.read_text())
    assert rep["executed"] == ["data"] and rep["data"]["n_users_seen"] == 40
    assert (tmp_path / "config.yaml").read_text() == cfg.to_yaml()
    marker = (run.data / "_SUCCESS").read_text()

    # same config: reused, nothing rewritten
    capsys.readouterr()
    run_pipeline(cfg, "data")
    assert "[data] reused" in capsys.readouterr().out
    assert (run.data / "_SUCCESS").read_text() == marker
    assert json.loads(run.report_json.read_text())["executed"] == []

    # a downstream marker made stale by a rerun of data is removed
    run.mark_done("gnn", cfg, 1.0)
    run_pipeline(cfg, "data", force=True)
    assert not (run.gnn / "_SUCCESS").exists()

    # another data config: the stage folder is wiped (no stale file survives) and rebuilt
    (run.data / "stale.txt").write_text("from the old config")
    cfg2 = _cfg(tmp_path, "data.seed=1")
    assert not run.is_done("data", cfg2)
    run_pipeline(cfg2, "data")
    assert run.is_done("data", cfg2) and not (run.data / "stale.txt").exists()


def test_interrupted_stage_resumes_in_place(tmp_path):
    """A stage without marker but with a matching _STARTED record keeps its folder (its
    checkpoints) so the stage resumes; with a different record the folder is wiped."""
    cfg = _cfg(tmp_path)
    run = RunDir(tmp_path)
    run_pipeline(cfg, "data")
    (run.data / "_SUCCESS").unlink()  # as if killed before the marker was written
    (run.data / "checkpoint.txt").write_text("partial work")
    run_pipeline(cfg, "data")
    assert (run.data / "checkpoint.txt").exists() and run.is_done("data", cfg)

    (run.data / "_SUCCESS").unlink()
    started = json.loads((run.data / "_STARTED").read_text())
    started["config_hash"] = "0" * 16  # the interrupted attempt had another config
    (run.data / "_STARTED").write_text(json.dumps(started))
    run_pipeline(cfg, "data")
    assert not (run.data / "checkpoint.txt").exists() and run.is_done("data", cfg)


def test_uri_run_dir_round_trip(tmp_path, monkeypatch):
    """A pyarrow.fs URI (file:// here; s3:// gs:// hdfs:// use the same code) is mirrored
    through a local staging folder and pushed after every stage."""
    monkeypatch.setenv("COPL_STAGING_DIR", str(tmp_path / "staging"))
    remote = tmp_path / "remote" / "run1"
    uri = f"file://{remote}"
    cfg = _cfg(uri)
    local_report = run_pipeline(cfg, "data")
    assert local_report.is_relative_to(tmp_path / "staging")
    for name in ("report.json", "report.md", "config.yaml", "data/_SUCCESS", "data/pairs.parquet"):
        assert (remote / name).exists(), name
    assert json.loads((remote / "report.json").read_text())["run_dir"] == uri

    # a fresh machine (empty staging) pulls the run back and reuses the stage
    shutil.rmtree(tmp_path / "staging")
    run_pipeline(cfg, "data")
    assert json.loads((remote / "report.json").read_text())["executed"] == []


def test_user_error_unwraps_config_and_data_errors():
    from copl_ray.config import ConfigError
    from copl_ray.data.validate import DataError

    assert isinstance(user_error(ConfigError("gnn.epochs: bad")), ConfigError)
    wrapped = RuntimeError("ray wrapper")
    wrapped.__cause__ = DataError("prefs.csv row 3 column chosen: empty")
    assert isinstance(user_error(wrapped), DataError)
    assert user_error(ValueError("a bug, not the user's")) is None
    assert user_error(KeyError("x")) is None
