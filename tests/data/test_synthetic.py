"""Synthetic generator: truth recoverable from text, invariants, determinism, CLI."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from copl_ray.artifacts import RunDir
from copl_ray.config import load_config
from copl_ray.data import PreferenceTables, build_tables, run_data_stage
from copl_ray.data.synthetic import ATTRIBUTES


def _cfg(*overrides: str):
    return load_config("tiny", ["data.n_users=40", "data.n_unseen_users=8", *overrides])


@pytest.mark.parametrize("n_groups,n", [(2, 8), (4, 16)])
def test_labels_follow_marker_counts(n_groups: int, n: int) -> None:
    """Each group's label is the sign of its marker-count difference: truth lives in the text."""
    t = build_tables(_cfg(f"data.n_groups={n_groups}", f"data.labels_per_user={n}"))
    assert t.groups == list(ATTRIBUTES)[:n_groups]
    text = t.responses.set_index("response_id")["text"]
    for g in t.groups:
        vocab = set(ATTRIBUTES[g])
        count = text.map(lambda s, v=vocab: sum(w in v for w in s.split()))
        diff = np.sign(
            count[t.pairs["response_a"]].to_numpy() - count[t.pairs["response_b"]].to_numpy()
        )
        np.testing.assert_array_equal(diff, t.pairs[f"label_{g}"].to_numpy())
    # fixed response length: marker *fraction* = rating / response_words
    lengths = text.map(lambda s: len(s.split()) - 1)  # trailing "."
    assert lengths.nunique() == 1
    # controversial = groups disagree
    labels = t.pairs[[f"label_{g}" for g in t.groups]].to_numpy()
    np.testing.assert_array_equal(
        (labels != labels[:, :1]).any(axis=1), t.pairs["controversial"].to_numpy()
    )


def test_user_labels_are_their_group_labels() -> None:
    t = build_tables(_cfg())
    a = t.annotations.merge(t.pairs, on="pair_id").merge(t.users, on="user_id")
    for g, sub in a.groupby("group"):
        expected = np.where(sub[f"label_{g}"] > 0, sub["response_a"], sub["response_b"])
        np.testing.assert_array_equal(sub["chosen"].to_numpy(), expected)
    # test pairs: from held-out prompts; both common and controversial present
    test = a[a["split"] == "test"]
    assert test["heldout"].all() and not a.loc[a["split"] != "test", "heldout"].any()
    assert test["controversial"].any() and (~test["controversial"]).any()
    # survey pool: pairs on which the 4 latent attributes disagree (UF-P-2's rule), so with
    # 2 groups it also holds pairs both groups agree on -- each attribute stays identifiable
    survey = a[a["split"] != "test"]
    assert survey["controversial"].any() and (~survey["controversial"]).any()
    strict = build_tables(_cfg("data.ufp2_require_disagreement=true"))
    s = strict.annotations.merge(strict.pairs, on="pair_id")
    assert s.loc[s["split"] != "test", "controversial"].all()


def test_label_noise_rate() -> None:
    """Flipped share ~ label_noise: 3 sigma of a binomial over ~4k labels is ~0.014."""
    t = build_tables(_cfg("data.n_users=400", "data.synthetic.label_noise=0.2"))
    a = t.annotations.merge(t.pairs, on="pair_id").merge(t.users, on="user_id")
    truth = np.array([r[f"label_{r['group']}"] for _, r in a.iterrows()])
    agree = np.where(truth > 0, a["response_a"], a["response_b"]) == a["chosen"]
    assert abs((1 - agree.mean()) - 0.2) < 0.03


def test_deterministic_and_seed_sensitive() -> None:
    t1, t2 = build_tables(_cfg()), build_tables(_cfg())
    pd.testing.assert_frame_equal(t1.annotations, t2.annotations)
    pd.testing.assert_frame_equal(t1.responses, t2.responses)
    t3 = build_tables(_cfg("data.seed=1"))
    assert not t1.annotations.equals(t3.annotations)


def test_tie_policy_coin_keeps_all_pairs() -> None:
    t = build_tables(_cfg("data.tie_policy=coin"))
    assert "tie" not in t.summary.drops
    assert set(np.unique(t.pairs.filter(like="label_").to_numpy())) <= {-1, 1}


def test_stage_writes_readable_tables(tmp_path) -> None:
    cfg = _cfg()
    run = RunDir(tmp_path)
    out = run_data_stage(cfg, run)
    assert out["n_users_seen"] == 40 and out["n_users_unseen"] == 8
    back = PreferenceTables.read(run.data)
    assert back.annotations["user_id"].map(type).eq(str).all()
    assert back.pairs["label_detail"].dtype == np.int8
    assert set(back.users["user_id"]) == set(back.annotations["user_id"])


def test_cli_build_prints_summary(data_cli, tmp_path) -> None:
    out = tmp_path / "d"
    r = data_cli("--config", "tiny", "--set", "data.n_users=20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "users: 20 seen" in r.stdout and "controversial share" in r.stdout
    assert re.search(r"labels per seen user .*min 8, median 8, max 8", r.stdout)
    assert "drops:" in r.stdout and (out / "annotations.parquet").exists()


def test_cli_bad_config_exits_2(data_cli, tmp_path) -> None:
    r = data_cli("--set", "data.n_groups=9", "--out", str(tmp_path))
    assert r.returncode == 2 and "data.n_groups" in r.stderr and "Traceback" not in r.stderr
