"""Accuracy of the tiny end-to-end run (synthetic default, fixed seed; docs/method.md §5-§6).

The data have a known truth: a user of group g prefers the response with more markers of
attribute g, with no label noise (``data.synthetic.label_noise=0``), so the Bayes accuracy
of a reward model that knows the user's group is 1.0 on every split. The thresholds:

* **CoPL >= Uniform + 10 points on controversial pairs.** On a controversial pair the two
  (balanced) groups want opposite orders, so any user-independent model is right for one
  group and wrong for the other: Uniform's expected accuracy there is 0.5 whatever it
  learnt (up to the group balance of the test users, 50/50 here). With ~3,700 seen
  controversial test pairs its binomial standard error is ~0.8 points, so Uniform exceeds
  0.53 with negligible probability; 10 points above it (>= ~0.60) is only reachable by
  a model that routes users by group — a wrong routing is capped at Uniform's 0.5.
* **|CoPL - Oracle| <= 3 points overall (seen users).** Oracle gets the true group for free
  (one model per group); CoPL must recover it from 8 labels per user through the GNN
  (ARI = 1.0 on this data) and the gate. 3 points = ~4 standard errors of the difference
  on 4,000 seen test pairs (SE of each accuracy ~0.5-0.7 points): a shortfall larger than
  that is a real loss of the user signal, not noise. Kept two-sided as the issue states
  it, although CoPL may legitimately beat Oracle (the paper's UF-P-4 rows do): its shared
  LoRA learns the common pairs from both groups' labels while each Oracle model sees only
  its group's half.
* **|CoPL unseen - CoPL seen| <= 3 points.** Unseen users get their embedding from
  8 labels without any gradient step; if adaptation places them where seen users of their
  group are, the reward model cannot tell them apart. With 2,000 unseen test pairs (SE ~1
  point) 3 points is ~2.5 SE of the difference.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def results(tiny_run):
    return json.loads((tiny_run.eval / "results.json").read_text())


def test_results_contract(results, tiny_run, accuracy_record_check):
    models = results["models"]
    assert {"copl", "uniform", "oracle"} <= set(models)
    for name, r in models.items():
        for split in ("seen", "unseen"):
            s = r[split]
            assert set(s) == {
                "overall",
                "common",
                "controversial",
                "by_group",
                "n_pairs",
                "n_users",
            }
            accuracy_record_check(s, tiny_run.data, split == "seen", (name, split))
            assert set(s["by_group"]) == {"detail", "caution"}
    assert models["copl"]["seen"]["n_pairs"] == 400 * 10  # 10 test pairs per seen user
    assert models["copl"]["unseen"]["n_pairs"] == 40 * 50  # 50 per unseen user
    assert set(results["adaptation"]) == {"weighted", "naive", "user_opt"}
    curve = results["labels_curve"]
    assert curve["counts"] == [1, 2, 4, 8] and len(curve["accuracy"]) == 4
    usage = results["expert_usage"]
    assert len(usage["seen"]["share"]) == 4 and sum(usage["seen"]["share"]) == pytest.approx(1)
    assert (tiny_run.eval / "expert_allocation.png").read_bytes()[:4] == b"\x89PNG"
    assert (tiny_run.eval / "labels_curve.png").exists()


def test_copl_beats_uniform_on_controversial_pairs(results):
    copl = results["models"]["copl"]["seen"]["controversial"]
    uniform = results["models"]["uniform"]["seen"]["controversial"]
    assert copl >= uniform + 0.10, (copl, uniform)


def test_copl_close_to_oracle(results):
    # Seed 0, 2 epochs: CoPL 0.848 vs Oracle 0.897 (balancing loss 0.05, which split a group
    # over 2 experts), 0.847 without it (clean routing, but CoPL still learning). 3 epochs
    # (presets/tiny.yaml): CoPL 0.923 vs Oracle 0.936 (bit-identical in 2 runs). Not yet
    # seed-robust: reward.seed=train.seed=1 gives CoPL 0.911 vs Oracle 0.963 (5.2 points).
    copl = results["models"]["copl"]["seen"]["overall"]
    oracle = results["models"]["oracle"]["seen"]["overall"]
    assert abs(copl - oracle) <= 0.03, (copl, oracle)


def test_unseen_users_close_to_seen(results):
    copl = results["models"]["copl"]
    assert abs(copl["unseen"]["overall"] - copl["seen"]["overall"]) <= 0.03, copl


def test_expert_allocation_separates_groups(results):
    """No expert is shared by the groups, and the groups' top experts differ (Fig. 3).

    A top-1 gate may split one group over two experts at no cost (both learn that group's
    preference) — what breaks personalisation is an expert serving users of groups with
    opposite controversial preferences. The tiny groups are equal-sized (200/200 seen
    users), so an expert's purity is max_g m[g, e] / sum_g m[g, e] on the group-normalised
    allocation matrix; experts holding < 5% of a group's users are noise and skipped.
    """
    alloc = results["expert_usage"]["allocation"]
    import numpy as np

    m = np.asarray(alloc["matrix"])
    m = m if m.ndim == 2 else m.mean(0)
    assert len(set(m.argmax(1).tolist())) == len(alloc["groups"]), m
    used = m.max(0) >= 0.05
    purity = m.max(0)[used] / m.sum(0)[used]
    assert (purity >= 0.9).all(), m
