"""Ray Tune over the reward stage: space files, concurrency, and a real 2-trial sweep."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from copl_ray.config import ConfigError, load_config
from copl_ray.tune import load_space, max_concurrent_trials, run_sweep, trial_config

SPACE = "tune_spaces/tiny.yaml"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "data.n_users=40",
    "data.n_unseen_users=4",
    "data.synthetic.n_prompts=60",
    "gnn.epochs=10",
    "train.max_steps=8",
    "train.eval_every=2",
    "train.log_every=2",
    "train.ckpt_every=8",
    "train.batch_size=8",
]
# ASHA rungs at steps 2 and 4 of 8: a trial can be stopped while it still has steps left.
ASHA = {"max_t": 8, "grace_period": 2, "reduction_factor": 2}


def test_space_files_validate():
    for name in os.listdir(os.path.join(REPO, "tune_spaces")):
        space = load_space(os.path.join(REPO, "tune_spaces", name))
        assert {"reward.num_experts", "reward.rank", "reward.temperature"} <= set(space.search)


@pytest.mark.parametrize(
    "text,message",
    [
        ("search: {reward.num_expert: {choice: [2]}}", "search.reward.num_expert: unknown"),
        ("search: {reward.rank: {normal: [2, 1]}}", "search.reward.rank: expected one of"),
        ("serch: {}", "unknown key"),
        ("search: {}", "at least one key"),
    ],
)
def test_bad_space_names_the_key(tmp_path, text, message):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_space(f)


def test_trial_config_applies_params_and_trains_one_model():
    base = load_config("tiny").to_dict()
    cfg = trial_config(base, {"reward.num_experts": 2, "train.lr": 0.003}, "copl")
    assert cfg.reward.num_experts == 2 and cfg.train.lr == 0.003
    assert cfg.reward.models == ["copl"] and base["reward"]["num_experts"] == 4
    with pytest.raises(ConfigError, match="reward.rank"):
        trial_config(base, {"reward.rank": "wide"}, "copl")


def test_best_trial_of_a_tie_does_not_depend_on_the_grid_order(tmp_path):
    """Two trials tie on their best val_acc: the lower trial id wins whatever order the
    grid lists them in (a resumed sweep lists them in another order)."""
    from ray.tune import Result

    from copl_ray.tune import write_results

    space = load_space(os.path.join(REPO, SPACE))
    cfg = load_config("tiny")
    grid = []
    for tid, lr, accs in (("t_00000", 0.001, [0.6, 0.65]), ("t_00001", 0.002, [0.65, 0.62])):
        params = {
            "reward.num_experts": 4,
            "reward.rank": 2,
            "reward.temperature": 0.7,
            "train.lr": lr,
        }
        grid.append(
            Result(
                metrics={
                    "trial_id": tid,
                    "config": params,
                    "val_acc": accs[-1],
                    "step": 8,
                    "total_steps": 8,
                },
                checkpoint=None,
                error=None,
                path=str(tmp_path / tid),
                metrics_dataframe=pd.DataFrame({"val_acc": accs}),
            )
        )
    bests = []
    for order in (grid, grid[::-1]):
        out = tmp_path / str(len(bests))
        out.mkdir()
        bests.append(write_results(order, space, cfg, out)["best"])
    assert bests[0] == bests[1] and bests[0]["train.lr"] == 0.001


def test_concurrency_is_bounded_by_resources():
    cfg = load_config("tiny", ["train.num_workers=1", "train.cpus_per_worker=0.4"])
    # 2 CPUs: one kept for Ray Data tasks, 0.5 per trial (0.4 worker + 0.1 trial) -> 2
    assert max_concurrent_trials(cfg, 2.0, 0.0) == 2
    cfg = load_config("tiny")  # 2 workers x 0.5 CPU + 0.1: only one trial fits next to Data
    assert max_concurrent_trials(cfg, 2.0, 0.0) == 1
    gpu = load_config("ufp4-gemma-7b", ["train.use_gpu=true"])
    assert max_concurrent_trials(gpu, 400.0, 16.0) == 2  # 8 GPUs per trial


def test_tiny_sweep_reuses_one_gnn_and_resumes(ray_session, tmp_path):
    space = load_space(os.path.join(REPO, SPACE))
    space.scheduler = ASHA
    cfg = load_config(space.base, [*space.overrides, *SMALL, f"run.dir={tmp_path / 'run'}"])
    out = run_sweep(space, cfg, out_dir=tmp_path / "sweep")

    gnn_marker = (tmp_path / "run" / "gnn" / "_SUCCESS").read_text()
    table = pd.read_csv(out["results_csv"])
    assert len(table) == 2 and (table["status"] == "OK").all(), table.to_string()
    assert table["best_val_acc"].between(0, 1).all()
    # ASHA saw the trials while they trained: every validation (each 2nd step) reached Tune
    # as its own result up to the step the trial ended at, and a trial ASHA let run (the
    # first at each rung always is) gave 4 reports, one per step 2/4/6/8. Whether ASHA
    # also stops the other depends on two noisy val accuracies (40 val pairs; measured once:
    # 0.325 vs 0.55 at step 2, stopped there), so the test only checks that a trial ended
    # before max_t exactly when it is flagged early_stop.
    assert (table["reports"] == table["steps"] // 2).all(), table.to_string()
    assert table["reports"].max() == 4, table.to_string()
    assert (table["early_stop"] == (table["steps"] < 8)).all()
    print(table.to_string())  # the sweep's decisions, for the log
    assert set(space.search) <= set(table.columns)
    # every trial trained on the one GNN artifact (a link into the base run, not a copy)
    trial_links = list((tmp_path / "sweep" / "trials").glob("*/run/gnn"))
    assert len(trial_links) == 2 and all(p.is_symlink() for p in trial_links)
    assert all(p.resolve() == (tmp_path / "run" / "gnn").resolve() for p in trial_links)
    # a trial that ran to its last step saved its model; one ASHA stopped did not
    finished = dict(zip(table["trial"].astype(str), ~table["early_stop"]))
    for link in trial_links:
        saved = (link.parent / "reward" / "copl" / "metrics.json").exists()
        assert saved == finished[link.parent.parent.name], table.to_string()

    best = load_config(str(out["best_config"]))
    for key, value in out["best"].items():
        section, name = key.split(".")
        assert getattr(getattr(best, section), name) == pytest.approx(value)
    assert best.reward.models == cfg.reward.models  # a full config, all models again
    assert out["best_metric"] == pytest.approx(table["best_val_acc"].max())

    # --resume on a finished sweep restores Tune's state: same trials, no GNN rerun
    again = run_sweep(space, cfg, out_dir=tmp_path / "sweep", resume=True)
    assert again["n_trials"] == 2 and again["best"] == out["best"]
    assert (tmp_path / "run" / "gnn" / "_SUCCESS").read_text() == gnn_marker
    assert json.loads((tmp_path / "run" / "report.json").read_text())["gnn"]["epochs"] == 10
