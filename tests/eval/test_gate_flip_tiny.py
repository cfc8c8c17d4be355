"""Gate health and the flip test in the tiny end-to-end run's report (known truth).

The tiny default has two equal-sized groups (200/200 seen, 20/20 unseen users) with
opposite preferences on controversial pairs and none on common pairs, and no label noise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def report(tiny_run):
    return json.loads(tiny_run.report_json.read_text())


def test_gate_health_matches_the_runs_own_allocation(report, tiny_run):
    """Gate health is read off the same top-1 routing as Fig. 3, and the tiny gate is healthy.

    Bar: the share of seen users per expert is Σ_g (n_g / N) · allocation[g] (the
    allocation rows are each group's top-1 shares), so the entropy must equal
    H(that share) / log M. The tiny default routes each group to its own expert (the
    allocation test), so two experts hold about half the users each: entropy ≈ log 2 /
    log 4 = 0.5, never collapsed, and no expert above the larger group's share (+ the part
    of the other group that leaks to it, read from the allocation).
    """
    health = report["gate_health"]["copl"]
    alloc = report["expert_usage"]["allocation"]
    users = pq.read_table(tiny_run.data / "users.parquet").to_pandas()
    seen = users[users["seen"]]["group"].fillna("").replace("", "unknown")
    weight = np.array([(seen == g).mean() for g in alloc["groups"]])
    m = np.asarray(alloc["matrix"])
    m = m if m.ndim == 2 else m.mean(0)
    share = weight @ m
    np.testing.assert_allclose(health["share"], share, atol=1e-9)
    nz = share[share > 0]
    assert health["entropy"] == pytest.approx(-(nz * np.log(nz)).sum() / math.log(len(share)))
    assert health["collapsed"] is False
    assert health["top_share"] <= weight.max() + (1 - m.max(1)).max() + 1e-9
    assert health["entropy"] >= math.log(2) / math.log(4) - 0.01  # 45/55 or better


def test_flip_test_shows_the_user_signal_is_used(report, tiny_run):
    """Flipping an unseen user's labels must flip the controversial share of their pairs.

    Derivation: a tiny user's labels differ from the other group's only on controversial
    pairs; flipped, they agree with the other group there (and with neither group on
    common pairs), so the weighted adaptation (γ = Σ log σ agreement with seen neighbours)
    places the user among the other group, whose expert the gate then picks. A
    controversial pair flips whenever CoPL orders it right for both groups, with
    probability ≥ 2a − 1 for accuracy a on controversial pairs (a ≥ 0.9 here, see the
    accuracy bars); a common pair (both groups agree) need not flip. So the expected rate
    is ≳ (2a − 1) · s ≥ 0.8 · s, with s the controversial share of the unseen users' test
    pairs, read from the run's data.
    """
    flip = report["flip_test"]
    ann = pq.read_table(tiny_run.data / "annotations.parquet").to_pandas()
    users = pq.read_table(tiny_run.data / "users.parquet").to_pandas()
    pairs = pq.read_table(tiny_run.data / "pairs.parquet", columns=["pair_id", "controversial"])
    unseen = set(users.loc[~users["seen"], "user_id"])
    test = ann[(ann["split"] == "test") & ann["user_id"].isin(unseen)]
    contr = test.merge(pairs.to_pandas(), on="pair_id", how="left")["controversial"]
    s = float(contr.astype(bool).mean())
    assert (flip["n_users"], flip["n_pairs"]) == (len(unseen), len(test))
    assert flip["rate"] >= 0.8 * s, (flip, s)
    assert flip["controversial"] >= 0.8, flip
    md = tiny_run.report_md.read_text()
    assert f"flips CoPL's predicted preference on **{100 * flip['rate']:.2f} %**" in md


def test_no_collapse_warning_for_the_tiny_run(tiny_job):
    """The collapse warning is for collapsed gates only: none in the tiny console or report."""
    assert not [line for line in tiny_job.console if "gate collapsed" in line]
    assert "gate collapsed" not in tiny_job.run.report_md.read_text()
