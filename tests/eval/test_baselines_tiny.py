"""The baselines on the tiny default's known truth (docs/method.md §7).

One run trains every baseline of the ``tiny-baselines`` preset on README command (1)'s
data and GNN (copied: their markers match, so both stages are reused) and compares them
with that run's CoPL, Uniform and Oracle: the same data, splits, backbone and budget.

What each method must reach, and why (the synthetic truth: a user of group g prefers the
response with more markers of attribute g, no label noise, two balanced groups that
disagree on every controversial pair; 7 survey pairs per seen user, 8 labels per unseen):

* **Uniform's 0.5 on controversial pairs** is the ceiling of any score that ignores the
  user (tests/eval/test_accuracy_tiny.py). A model is personalised when it clears it.
* **PReF >= Uniform + 10 points on controversial pairs, seen and unseen.** Its user
  weights start from the SVD of the user x pair label matrix; with two groups answering
  the controversial pairs oppositely the top singular vector is the group indicator
  (tests/reward/test_baselines.py), so every user starts on their group's side and the
  base rewards learn the two orders. Unseen users are fitted on their 8 labels from the
  mean row. 10 points is the same bar as CoPL's, ~12 standard errors of Uniform's 0.5.
* **CoPL >= PReF on controversial pairs; PReF above every other baseline there.** The
  graph shares a user's few labels with every user who answered alike; PReF's SVD shares
  them once, at the start; the other rows start from noise and each sees only its own
  user's 7 pairs for ~21 steps: they have no such sharing, so no bar above Uniform follows.
* **I2E, I2E-proxy and PAL (LoRA trained) >= Uniform - 6 points overall.** Each contains
  Uniform (equal user rows) and trains on the same budget; the extra user parameters can
  only cost what the model fails to ignore. 6 points = ~6 standard errors of the
  difference on 4,000 seen test pairs.
* **LoRe and VPL (frozen backbone) <= the frozen-feature ceiling + 3 points**, and above
  chance on the common pairs. Neither updates the backbone: a linear read of the frozen
  features with the true group known (a logistic regression per group on the seen
  survey pairs, computed here) bounds LoRe; VPL's MLP can exceed a linear read only
  slightly at this size. Common pairs need no user: > 55 % shows the head learnt.
* **VPL's active latent units are reported** (the share of posterior-mean units that vary
  across seen users); a collapse to 0 % is a result, not a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from copl_ray.artifacts import RunDir
from copl_ray.variants import BASELINES, COPL, I2E, I2E_PROXY, LORE, PAL, PREF, UNIFORM, VPL

FROZEN = (LORE, VPL)
LORA_ROWS = (I2E, I2E_PROXY, PAL)


@pytest.fixture(scope="module")
def baselines_run(tiny_job, tmp_path_factory) -> RunDir:
    """``jobs/full.py --config tiny-baselines`` with only the baselines to train, on a copy
    of the tiny run's data and GNN (reused), in the tiny run's repository copy."""
    run = RunDir(tmp_path_factory.mktemp("baselines") / "run")
    run.root.mkdir(parents=True)
    for stage in ("data", "gnn"):
        shutil.copytree(tiny_job.run.root / stage, run.root / stage)
    models = "[" + ",".join(BASELINES) + "]"
    cmd = [sys.executable, "jobs/full.py", "--config", "tiny-baselines"]
    cmd += ["--run-dir", str(run.root), "--set", f"reward.models={models}"]
    env = {**os.environ, "PYTHONPATH": str(tiny_job.repo)}
    proc = subprocess.run(
        cmd, cwd=tiny_job.repo, env=env, capture_output=True, text=True, timeout=3000
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    assert "stage 1/4 [data] reused" in console and "stage 2/4 [gnn] reused" in console
    assert "Traceback" not in console
    return run


@pytest.fixture(scope="module")
def report(baselines_run) -> dict:
    return json.loads(baselines_run.report_json.read_text())


@pytest.fixture(scope="module")
def tiny_report(tiny_run) -> dict:
    return json.loads(tiny_run.report_json.read_text())


def _acc(rep: dict, model: str, split: str, kind: str = "overall") -> float:
    return rep["models"][model][split][kind]


def test_every_baseline_has_its_rows_curve_and_training_time(report, baselines_run):
    assert set(BASELINES) <= set(report["models"])
    curve = report["labels_curve"]
    assert curve["counts"] == [1, 2, 4, 8] and set(curve["accuracy"]) == set(BASELINES)
    for name in BASELINES:
        r = report["models"][name]
        for split in ("seen", "unseen"):
            assert r[split]["n_pairs"] == (4000 if split == "seen" else 2000), (name, split)
            assert r[split]["controversial"] is not None
        assert r["training"]["seconds"] > 0 and len(curve["accuracy"][name]) == 4
    md = baselines_run.report_md.read_text()
    for label in ("I2E (user token)", "PAL (ideal points)", "VPL (variational latent)"):
        assert md.count(f"| {label} |") >= 3  # Table 1, Table 2 seen + unseen
    assert "latent:" in md and "units active" in md


def test_pref_is_personalised_seen_and_unseen(report, tiny_report):
    bar = _acc(tiny_report, UNIFORM, "seen", "controversial") + 0.10
    for split in ("seen", "unseen"):
        assert _acc(report, PREF, split, "controversial") >= bar, (split, bar)


def test_expected_order_on_controversial_pairs(report, tiny_report):
    copl = _acc(tiny_report, COPL, "seen", "controversial")
    pref = _acc(report, PREF, "seen", "controversial")
    others = {m: _acc(report, m, "seen", "controversial") for m in BASELINES if m != PREF}
    assert copl >= pref, (copl, pref)
    assert all(pref > a for a in others.values()), (pref, others)


def test_lora_row_baselines_do_not_fall_below_uniform(report, tiny_report):
    uniform = _acc(tiny_report, UNIFORM, "seen")
    for name in LORA_ROWS:
        assert _acc(report, name, "seen") >= uniform - 0.06, (name, uniform)


def test_frozen_baselines_stay_under_the_frozen_feature_ceiling(report, baselines_run):
    ceiling = frozen_feature_ceiling(baselines_run)
    for name in FROZEN:
        assert _acc(report, name, "seen") <= ceiling + 0.03, (name, ceiling)
        assert _acc(report, name, "seen", "common") > 0.55, name
    au = report["models"][VPL]["active_units"]
    assert 0.0 <= au["share"] <= 1.0 and au["n_users"] == 400
    assert au["units"] == report["config"]["gnn"]["dim"]


def frozen_feature_ceiling(run: RunDir) -> float:
    """Seen test accuracy of a per-group logistic regression on the frozen features'
    differences (the true group known): what a linear read of frozen features can do."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from copl_ray.config import load_config
    from copl_ray.data.tables import format_text
    from copl_ray.reward import PersonalRewardModel
    from copl_ray.reward.backbone import load_tokenizer, tokenize_texts

    cfg = load_config(str(run.root / "config.yaml"))
    tok = load_tokenizer(run.root / "tokenizer")
    tok.padding_side = "right"
    resp = pd.read_parquet(run.data / "responses.parquet")
    texts = [format_text(p, t) for p, t in zip(resp["prompt"], resp["text"])]
    ids, mask = tokenize_texts(tok, texts, cfg.reward.max_length)
    torch.manual_seed(cfg.train.seed)  # the backbone the reward workers built
    model = PersonalRewardModel.build(cfg.reward, LORE, cfg.gnn.dim, 1, tokenizer=tok).eval()
    feats = model.response_features(ids.astype(np.int64), mask.astype(np.int64)).numpy()
    row = pd.Index(resp["response_id"])
    users = pd.read_parquet(run.data / "users.parquet")
    ann = pd.read_parquet(run.data / "annotations.parquet").merge(users, on="user_id")
    ann = ann[ann["seen"]]
    correct = []
    for _, labels in ann.groupby("group"):

        def xy(d: pd.DataFrame):
            x = feats[row.get_indexer(d["chosen"])] - feats[row.get_indexer(d["rejected"])]
            return np.concatenate([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))]

        clf = LogisticRegression(C=10.0, max_iter=2000)
        clf.fit(*xy(labels[labels["split"] == "survey"]))
        test = labels[labels["split"] == "test"]
        x, _ = xy(test)
        correct.append(clf.predict(x[: len(test)]) == 1)
    return float(np.concatenate(correct).mean())
