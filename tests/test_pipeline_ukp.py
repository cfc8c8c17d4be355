"""The ``ukp`` preset end to end on a mini UKPConvArg1 folder in the exact schema.

What the preset adds over tiny, each checked in a real run (Ray Train, DeepSpeed, eval):
the pretrained all-MiniLM-L6-v2 backbone (BERT target modules, mean pooling), MoLE in the
top layer over frozen states computed once per text, the standardized gate input, and a
report that shows gate health, the flip test and the GNN-only row beside the models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from copl_ray.reward import PersonalRewardModel
from tests.data.test_ukp import make_ukp_folder

REPO = Path(__file__).resolve().parents[1]


def test_ukp_preset_runs_end_to_end_on_a_mini_folder(tmp_path: Path, accuracy_record_check) -> None:
    make_ukp_folder(tmp_path / "ukp")
    run = tmp_path / "run"
    sets = [
        f"data.path={tmp_path / 'ukp'}",
        "data.ukp_min_labels=5",
        "data.n_unseen_users=2",
        "gnn.epochs=10",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.eval_every=3",
        "train.ckpt_every=3",
        "eval.label_counts=[1,4]",
    ]
    cmd = [sys.executable, "jobs/full.py", "--config", "ukp", "--run-dir", str(run)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    console = proc.stdout + proc.stderr
    # (the console's noise contract is tests/test_pipeline_tiny.py's; here only what MiniLM adds)
    assert "Loading weights" not in console
    assert "frozen lower layers: 6 of 6 texts computed once" in console

    # the states file holds every argument once; the models read text with MiniLM
    (states,) = (run / "reward").glob("frozen_states-*.safetensors")
    with safe_open(str(states), framework="pt") as f:
        assert sum(k.startswith("ids.") for k in f.keys()) == 6
    copl = PersonalRewardModel.load(run / "reward" / "copl")
    assert copl.pooling == "mean" and copl.frozen is not None
    assert copl.mole.module_names == [
        "encoder.layer.5.attention.self.query",
        "encoder.layer.5.attention.self.value",
    ]
    assert copl.mole.gate.input_shift.abs().sum() > 0  # standardized on the seen users

    rep = json.loads((run / "report.json").read_text())
    assert set(rep["models"]) == {"copl", "uniform"}
    for split in ("seen", "unseen"):
        accuracy_record_check(rep["models"]["copl"][split], run / "data", split == "seen", split)
        gnn = rep["gnn_scorer"][split]
        assert gnn["n_pairs"] + gnn["n_skipped"] == rep["models"]["copl"][split]["n_pairs"]
    assert rep["gnn_scorer"]["seen"]["n_pairs"] > 0  # the arguments are graph nodes
    assert rep["gate_health"]["copl"]["n_users"] == 4
    assert rep["flip_test"] is not None and rep["flip_test"]["n_users"] == 2
    md = (run / "report.md").read_text()
    assert "GNN only (in-graph pairs)" in md and "## Gate health and user signal" in md
