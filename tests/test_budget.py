"""copl_ray/budget.py: the reward stage reads its step caps from ``run_dir/plan.json``."""

from __future__ import annotations

import json
from pathlib import Path

from copl_ray.artifacts import STAGE_SECTIONS, RunDir
from copl_ray.budget import PLAN_FILE, plan_key, planned_steps
from copl_ray.config import load_config
from copl_ray.plan import MIN_STEPS, plan_run


def _write_plan(run: RunDir, key: str, jobs: list[dict]) -> None:
    (run.root / PLAN_FILE).write_text(json.dumps({"key": key, "jobs": jobs}))


def test_plan_key_is_the_hash_of_the_reward_stage_sections() -> None:
    cfg = load_config("tiny")
    assert plan_key(cfg) == cfg.section_hash(*STAGE_SECTIONS["reward"])
    # a reward-side change moves the key; an eval-only change does not
    assert plan_key(load_config("tiny", ["train.time_budget_min=0.5"])) != plan_key(cfg)
    assert plan_key(load_config("tiny", ["eval.batch_size=7"])) == plan_key(cfg)


def test_capped_job_gets_its_budget_uncapped_and_unknown_jobs_none(tmp_path: Path) -> None:
    cfg, run = load_config("tiny"), RunDir(tmp_path)
    jobs = [
        {"job": "copl", "steps": 129, "budget_steps": 40},
        {"job": "uniform", "steps": 129, "budget_steps": 129},
    ]
    _write_plan(run, plan_key(cfg), jobs)
    assert planned_steps(cfg, run, "copl") == 40
    assert planned_steps(cfg, run, "uniform") is None  # budget == schedule: not capped
    assert planned_steps(cfg, run, "oracle") is None  # not in the plan


def test_missing_damaged_or_foreign_plan_caps_nothing(tmp_path: Path) -> None:
    cfg, run = load_config("tiny"), RunDir(tmp_path)
    assert planned_steps(cfg, run, "copl") is None  # no plan.json
    (run.root / PLAN_FILE).write_text('{"key": "abc", "jobs": [')  # cut off mid-write
    assert planned_steps(cfg, run, "copl") is None
    _write_plan(run, "0" * 16, [{"job": "copl", "steps": 129, "budget_steps": 40}])
    assert planned_steps(cfg, run, "copl") is None  # another config's plan


def test_plan_json_carries_the_cap_for_this_config_only(tmp_path: Path) -> None:
    from copl_ray.data.build import run_data_stage

    cfg = load_config("tiny", ["train.time_budget_min=0.5", "reward.models=[copl,uniform]"])
    run = RunDir(tmp_path)
    run_data_stage(cfg, run)
    plan = plan_run(cfg, run)
    assert plan.capped and not plan.reused
    cap = {j.job: j.budget_steps for j in plan.jobs}
    assert all(MIN_STEPS <= n < 129 for n in cap.values())
    assert planned_steps(cfg, run, "copl") == cap["copl"]
    # a rerun of the same config: the same plan, not measured again
    again = plan_run(cfg, run)
    assert again.reused and {j.job: j.budget_steps for j in again.jobs} == cap
    # another config (no budget): plan.json is not its plan
    other = load_config("tiny", ["train.time_budget_min=null", "reward.models=[copl,uniform]"])
    assert planned_steps(other, run, "copl") is None
