"""The run plan (copl_ray/plan.py): counted steps, a measured ETA, a training budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.artifacts import RunDir
from copl_ray.budget import planned_steps
from copl_ray.config import ConfigError, load_config
from copl_ray.plan import MIN_STEPS, budget_steps, plan_run

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ pure arithmetic
def test_budget_steps_arithmetic() -> None:
    # fits: unchanged (fixed 100 s + 2 x 100 steps x 1 s = 300 s <= 300 s)
    assert budget_steps([100, 100], [1.0, 1.0], 100.0, 300.0) == [100, 100]
    # one common factor: (400 - 100) / (1000 * 0.5 + 500 * 0.2) = 0.5
    assert budget_steps([1000, 500], [0.5, 0.2], 100.0, 400.0) == [500, 250]
    # floor, and the capped ETA fits the budget
    got = budget_steps([333, 77], [0.3, 0.7], 10.0, 60.0)
    assert 10.0 + sum(n * s for n, s in zip(got, [0.3, 0.7])) <= 60.0
    assert got == [int(333 * 50 / (333 * 0.3 + 77 * 0.7)), int(77 * 50 / (333 * 0.3 + 77 * 0.7))]
    # a budget below the fixed overheads: at least MIN_STEPS, never above the schedule
    assert budget_steps([3000, 5], [1.0, 1.0], 500.0, 60.0) == [MIN_STEPS, 5]


def test_time_budget_config_field() -> None:
    assert load_config("tiny").train.time_budget_min == 15
    assert load_config("tiny", ["train.time_budget_min=null"]).train.time_budget_min is None
    with pytest.raises(ConfigError, match=r"train\.time_budget_min"):
        load_config("tiny", ["train.time_budget_min=0"])


# ------------------------------------------------------------------ tiny: never capped
def test_tiny_default_is_not_capped(tmp_path: Path) -> None:
    """The synthetic default keeps its 129-step models (the tiny report must not change)."""
    from copl_ray.data.build import run_data_stage

    cfg = load_config("tiny")
    run = RunDir(tmp_path)
    run_data_stage(cfg, run)
    plan = plan_run(cfg, run)
    steps = {j.job: (j.steps, j.budget_steps) for j in plan.jobs}
    assert steps["copl"] == (129, 129) and steps["uniform"] == (129, 129)
    assert not plan.capped and plan.eta_s is not None and plan.eta_s < 60 * 15
    assert all(planned_steps(cfg, run, j.job) is None for j in plan.jobs)
    text = "\n".join(plan.lines())
    assert "fits, not capped" in text and "full run" not in text


def test_too_few_pairs_for_the_workers_fails_in_the_plan(tmp_path: Path) -> None:
    """Known from the data's tables: one line naming the field, before the GNN trains."""
    from copl_ray.data.build import run_data_stage

    small = ["data.n_users=40", "data.n_unseen_users=4", "data.synthetic.n_prompts=60"]
    cfg = load_config("tiny", [*small, "train.num_workers=5000", "reward.models=[uniform]"])
    run = RunDir(tmp_path)
    run_data_stage(cfg, run)
    with pytest.raises(ConfigError, match=r"train\.num_workers: .*training pairs for 5000"):
        plan_run(cfg, run)


