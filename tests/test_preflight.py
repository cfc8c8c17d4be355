"""Issue 17: every misuse is answered before the first stage, one line, exit 2.

In-process tests of copl_ray.preflight (run dir, names, backbone modules, models that
follow the data, Ray resources, rules that need the data) and of the job error handler;
then ``python jobs/full.py`` as a user runs it, for each misuse of the issue: exit 2, one
stderr line naming the field, no traceback, no stage started.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from copl_ray.config import ConfigError, load_config
from copl_ray.pipeline import STAGES, add_run_arguments, config_from_args, main_with_errors
from copl_ray.preflight import (
    check_cluster_resources,
    check_ray_address,
    check_ray_request,
    check_run_dir,
    check_with_data,
    preflight,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.n_users=40", "data.n_unseen_users=4", "data.synthetic.n_prompts=60"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def _unused_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefs(path: Path, group: bool = False) -> Path:
    """A small own-data CSV, with or without a ``group`` column."""
    rows = ["user_id,prompt,chosen,rejected" + (",group" if group else "")]
    for u in range(8):
        for p in range(4):
            g = f",g{u % 2}" if group else ""
            rows.append(f"user{u},question {p}?,long answer {p},short {p}{g}")
    path.write_text("\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------------ paths
def test_cli_run_dirs_are_absolute(tmp_path, monkeypatch):
    """--run-dir and the --data default runs/<stem> become absolute against the cwd."""
    monkeypatch.chdir(tmp_path)
    assert config_from_args(_args()).run.dir == str(tmp_path / "runs" / "tiny")
    assert config_from_args(_args("--run-dir", "out")).run.dir == str(tmp_path / "out")
    prefs = _prefs(tmp_path / "my_prefs.csv")
    cfg = config_from_args(_args("--data", "my_prefs.csv"))
    assert cfg.run.dir == str(tmp_path / "runs" / "my_prefs")
    assert cfg.data.path == str(prefs)


# --------------------------------------------------------------------- run dir
def test_run_dir_that_is_a_file_fails(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(ConfigError, match="run.dir: .*taken' is an existing file"):
        check_run_dir(load_config("tiny", [f"run.dir={f}"]))
    with pytest.raises(ConfigError, match="run.dir: cannot create .*taken/sub"):
        check_run_dir(load_config("tiny", [f"run.dir={f / 'sub'}"]))


def test_read_only_run_dir_fails(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 0o555 does not stop root's writes")
        with pytest.raises(ConfigError, match="run.dir: .*ro' is not writable"):
            check_run_dir(load_config("tiny", [f"run.dir={ro}"]))
    finally:
        ro.chmod(0o755)


def test_unwritable_existing_folder_fails_even_for_root():
    """/sys is a folder that refuses new files even to root (os.access says yes there):
    the write probe is what catches it."""
    try:
        open("/sys/.copl-probe", "w").close()
        pytest.skip("/sys accepts files here")
    except OSError:
        pass
    with pytest.raises(ConfigError, match="run.dir: '/sys' is not writable"):
        check_run_dir(load_config("tiny", ["run.dir=/sys"]))
    with pytest.raises(ConfigError, match="run.dir: cannot create '/sys/copl-run'"):
        check_run_dir(load_config("tiny", ["run.dir=/sys/copl-run"]))


# ------------------------------------------------------------- names and modules
@pytest.mark.parametrize(
    "override, message",
    [
        (
            "adapt.variants=[weighted, bogus]",
            "adapt.variants[1]: unknown name 'bogus' (known: weighted, naive, user_opt)",
        ),
        (
            "reward.models=[copl, nope]",
            "reward.models[1]: unknown name 'nope' (known: oracle, uniform, copl",
        ),
        (
            "reward.target_modules=[q_proj, nope_proj]",
            "reward.target_modules[1]: 'nope_proj' is not a linear module of tiny-gemma; valid names: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
        ),
        (
            "reward.target_modules=[embed_tokens]",
            "reward.target_modules[0]: 'embed_tokens' is not a linear module",
        ),
        (
            "reward.backbone=no/such-model",
            "reward.backbone: 'no/such-model' is neither a local folder",
        ),
        (
            "reward.backbone_kwargs={nope: 1}",
            "reward.backbone_kwargs: unknown GemmaConfig fields ['nope']",
        ),
    ],
)
def test_preflight_names_the_field(tmp_path, override, message):
    cfg = load_config("tiny", [override, f"run.dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        preflight(cfg, STAGES)
    assert str(e.value).startswith(message), str(e.value)


def test_backbone_from_a_local_folder_names_its_linear_modules(tmp_path, monkeypatch):
    """A local HF folder: the module list comes from its config.json (meta device)."""
    from copl_ray.reward.backbone import tiny_gemma_config

    tiny_gemma_config(load_config("tiny").reward).save_pretrained(tmp_path / "bb")
    monkeypatch.chdir(tmp_path)
    ok = load_config("tiny", ["reward.backbone=bb", "reward.target_modules=[k_proj, o_proj]"])
    assert ok.reward.backbone == str(tmp_path / "bb")
    preflight(ok, ["reward"])
    bad = load_config("tiny", ["reward.backbone=bb", "reward.target_modules=[attn]"])
    with pytest.raises(ConfigError, match=r"'attn' is not a linear module of /.*/bb; valid"):
        preflight(bad, ["reward"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="reward.backbone: .*empty' is a folder but not a model"):
        preflight(load_config("tiny", ["reward.backbone=empty"]), ["reward"])


def test_data_only_run_skips_model_checks(tmp_path):
    """Checks belong to the stages that run: a data-only run does not need a backbone."""
    preflight(load_config("tiny", ["reward.backbone=no/such", f"run.dir={tmp_path}"]), ["data"])


# ------------------------------------------------------------ models follow the data
def test_oracle_is_dropped_for_data_without_groups(tmp_path, capsys):
    prefs = _prefs(tmp_path / "prefs.csv")
    cfg = config_from_args(_args("--data", str(prefs), "--run-dir", str(tmp_path / "r")))
    assert cfg.reward.models == ["copl", "uniform", "oracle"]  # tiny's list
    preflight(cfg, STAGES)
    assert cfg.reward.models == ["copl", "uniform"]
    assert "prefs.csv has no user groups: reward.models without 'oracle'" in capsys.readouterr().out


def test_oracle_named_by_the_user_fails_before_any_stage(tmp_path):
    prefs = _prefs(tmp_path / "prefs.csv")
    args = _args(
        "--data",
        str(prefs),
        "--set",
        "reward.models=[copl, oracle]",
        "--run-dir",
        str(tmp_path / "r"),
    )
    with pytest.raises(
        ConfigError,
        match=r"reward.models: 'oracle' needs known user groups; "
        r".*prefs.csv has no group column",
    ):
        preflight(config_from_args(args), STAGES)


def test_oracle_kept_when_the_file_has_groups(tmp_path):
    import pandas as pd

    csv = _prefs(tmp_path / "g.csv", group=True)
    parquet = tmp_path / "g.parquet"
    pd.read_csv(csv).to_parquet(parquet)
    empty = tmp_path / "e.parquet"
    pd.read_csv(csv).assign(group=None).to_parquet(empty)
    for path, kept in ((csv, True), (parquet, True), (empty, False)):
        cfg = config_from_args(_args("--data", str(path), "--run-dir", str(tmp_path / "r")))
        preflight(cfg, STAGES)
        assert ("oracle" in cfg.reward.models) == kept, path


def test_ukp_has_no_groups(tmp_path):
    cfg = load_config("tiny", ["data.source=ukp", f"run.dir={tmp_path}"])
    preflight(cfg, ["data", "gnn", "reward"])
    assert "oracle" not in cfg.reward.models


# ------------------------------------------------------------------ Ray resources
@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.cpus_per_worker=64",
            "train.cpus_per_worker: 2 workers (train.num_workers) x 64 CPUs = 128 CPUs, but ",
        ),
        ("gnn.cpus_per_worker=3", "gnn.cpus_per_worker: 3 CPUs, but "),
        (
            "train.num_workers=5",
            "train.cpus_per_worker: 5 workers (train.num_workers) x 0.5 CPUs = 2.5 CPUs, but ",
        ),
    ],
)
def test_local_ray_request_above_the_cpus_fails(tmp_path, override, message):
    import ray

    # compared with run.num_cpus, or with the Ray this process already runs (the test
    # session's, 2 CPUs) when one is up: either way 2 CPUs
    where = "the running Ray" if ray.is_initialized() else "the local Ray (run.num_cpus)"
    cfg = load_config("tiny", [override, "run.num_cpus=2", f"run.dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        check_ray_request(cfg, ["gnn", "reward", "eval"])
    assert str(e.value).startswith(f"{message}{where} has 2"), str(e.value)
    check_ray_request(cfg, ["data"])  # no Ray stage runs: nothing asked


def test_gpu_request_without_gpus_fails(tmp_path):
    import ray
    import torch

    if torch.cuda.is_available() or (ray.is_initialized() and ray.cluster_resources().get("GPU")):
        pytest.skip("a GPU is present")
    cfg = load_config("tiny", ["train.use_gpu=true", f"run.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="train.use_gpu: 2 workers .* need one GPU each"):
        check_ray_request(cfg, ["reward"])


def test_unreachable_ray_address_fails_fast(monkeypatch):
    import time

    port = _unused_port()
    cfg = load_config("tiny", [f"run.ray_address=127.0.0.1:{port}"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"run.ray_address: cannot reach Ray at 127.0.0.1:{port}"):
        check_ray_address(cfg)
    assert time.perf_counter() - t0 < 5
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS \(environment\): cannot reach"):
        check_ray_address(load_config("tiny"))


def test_remote_cluster_short_of_cpus_warns(ray_session, capsys):
    """A connected cluster may autoscale: too few CPUs now is a warning that says why."""
    cfg = load_config("tiny", ["run.ray_address=auto", "train.cpus_per_worker=64"])
    check_cluster_resources(cfg, ["reward"])
    out = capsys.readouterr().out
    assert "warning: train.cpus_per_worker: 2 workers" in out and "autoscaler" in out


# ------------------------------------------------------------- rules on the data
def test_label_counts_above_the_data_fail_after_the_data_stage(tmp_path):
    from copl_ray.artifacts import RunDir
    from copl_ray.pipeline import run_pipeline

    cfg = load_config("tiny", [*SMALL, f"run.dir={tmp_path}"])
    run_pipeline(cfg, "data")
    check_with_data(cfg, RunDir(tmp_path), STAGES)  # [1, 2, 4, 8] of 8: fine
    big = load_config("tiny", [*SMALL, f"run.dir={tmp_path}", "eval.label_counts=[1, 100000]"])
    ran: list[str] = []

    def must_not_run(cfg, run):
        ran.append("gnn")

    with pytest.raises(ConfigError) as e:  # the data stage is reused: checked up front
        run_pipeline(big, "eval", stage_funcs={"gnn": must_not_run})
    assert str(e.value) == (
        "eval.label_counts[1]: 100000 > the most adaptation labels an unseen user has (8)"
    )
    assert ran == []
    # users without any group in the built data: oracle fails here too, before the GNN
    import pyarrow.parquet as pq

    users = pq.read_table(tmp_path / "data" / "users.parquet").to_pandas()
    users.assign(group=None).to_parquet(tmp_path / "data" / "users.parquet")
    with pytest.raises(
        ConfigError,
        match="reward.models: 'oracle' needs known user groups; the data stage found none",
    ):
        check_with_data(cfg, RunDir(tmp_path), STAGES)


# ----------------------------------------------------------------- error handler
def test_handler_one_line_for_user_errors_traceback_for_bugs(capsys):
    from copl_ray.config import AdaptConfig
    from copl_ray.graph.adapt import _check_params

    def library_misuse() -> int:  # a config-field error raised deep in the library
        _check_params(AdaptConfig(hops=3), "weighted")
        return 0

    assert main_with_errors(library_misuse) == 2
    err = capsys.readouterr().err
    assert err == "error: adapt.hops: must be an even number >= 2, got 3\n"

    def multi_line() -> int:
        raise ConfigError("a.yaml: invalid YAML: bad\n  in line 2\n" + "x" * 10_000)

    assert main_with_errors(multi_line) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 2100 and "bad; in line 2" in err

    def bug() -> int:
        return {}["missing"]

    with pytest.raises(KeyError):
        main_with_errors(bug)


# ------------------------------------------------------------ jobs/full.py itself
def _full(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and "WANDB" not in k}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "full.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _assert_refused(r: subprocess.CompletedProcess, run: Path, message: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "stage 1/" not in r.stdout and not (run / "data").exists()


JOB_MISUSES = [
    (["--set", "adapt.hops=3"], "adapt.hops: must be even"),
    (["--set", "gnn.lr=.inf"], "gnn.lr: expected a finite number, got inf"),
    (["--set", "eval.label_counts=[0]"], "eval.label_counts[0]: expected >= 1"),
    (
        ["--stages", "eval", "--set", "eval.label_counts=[-1]"],
        "eval.label_counts[0]: expected >= 1",
    ),
    (["--set", "train.max_steps=0"], "train.max_steps: expected -1"),
    (["--set", "reward.models=[]"], "reward.models: must not be empty"),
    (["--set", "=3"], "override '=3': empty key"),
    (["--set", "adapt.variants=[bogus]"], "adapt.variants[0]: unknown name 'bogus'"),
    (["--set", "reward.target_modules=[nope_proj]"], "valid names: down_proj, gate_proj"),
    (
        ["--set", "reward.adapted_layers=3"],
        "reward.adapted_layers: 3 adapted layers, but the backbone has 2",
    ),
    (["--set", "reward.backbone=no/such-model"], "reward.backbone: 'no/such-model' is neither"),
    (
        ["--set", "train.cpus_per_worker=64", "--set", "run.num_cpus=2"],
        "train.cpus_per_worker: 2 workers",
    ),
    (["--set", "run.wandb_project=demo"], "run.wandb_project: no W&B API key"),
]


@pytest.mark.parametrize("args, message", JOB_MISUSES)
def test_full_py_refuses_misuse_before_any_stage(tmp_path, args, message):
    run = tmp_path / "run"
    _assert_refused(_full("--run-dir", str(run), *args), run, message)


def test_full_py_refuses_bad_run_dir_address_and_yaml(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    _assert_refused(_full("--run-dir", str(taken)), taken, "is an existing file, not a folder")
    run = tmp_path / "run"
    port = _unused_port()
    r = _full("--run-dir", str(run), "--set", f"run.ray_address=127.0.0.1:{port}")
    _assert_refused(r, run, f"run.ray_address: cannot reach Ray at 127.0.0.1:{port}")
    me = tmp_path / "me.yaml"
    me.write_text(f"extends: {me}\n")
    _assert_refused(_full("--run-dir", str(run), "--config", str(me)), run, "extends: cycle")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    _assert_refused(_full("--run-dir", str(run), "--config", str(latin)), run, "not UTF-8")


def test_full_py_refuses_oracle_on_data_without_groups(tmp_path):
    prefs = _prefs(tmp_path / "prefs.csv")
    r = _full("--data", str(prefs), "--set", "reward.models=[copl,oracle]", cwd=tmp_path)
    _assert_refused(r, tmp_path / "runs" / "prefs", "prefs.csv has no group column")


@pytest.mark.parametrize("job", ["gnn", "reward", "eval", "tune"])
def test_every_job_refuses_a_run_dir_that_is_a_file(tmp_path, job):
    taken = tmp_path / "taken"
    taken.write_text("x")
    extra = ["--space", str(REPO / "tune_spaces" / "tiny.yaml")] if job == "tune" else []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and "WANDB" not in k}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--run-dir", str(taken), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    _assert_refused(r, taken, "run.dir: ")
