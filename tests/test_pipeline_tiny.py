"""The real tiny run (``tiny_run``: data → gnn → reward → eval → report, once per session)."""

from __future__ import annotations

import json
import re
import shutil

from copl_ray.artifacts import RunDir
from copl_ray.config import load_config
from copl_ray.pipeline import STAGES, run_pipeline
from copl_ray.report import SPLIT_KEYS


def _report(run: RunDir) -> dict:
    return json.loads(run.report_json.read_text())


def test_tiny_run_report_is_complete(tiny_run, accuracy_record_check, gnn_heldout_check):
    rep = _report(tiny_run)
    cfg = load_config(str(tiny_run.root / "config.yaml"))
    data = rep["data"]
    assert data["source"] == "synthetic" and data["n_users_seen"] == cfg.data.n_users
    assert data["n_users_unseen"] == cfg.data.n_unseen_users
    gnn_heldout_check(tiny_run.root, data["n_annotations"]["val"])
    assert set(rep["models"]) == set(cfg.reward.models)
    for name, model in rep["models"].items():
        assert set(model["seen"]) == set(SPLIT_KEYS), name
        # the figure is backed by the users and test pairs of the run's data
        accuracy_record_check(model["seen"], tiny_run.data, True, name)
    for name in ("copl", "uniform"):  # unseen users exist for the models that adapt
        accuracy_record_check(rep["models"][name]["unseen"], tiny_run.data, False, name)
    assert rep["adaptation"]
    for rule, v in rep["adaptation"].items():
        if v["unseen"]["overall"] is not None:
            accuracy_record_check(v["unseen"], tiny_run.data, False, rule)
    assert all(rep["timings"][f"{s}_s"] == tiny_run.stage_seconds(s) > 0 for s in STAGES)
    assert rep["timings"]["total_s"] == round(sum(tiny_run.stage_seconds(s) for s in STAGES), 3)
    for key in ("tsne", "expert_allocation", "labels_curve", "accuracy"):
        assert rep["figures"][key], key
        assert (tiny_run.root / rep["figures"][key]).stat().st_size > 1000, key
    md = tiny_run.report_md.read_text()
    for heading in (
        "Table 1",
        "Table 2",
        "Table 4",
        "Table 5",
        "Fig. 2",
        "Fig. 1/4",
        "Fig. 3",
        "## Data",
        "Wall time per stage",
        "Package versions",
        "Resolved config",
    ):
        assert heading in md, heading


def test_tiny_run_is_reused_and_an_interrupted_stage_resumes(tiny_run, tmp_path):
    """Same config → nothing reruns; a missing eval marker (interrupted eval) → only eval."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.root, copy, symlinks=True)
    cfg = load_config(str(tiny_run.root / "config.yaml"), [f"run.dir={copy}"])
    markers = {s: (copy / s / "_SUCCESS").read_text() for s in STAGES}

    run_pipeline(cfg)
    assert _report(RunDir(copy))["executed"] == []
    assert {s: (copy / s / "_SUCCESS").read_text() for s in STAGES} == markers

    (copy / "eval" / "_SUCCESS").unlink()
    run_pipeline(cfg)
    rep = _report(RunDir(copy))
    assert rep["executed"] == ["eval"]
    for s in ("data", "gnn", "reward"):
        assert (copy / s / "_SUCCESS").read_text() == markers[s]
    assert rep["models"]["copl"]["seen"] == _report(tiny_run)["models"]["copl"]["seen"]


# What a quiet run prints: its own stage / plan lines, the GNN's and each reward model's
# progress lines (with ETA), the report path. Anything else on the console is Ray's,
# DeepSpeed's or a library's chatter.
OWN_LINE = re.compile(r"^(\[copl-ray [\d:]+\] |gnn[: ]|\[reward\] |\[[\w.-]+\] step \d+/\d+ )")
NOISE = (
    "Traceback",
    "placement_group_cleaner",
    "multiple active Ray instances",
    "Progress bars disabled",
    "execution finished in",
    "built successfully",
    "UserWarning",
    "PreemptionWatcher",
    "Failed to query",
)
# Lines of Ray's own that a run may show beside its own (counted, MAX_FOREIGN_LINES): the
# raylet's note that it started more worker processes than 4x its startup concurrency (=
# the CPU count: each model starts a Train controller, two workers and two data-split
# coordinators), and the GCS's "Failed to kill actor ... Socket closed" when ray.shutdown
# closes a worker's socket before the GCS's own kill of that actor (a shutdown race).
RAY_LIFECYCLE_LINE = re.compile(
    r"worker processes have been started on node"
    r"|\(gcs_server\) gcs_actor_scheduler\.cc:\d+: Failed to kill actor .*Socket closed"
)
# The tiny run starts 5 Ray Train runs (GNN, copl, uniform, oracle x 2 groups); each may
# end in one GCS kill race at its shutdown, and the raylet notes its worker count once.
MAX_FOREIGN_LINES = 5 + 1


def test_readme_command_prints_the_report_path_last_on_a_quiet_console(tiny_job):
    """README command (1) from a copy of the repository: exit 0, report.json last, and a
    console of stage lines, progress and results only (counted)."""
    assert tiny_job.stdout.strip().splitlines()[-1] == str(tiny_job.run.report_json)
    assert tiny_job.run.report_json.exists() and tiny_job.run.root.is_relative_to(tiny_job.repo)
    console = tiny_job.console
    noisy = [line for line in console if any(n in line for n in NOISE)]
    assert not noisy, noisy[:5]
    report_line = str(tiny_job.run.report_json)
    foreign = [line for line in console if not (OWN_LINE.match(line) or line == report_line)]
    assert len(foreign) <= MAX_FOREIGN_LINES, foreign
    assert all(RAY_LIFECYCLE_LINE.search(line) for line in foreign), foreign
    cfg = load_config(str(tiny_job.run.root / "config.yaml"))
    epochs_logged = cfg.gnn.epochs // cfg.gnn.eval_every
    assert sum(line.startswith("gnn epoch") for line in console) == epochs_logged
    assert len(console) < 150, len(console)  # ~100 own lines on the tiny default