# ------------------------------------------------------------------ BYO end to end
def byo_rows(n_users: int = 2000, per_user: int = 10, seed: int = 0) -> list[dict]:
    """~20k labels as a datasets/TRL export: split train/test, no group column."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        likes_short = u % 2 == 0  # a hidden preference, not in the file
        for k, p in enumerate(rng.choice(500, per_user, replace=False)):
            a, b = (int(x) for x in rng.choice(4, 2, replace=False))
            short, long = f"reply {min(a, b)} to {p}", f"a longer reply {max(a, b)} to {p} ok"
            win = short if likes_short ^ (rng.random() < 0.1) else long
            rows.append(
                {
                    "user_id": f"u{u}",
                    "prompt": f"question {p}?",
                    "chosen": win,
                    "rejected": long if win == short else short,
                    "split": "test" if k < 2 else "train",
                }
            )
    return rows


def test_byo_run_announces_its_plan_and_caps_steps(tmp_path: Path) -> None:
    """``jobs/full.py --data FILE``: the plan is printed before the GNN stage, the budget
    caps every model's steps (plan.json, read by the reward stage), the report exists."""
    data = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(byo_rows()), data)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--stages",
        "data,gnn",
        "--set",
        "reward.models=[copl,uniform]",
        "--set",
        "gnn.epochs=2",
        "--set",
        "gnn.tsne=false",
        "--set",
        "train.time_budget_min=3",
    ]
    r = subprocess.run(
        [sys.executable, "jobs/full.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout.splitlines()
    plan_lines = [i for i, line in enumerate(out) if "plan: " in line]
    gnn_start = next(i for i, line in enumerate(out) if "[gnn] running" in line)
    assert plan_lines and max(plan_lines) < gnn_start
    text = "\n".join(out[i] for i in plan_lines)
    for fact in ("seen users", "models: copl, uniform", "steps per model", "ETA", "capped"):
        assert fact in text, text
    assert "full run: --set train.time_budget_min=null" in text
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {j["job"] for j in plan["jobs"]} == {"copl", "uniform"}
    for j in plan["jobs"]:
        assert j["pairs"] > 10_000 and j["steps"] > 500 and j["budget_steps"] < j["steps"]
    assert Path(out[-1]).name == "report.json" and Path(out[-1]).exists()
    rep = json.loads(Path(out[-1]).read_text())
    assert rep["data"]["n_annotations"]["test"] > 0 and rep["data"]["groups"] == []


def test_reward_stage_trains_the_budgeted_steps(tmp_path: Path, ray_session) -> None:
    """The cap of plan.json is what the reward stage trains (and its LR schedule spans)."""
    from copl_ray.data.build import run_data_stage
    from copl_ray.reward.stage import run_reward_stage

    small = ["data.n_users=40", "data.n_unseen_users=4", "data.synthetic.n_prompts=60"]
    cfg = load_config("tiny", [*small, "reward.models=[uniform]", "train.time_budget_min=0.1"])
    run = RunDir(tmp_path)
    run_data_stage(cfg, run)
    (job,) = plan_run(cfg, run).jobs
    assert job.budget_steps == MIN_STEPS < job.steps
    run_reward_stage(cfg, run)
    m = json.loads((run.reward("uniform") / "metrics.json").read_text())
    assert m["total_steps"] == m["steps"] == MIN_STEPS


def test_named_and_local_backbones_are_timed_hub_models_are_not(tmp_path: Path) -> None:
    """minilm (installed package) and a local folder get an ETA; a hub name is not fetched
    to be timed. With reward.adapted_layers the stage's one pass over every text's frozen
    layers is timed too, in proportion to the number of texts."""
    from copl_ray.plan import _no_eta_reason, measure_fill_s

    minilm = ["reward.backbone=minilm", "reward.target_modules=[query,value]"]
    assert _no_eta_reason(load_config("tiny", minilm)) is None
    assert _no_eta_reason(load_config("tiny", [f"reward.backbone={tmp_path}"])) is None
    hub = _no_eta_reason(load_config("tiny", ["reward.backbone=some-org/some-model"]))
    assert hub is not None and "hub model" in hub
    cached = load_config("tiny", [*minilm, "reward.adapted_layers=1", "reward.max_length=32"])
    assert measure_fill_s(load_config("tiny", minilm), 1000) == 0.0  # no cache, no pass
    one, many = measure_fill_s(cached, 80), measure_fill_s(cached, 8000)
    assert 0 < one and 20 * one < many  # ~100x the texts: noisy timing, a loose bound
