"""Metrics a user can watch while training (copl_ray/tracking.py), read back for real.

The GNN and a reward model train as real Ray Train jobs; their TensorBoard event files are
read with tensorboard's own reader (what ``tensorboard --logdir RUN`` shows), the MLflow
switch writes to a local ``file:`` store and W&B runs offline (no server).
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import sys
from pathlib import Path

import pytest

from copl_ray.artifacts import RunDir
from copl_ray.config import ConfigError, load_config
from copl_ray.tracking import TAGS, check_tracking, log_eval, scalars, tensorboard_dir

GNN = [
    "data.n_users=60",
    "data.n_unseen_users=6",
    "data.synthetic.n_prompts=80",
    "gnn.dim=16",
    "gnn.epochs=20",
    "gnn.eval_every=5",
    "gnn.ckpt_every=10",
    "gnn.tsne=false",
    "adapt.variants=[weighted]",
]
GNN_TAGS = {
    "loss/train",
    "accuracy/val",
    "accuracy/best_val",
    "lr",
    "throughput/pairs_per_s",
    "throughput/seconds_per_epoch",
    "progress/eta_s",
}


def read_tensorboard(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard loads the folder (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def gnn_run(tmp_path: Path, *overrides: str):
    from copl_ray.data.build import run_data_stage

    cfg = load_config("tiny", [*GNN, *overrides, f"run.dir={tmp_path}"])
    run = RunDir(tmp_path)
    run_data_stage(cfg, run)
    return cfg, run


def test_gnn_tensorboard_written_while_training_and_once_per_step_after_resume(
    ray_session, tmp_path, monkeypatch
):
    """The events of the epochs before a crash are on disk when it happens (written per
    report, flushed; Ray drops a report still queued on a worker that fails, so epoch 15
    may be missing), and the resumed run (from its epoch-10 checkpoint) completes the
    curves with every epoch once."""
    from copl_ray.graph.stage import FAULT_ENV, run_gnn_stage

    cfg, run = gnn_run(tmp_path, "gnn.max_failures=0")
    logdir = tensorboard_dir(run.root, "gnn")
    monkeypatch.setenv(FAULT_ENV, "15")
    with pytest.raises(RuntimeError, match="injected worker failure"):
        run_gnn_stage(cfg, run)
    before = read_tensorboard(logdir)
    assert set(before) == GNN_TAGS
    assert [s for s, _ in before["loss/train"]][:2] == [5, 10]

    monkeypatch.delenv(FAULT_ENV)
    metrics = run_gnn_stage(cfg, run)
    after = read_tensorboard(logdir)
    assert set(after) == GNN_TAGS
    for tag in GNN_TAGS:
        assert [s for s, _ in after[tag]] == [5, 10, 15, 20], tag
    assert len(glob.glob(str(logdir / "events.out.tfevents.*"))) == 2  # one per attempt
    # the logged values are the trained run's: the final val accuracy is the stage's
    assert after["accuracy/val"][-1][1] == pytest.approx(metrics["val_curve"][-1], abs=1e-6)
    assert all(v > 0 for _, v in after["throughput/pairs_per_s"])


def test_resumed_steps_replace_the_interrupted_attempts(tmp_path):
    """A resumed attempt re-logs the steps after its checkpoint: TensorBoard shows the new
    values once (purge_step = the attempt's first step), not both attempts' points."""
    from copl_ray.tracking import Tracker, tracking_spec

    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    spec = tracking_spec(cfg, tmp_path, "reward", "copl", last_step=5)
    first = Tracker(spec)
    for step in (1, 2, 3, 4):  # interrupted after step 4; its last checkpoint was step 2
        first.log({"loss/train": 1.0}, step)
    second = Tracker(spec)
    for step in (3, 4, 5):
        second.log({"loss/train": 2.0}, step)
    second.close()
    tb = read_tensorboard(tensorboard_dir(tmp_path, "reward", "copl"))
    assert tb["loss/train"] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0), (5, 2.0)]


def wandb_history(run_file: str) -> list[dict]:
    """History rows of an offline W&B run file (LevelDB log records of W&B protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, rows, pos, buf, block = Path(run_file).read_bytes(), [], 7, b"", 32768
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        buf, pos = buf + raw[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST fragment: one record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


def test_gnn_mlflow_and_wandb_switches(ray_session, tmp_path, monkeypatch):
    """One switch each: MLflow (file store) and W&B (offline) get the GNN's scalars."""
    from mlflow.tracking import MlflowClient

    from copl_ray.graph.stage import run_gnn_stage

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's own reader (MLflow 3)
    store = tmp_path / "mlruns"
    cfg, run = gnn_run(
        tmp_path / "run",
        "run.tensorboard=false",
        f"run.mlflow_tracking_uri=file:{store}",
        "run.wandb_project=copl-test",
        "run.tracking_name=tracking-test",
    )
    check_tracking(cfg)
    run_gnn_stage(cfg, run)
    assert not (run.root / "tensorboard").exists()  # its switch is off

    client = MlflowClient(store.as_uri())
    (exp,) = [e for e in client.search_experiments() if e.name == "tracking-test"]
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert mlrun.info.run_name == "gnn" and mlrun.info.status == "FINISHED"
    assert GNN_TAGS <= set(mlrun.data.metrics)
    steps = [m.step for m in client.get_metric_history(mlrun.info.run_id, "loss/train")]
    assert sorted(steps) == [5, 10, 15, 20]
    assert mlrun.data.params["gnn/epochs"] == "20"  # the stage's config sections

    (run_file,) = glob.glob(str(run.root / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = [r for r in wandb_history(run_file) if "loss/train" in r]
    assert [r["_step"] for r in rows] == [5, 10, 15, 20]
    assert GNN_TAGS <= set(rows[-1])


def test_reward_model_tensorboard_scalars(ray_session, tmp_path):
    """A CoPL reward model on 2 workers: loss, accuracy, lr, throughput and the share of the
    samples routed to each expert, at every log step."""
    import numpy as np

    from copl_ray.data.build import build_tables
    from copl_ray.reward.shards import read_lookups
    from copl_ray.reward.stage import load_user_table, prepare_tokenizer, train_reward_model

    cfg = load_config(
        "tiny",
        [
            "data.n_users=40",
            "data.n_unseen_users=4",
            "data.synthetic.n_prompts=60",
            "reward.max_length=64",
            "gnn.dim=16",
            "train.batch_size=8",
            "train.max_steps=4",
            "train.log_every=1",
            "train.eval_every=2",
            "train.ckpt_every=4",
            f"run.dir={tmp_path}",
        ],
    )
    run = RunDir(tmp_path)
    build_tables(cfg).write(run.data)
    users, _ = load_user_table(cfg, run, need_embeddings=False)
    group = np.array([float(g == users.groups[0]) for g in users.groups])[:, None]
    table = ((2 * group - 1) * np.ones((1, cfg.gnn.dim))).astype(np.float32)
    train_reward_model(
        cfg,
        run,
        job="copl",
        variant="copl",
        out_dir=run.reward("copl"),
        users=users,
        user_embeddings=table,
        tokenizer_dir=prepare_tokenizer(cfg, run),
        lookups=read_lookups(run.data, users),
    )
    tb = read_tensorboard(tensorboard_dir(run.root, "reward", "copl"))
    experts = {f"expert_usage/expert_{i}" for i in range(cfg.reward.num_experts)}
    every_step = {
        "loss/train",
        "accuracy/train",
        "lr",
        "throughput/tokens_per_s",
        "throughput/pairs_per_s",
        "progress/eta_s",
    }
    assert set(tb) == every_step | experts | {"accuracy/val"}
    for tag in every_step | experts:
        assert [s for s, _ in tb[tag]] == [1, 2, 3, 4], tag
    assert [s for s, _ in tb["accuracy/val"]] == [2, 4]
    for step in range(4):  # shares of one window add up to 1
        assert math.isclose(sum(tb[t][step][1] for t in experts), 1.0, rel_tol=1e-5)
    assert tb["lr"][0][1] != tb["lr"][-1][1]  # the schedule moves


def test_eval_results_logged(tmp_path):
    """The eval stage's results: accuracies per model and split at step 0, the labels
    curve with the number of labels as its step."""
    results = {
        "models": {
            "copl": {
                "seen": {"overall": 0.9, "common": 0.95, "controversial": 0.85},
                "unseen": {"overall": 0.8, "common": None, "controversial": None},
            },
            "no_gnn": {"seen": {"overall": 0.7}, "unseen": {"overall": None}},
        },
        "adaptation": {"weighted": {"unseen": {"overall": 0.81}}},
        "labels_curve": {"counts": [1, 2, 4], "accuracy": [0.6, 0.7, 0.8]},
        "expert_usage": {"seen": {"share": [0.5, 0.5, 0.0]}, "allocation": {}},
        "onboarding": {"selectors": {"copl": {"answers": [1, 16], "accuracy": [0.9, 0.95]}}},
    }
    cfg = load_config("tiny", [f"run.dir={tmp_path}"])
    log_eval(cfg, tmp_path, results)
    tb = read_tensorboard(tensorboard_dir(tmp_path, "eval"))
    rounded = {t: [(s, round(v, 6)) for s, v in rows] for t, rows in tb.items()}  # float32
    assert rounded == {
        "labels_curve/unseen_accuracy": [(1, 0.6), (2, 0.7), (4, 0.8)],
        "onboarding/unseen_accuracy/copl": [(1, 0.9), (16, 0.95)],
        "accuracy/seen/copl": [(0, 0.9)],
        "accuracy_common/seen/copl": [(0, 0.95)],
        "accuracy_controversial/seen/copl": [(0, 0.85)],
        "accuracy/unseen/copl": [(0, 0.8)],
        "accuracy/seen/no_gnn": [(0, 0.7)],
        "adaptation/unseen/weighted": [(0, 0.81)],
        "expert_usage/seen/expert_0": [(0, 0.5)],
        "expert_usage/seen/expert_1": [(0, 0.5)],
        "expert_usage/seen/expert_2": [(0, 0.0)],
    }


def test_scalar_names():
    row = {"step": 3, "loss": 0.5, "val_acc": None, "expert_usage": [0.25, 0.75], "flag": True}
    assert scalars(row) == {
        "loss/train": 0.5,
        "expert_usage/expert_0": 0.25,
        "expert_usage/expert_1": 0.75,
    }
    assert TAGS["val_acc"] == TAGS["val_accuracy"]  # GNN and reward share the val curve


def test_mlflow_file_store_paths_cross_into_ray_absolute(tmp_path, monkeypatch):
    from copl_ray.tracking import absolute_mlflow_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_mlflow_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert absolute_mlflow_uri("file:./mlruns") == (tmp_path / "mlruns").as_uri()
    assert absolute_mlflow_uri("file:///abs/mlruns") == "file:///abs/mlruns"
    assert absolute_mlflow_uri("http://host:5000") == "http://host:5000"


def test_all_switches_off_no_callback(tmp_path):
    from copl_ray.tracking import callbacks

    cfg = load_config("tiny", ["run.tensorboard=false"])
    assert callbacks(cfg, tmp_path, "gnn", last_step=3) == []
    assert len(callbacks(load_config("tiny"), tmp_path, "gnn", last_step=3)) == 1


@pytest.mark.parametrize(
    "field,module", [("mlflow_tracking_uri", "mlflow"), ("wandb_project", "wandb")]
)
def test_check_tracking_names_the_field_and_the_pip_command(field, module, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config("tiny", [f"run.{field}=file:/tmp/x"])
    check_tracking(cfg)  # installed (the test extra)
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(
        ConfigError, match=rf"^run\.{field}: .*{module}.*pip install \"copl-ray\[tracking\]\""
    ):
        check_tracking(cfg)
    with pytest.raises(ConfigError, match=rf"^run\.{field}: empty"):
        check_tracking(load_config("tiny", [f"run.{field}=' '"]))


def test_check_tracking_wandb_needs_a_key(monkeypatch, tmp_path):
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    cfg = load_config("tiny", ["run.wandb_project=p"])
    with pytest.raises(ConfigError, match=r"^run\.wandb_project: no W&B API key"):
        check_tracking(cfg)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    check_tracking(cfg)


def test_fresh_stage_wipes_its_curves(tmp_path):
    from copl_ray.pipeline import stage_paths

    run = RunDir(tmp_path)
    assert tensorboard_dir(run.root, "gnn") in stage_paths(run, "gnn")
    assert tensorboard_dir(run.root, "reward") in stage_paths(run, "reward")
    assert os.path.isabs(tensorboard_dir("rel/run", "eval"))


def test_tiny_run_holds_tensorboard_files_of_every_stage(tiny_run):
    """The documented run (docs/operations.md): ``tensorboard --logdir RUN`` finds the GNN, every reward model
    (each oracle group its own) and the eval, with the scalars of each."""
    cfg = load_config(str(tiny_run.root / "config.yaml"))
    gnn = read_tensorboard(tensorboard_dir(tiny_run.root, "gnn"))
    assert GNN_TAGS <= set(gnn)
    evals = list(range(cfg.gnn.eval_every, cfg.gnn.epochs + 1, cfg.gnn.eval_every))
    assert [s for s, _ in gnn["accuracy/val"]] == evals
    reward_root = tensorboard_dir(tiny_run.root, "reward")
    jobs = sorted(p.name for p in reward_root.iterdir())
    expected = {m for m in cfg.reward.models if m != "oracle"}
    assert expected <= set(jobs)
    assert ("oracle" in cfg.reward.models) == any(j.startswith("oracle-") for j in jobs)
    for job in jobs:
        tb = read_tensorboard(reward_root / job)
        assert {"loss/train", "accuracy/val", "lr", "throughput/pairs_per_s"} <= set(tb), job
        routed = job == "copl" or job == "no_gnn"  # the gated variants
        assert any(t.startswith("expert_usage/") for t in tb) == routed, job
    ev = read_tensorboard(tensorboard_dir(tiny_run.root, "eval"))
    assert {f"accuracy/seen/{m}" for m in cfg.reward.models} <= set(ev)
