"""Gate health (routing entropy, collapse) and the flip test's pieces on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from copl_ray.eval.metrics import expert_usage, gate_health
from copl_ray.eval.stage import collapse_warnings, flipped_labels, health_record


def _h(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.mark.parametrize(
    ("share", "entropy", "collapsed"),
    [
        ([0.25, 0.25, 0.25, 0.25], 1.0, False),  # every expert equally used
        ([0.5, 0.5, 0.0, 0.0], math.log(2) / math.log(4), False),  # 2 groups, 4 experts
        ([0.0, 1.0, 0.0, 0.0], 0.0, True),  # one expert for everyone
        ([0.96, 0.02, 0.02, 0.0], _h([0.96, 0.02, 0.02]) / math.log(4), True),
        ([0.95, 0.05], _h([0.95, 0.05]) / math.log(2), True),  # the bar itself collapses
        ([0.94, 0.06], _h([0.94, 0.06]) / math.log(2), False),
    ],
)
def test_gate_health_exact_values(share, entropy, collapsed):
    h = gate_health(share)
    assert h["entropy"] == pytest.approx(entropy, abs=1e-12)
    assert h["collapsed"] is collapsed
    assert h["share"] == share and h["top_share"] == max(share)
    assert h["top_expert"] == int(np.argmax(share))


@pytest.mark.parametrize("share", [[0.5, 0.4], [1.2, -0.2], [], [[0.5, 0.5]]])
def test_gate_health_rejects_what_is_not_a_share(share):
    with pytest.raises(ValueError, match="share"):
        gate_health(share)


def test_health_record_of_gate_weights_counts_top1_users():
    """19 of 20 users' top expert is 0 → share 0.95: collapsed; 10/10 over two experts: not."""
    w = np.full((20, 3), 0.1)
    w[:19, 0] = 0.8
    w[19, 2] = 0.8
    h = health_record(expert_usage(w))
    assert h["share"] == pytest.approx([0.95, 0.0, 0.05])
    assert h["collapsed"] and h["n_users"] == 20 and h["n_gates"] == 1
    w[10:, 0], w[10:, 2] = 0.1, 0.8
    h = health_record(expert_usage(w))
    assert h["share"] == pytest.approx([0.5, 0.0, 0.5]) and not h["collapsed"]
    assert h["entropy"] == pytest.approx(math.log(2) / math.log(3))


def test_collapse_warning_names_the_model_only_when_collapsed():
    ok = health_record(expert_usage(np.eye(4)))  # 4 users, one per expert
    bad = health_record(expert_usage(np.tile([0.0, 1.0, 0.0, 0.0], (50, 1))))
    lines = collapse_warnings({"copl": ok, "no_gnn": bad})
    assert len(lines) == 1 and lines[0].startswith("warning: no_gnn: gate collapsed")
    assert "expert 1 takes 100.0% of 50 seen users" in lines[0]
    assert collapse_warnings({"copl": ok}) == []


def test_flipped_labels_swap_chosen_and_rejected_only():
    ann = pd.DataFrame(
        {"user_id": ["u", "u", "v"], "chosen": [1, 2, 3], "rejected": [4, 5, 6], "split": "survey"}
    )
    f = flipped_labels(ann)
    assert f["chosen"].tolist() == [4, 5, 6] and f["rejected"].tolist() == [1, 2, 3]
    assert f["user_id"].tolist() == ["u", "u", "v"] and (f["split"] == "survey").all()
    assert ann["chosen"].tolist() == [1, 2, 3]  # the input is left alone
