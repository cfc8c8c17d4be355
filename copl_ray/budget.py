"""The step budget a run's plan gave each reward job (``run_dir/plan.json``).

:mod:`copl_ray.plan` (pipeline level) writes the file before the reward stage; the reward
stage reads its caps here, so the stage does not import the planner that times it.
"""

from __future__ import annotations

import json

from copl_ray.artifacts import STAGE_SECTIONS, RunDir
from copl_ray.config import Config

PLAN_FILE = "plan.json"


def plan_key(cfg: Config) -> str:
    return cfg.section_hash(*STAGE_SECTIONS["reward"])


def planned_steps(cfg: Config, run: RunDir, job: str) -> int | None:
    """The budgeted steps of ``job`` from ``run_dir/plan.json``; None when not capped.

    Read by the reward stage; a plan.json of another config (key mismatch) is ignored.
    """
    path = run.root / PLAN_FILE
    try:
        plan = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return None  # damaged by hand: plan_run (before this stage) rewrites it
    if plan.get("key") != plan_key(cfg):
        return None
    for j in plan.get("jobs", []):
        if j["job"] == job and j["budget_steps"] < j["steps"]:
            return int(j["budget_steps"])
    return None
