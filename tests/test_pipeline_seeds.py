"""``python jobs/full.py --seeds 0,1``: refusals before any stage, and one short real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the tiny default shrunk to a few steps of every stage; CoPL only (Oracle trains one Ray
# Train run per group: ~50 s each here); the Oracle gap is tested in test_report_seeds.py
SHRUNK = [
    "data.n_users=40",
    "data.n_unseen_users=4",
    "data.synthetic.n_prompts=60",
    "gnn.epochs=10",
    "gnn.tsne=false",
    "gnn.eval_every=5",
    "reward.models=[copl]",
    "train.max_steps=6",
    "train.eval_every=6",
    "adapt.variants=[weighted]",
    "adapt.user_opt_steps=1",
    "eval.label_counts=[8]",
]


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "jobs/full.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seeds", "0,x"], "--seeds '0,x': expected a comma list of integers >= 0"),
        (["--seeds=-1,2"], "--seeds '-1,2': expected a comma list"),
        (["--seeds", "3"], "--seeds '3': give at least two distinct seeds"),
        (["--seeds", "1,1"], "--seeds '1,1': give at least two distinct seeds"),
        (["--seeds", "0,1", "--set", "gnn.seed=4"], "--set gnn.seed=4: ambiguous beside --seeds"),
        (["--seeds", "0,1", "--set", "gnn.epoch=4"], "gnn.epoch: unknown key"),
    ],
)
def test_bad_seeds_exit_2_in_one_line_before_any_stage(tmp_path, args, message):
    r = _run("--run-dir", str(tmp_path / "run"), *args)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert message in r.stderr
    assert "stage" not in r.stdout and not (tmp_path / "run" / "seed-0").exists()


def test_seeds_run_reports_mean_and_sd_of_each_seed(tmp_path):
    """Two complete shrunk runs, each a normal run dir; the aggregate cells are their stats."""
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--seeds", "0,1"]
    for item in SHRUNK:
        args += ["--set", item]
    r = _run(*args, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str((run / "report.json").resolve())
    per = [json.loads((run / f"seed-{s}" / "report.json").read_text()) for s in (0, 1)]
    for seed, rep in zip((0, 1), per):  # every stage of the seed's run got the seed
        assert {rep["config"][k]["seed"] for k in ("data", "gnn", "reward", "train")} == {seed}
        assert rep["executed"] == ["data", "gnn", "reward", "eval"]
    agg = json.loads((run / "report.json").read_text())
    for name in ("copl",):
        for split in ("seen", "unseen"):
            cell = agg["models"][name][split]["overall"]
            values = [p["models"][name][split]["overall"] for p in per]
            assert cell["values"] == values and cell["n"] == 2
            assert cell["mean"] == pytest.approx(sum(values) / 2)
            assert cell["sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    cell = agg["models"]["copl"]["seen"]["overall"]
    md = (run / "report.md").read_text()
    assert f"| CoPL | {100 * cell['mean']:.2f} ± {100 * cell['sd']:.2f} |" in md
    assert agg["seeds"]["copl_oracle_gap"] == {} and "Oracle − CoPL" not in r.stdout
    assert agg["data"]["n_users_seen"] == 40  # equal in both seeds: plain

    again = _run(*args, timeout=300)  # a rerun reuses both seeds' stages (no Ray starts)
    assert again.returncode == 0, again.stderr[-3000:]
    reuse = "plan: data (reuse), gnn (reuse), reward (reuse), eval (reuse)"
    assert again.stdout.count(reuse) == 2 and "starting a local Ray" not in again.stdout
    assert json.loads((run / "report.json").read_text())["models"] == agg["models"]


def test_seeds_run_holds_the_run_dir_lock(tmp_path):
    from copl_ray.pipeline import run_dir_lock

    with run_dir_lock(str(tmp_path / "run")):
        r = _run("--run-dir", str(tmp_path / "run"), "--seeds", "0,1", "--stages", "data")
    assert r.returncode == 2 and "is in use by pid" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "seed-0").exists()
