"""Issue 17 (§2, §5.9): an ordinary user's file -- HF split names, noisy labels, odd rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables
from tests.data.test_own import cfg_for, own_rows, write


# ------------------------------------------------------------------ split synonyms
def test_split_synonyms_hf_names(tmp_path: Path) -> None:
    rows = own_rows()
    spellings = {0: "train", 1: " Validation ", 2: "DEV", 3: "valid", 4: "TEST", 5: "val", 6: ""}
    for i, v in spellings.items():
        rows[i]["split"] = v
    t = build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    text = t.responses.set_index("response_id")["text"]
    got = t.annotations.assign(
        c=text[t.annotations.chosen].to_numpy(), r=text[t.annotations.rejected].to_numpy()
    ).set_index(["user_id", "c", "r"])["split"]
    want = {0: "survey", 1: "val", 2: "val", 3: "val", 4: "test", 5: "val"}
    for i, split in want.items():
        assert got[(rows[i]["user_id"], rows[i]["chosen"], rows[i]["rejected"])] == split
    assert set(t.annotations["split"]) <= {"survey", "val", "test"}


def test_file_exported_from_datasets_loads(tmp_path: Path) -> None:
    """A ``datasets`` train/test export (no group column) is an ordinary own-data file."""
    import datasets

    rows = own_rows(n_users=20)
    for i, r in enumerate(rows):
        del r["group"]
        r["split"] = "test" if i % 10 == 0 else "train"
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "prefs.parquet"))
    ds.to_json(str(tmp_path / "prefs.jsonl"))
    for name in ("prefs.parquet", "prefs.jsonl"):
        t = build_tables(cfg_for(tmp_path / name))
        assert t.summary.drops == {}
        assert t.summary.n_annotations["survey"] + t.summary.n_annotations["test"] == len(rows)
        assert t.summary.n_annotations["test"] == len(rows) // 10


def test_unknown_split_lists_accepted_spellings(tmp_path: Path) -> None:
    rows = own_rows()
    rows[4]["split"] = "holdout"
    with pytest.raises(DataError) as e:
        build_tables(cfg_for(write(tmp_path / "own.csv", rows)))
    msg = str(e.value)
    assert "row 4" in msg and "'holdout'" in msg
    for s in ("survey", "train", "validation", "valid", "dev", "val", "test"):
        assert s in msg


# ------------------------------------------------------------------ controversial
def noisy_two_group_rows(
    n_pairs: int, split_share: float, per_group: int, noise: float, seed: int = 0
) -> tuple[list[dict], int]:
    """Every user labels every pair; the groups disagree on the first ``split_share`` of
    the pairs and agree on the rest; each label flips with probability ``noise``."""
    rng = np.random.default_rng(seed)
    n_split = round(split_share * n_pairs)
    rows = []
    for g in range(2):
        for u in range(per_group):
            for p in range(n_pairs):
                prefers_a = True if (p >= n_split or g == 0) else False
                if rng.random() < noise:
                    prefers_a = not prefers_a
                a, b = f"answer a of prompt {p}", f"answer b of prompt {p}"
                rows.append(
                    {
                        "user_id": f"g{g}u{u}",
                        "prompt": f"prompt {p}?",
                        "chosen": a if prefers_a else b,
                        "rejected": b if prefers_a else a,
                    }
                )
    return rows, n_split


def test_controversial_share_survives_label_noise(tmp_path: Path) -> None:
    """Truth: 30 % of 200 pairs split the two 30-user groups, 10 % label noise.

    Tolerance: with 60 annotators a common pair's minority count is Binomial(60, 0.1)
    (mean 6); reaching the threshold 15 (share 0.25) is a z = 3.9 event (p ~ 1e-4). A split
    pair's count of "prefers a" has mean 30, sd 2.3; falling to 15 is z = 6.5. So over 200
    pairs the expected number of misclassified pairs is ~0.02: the share must equal the
    truth within one pair (0.005). The old rule ("any annotator disagrees") marks a
    common pair controversial with probability 1 - 0.9^60 - 0.1^60 = 0.998.
    """
    rows, n_split = noisy_two_group_rows(200, 0.3, 30, 0.1)
    t = build_tables(cfg_for(write(tmp_path / "noisy.parquet", rows)))
    assert abs(t.summary.controversial_share - n_split / 200) <= 1 / 200
    # the premise: nearly every pair has some disagreement (what the old rule counted)
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["prompt"], set()).add(r["chosen"])
    assert np.mean([len(v) == 2 for v in by_pair.values()]) > 0.95
    assert "data.controversial_min_share" in (t.summary.controversial_definition or "")
    assert "0.25" in t.summary.format()


def test_controversial_pairs_rule() -> None:
    from copl_ray.data.own import controversial_pairs

    # pair 0: 3 of 4 prefer a (share .25 -> controversial at 0.25); pair 1: 1 annotator (null);
    # pair 2: 9 of 10 (share .1 -> common); pair 3: 1 of 2 (share .5)
    codes = np.array([0] * 4 + [1] + [2] * 10 + [3] * 2)
    prefers = np.array([1, 1, 1, 0] + [1] + [1] * 9 + [0] + [1, 0], dtype=bool)
    got = controversial_pairs(codes, prefers, 4, 0.25)
    assert got.tolist()[0] is True and got.isna().tolist() == [False, True, False, False]
    assert got.tolist()[2:] == [False, True]
    assert controversial_pairs(codes, prefers, 4, 0.3).tolist()[0] is False


def test_controversial_min_share_bounds() -> None:
    from copl_ray.config import ConfigError

    assert (
        load_config("tiny", ["data.controversial_min_share=0.5"]).data.controversial_min_share
        == 0.5
    )
    for bad in ("0", "0.6"):
        with pytest.raises(ConfigError, match="data.controversial_min_share"):
            load_config("tiny", [f"data.controversial_min_share={bad}"])


# ------------------------------------------------------------------ §5.9 findings
def test_one_user_file_fails_in_the_data_stage(tmp_path: Path, data_cli) -> None:
    rows = [dict(r, user_id="solo") for r in own_rows(1, 12)]
    p = write(tmp_path / "solo.jsonl", rows)
    with pytest.raises(DataError, match=r"1 seen user.*needs >= 2 seen users"):
        build_tables(cfg_for(p))
    r = data_cli(
        "--set", "data.source=own", "--set", f"data.path={p}", "--out", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "seen user" in r.stderr


def test_wrong_typed_huge_value_gives_a_short_error(tmp_path: Path) -> None:
    rows = own_rows()
    rows[3]["chosen"] = {"blob": "x" * 1_000_000}
    with pytest.raises(DataError) as e:
        build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    msg = str(e.value)
    assert "row 3" in msg and "column 'chosen'" in msg and len(msg) < 400
    assert "chars)" in msg  # says it was cut
    rows = own_rows()
    rows[5]["user_id"] = [1] * 300_000
    with pytest.raises(DataError) as e:
        build_tables(cfg_for(write(tmp_path / "own2.jsonl", rows)))
    assert "row 5" in str(e.value) and len(str(e.value)) < 400


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_utf8_bom_is_accepted(tmp_path: Path, suffix: str) -> None:
    rows = own_rows()
    p = write(tmp_path / f"own{suffix if suffix != '.json' else '.jsonl'}", rows)
    if suffix == ".json":
        p = tmp_path / "own.json"
        p.write_text(json.dumps(rows))
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    t = build_tables(cfg_for(p))
    assert len(t.annotations) == len(rows) and t.summary.drops == {}


def test_huge_text_is_a_counted_drop(tmp_path: Path) -> None:
    rows = own_rows()
    rows[0]["chosen"] = "word " * (5 * 2**20 // 5)  # 5 MiB
    rows[1]["prompt"] = "q" * 20_001
    rows[2]["rejected"] = "r" * 20_000  # at the limit: kept
    t = build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    assert t.summary.drops == {"text_too_long": 2}
    assert "text_too_long=2" in t.summary.format()
    assert len(t.annotations) == len(rows) - 2
    t = build_tables(cfg_for(tmp_path / "own.jsonl", "data.max_text_chars=10000000"))
    assert "text_too_long" not in t.summary.drops


def test_user_with_only_test_rows_is_a_counted_drop(tmp_path: Path) -> None:
    rows = own_rows()
    for r in rows:
        r["split"] = "test" if r["user_id"] == "user3" else None
    t = build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    assert t.summary.drops == {
        "user_without_adaptation_labels": 1,
        "annotation_of_dropped_user": 10,
    }
    assert "user3" not in set(t.users["user_id"]) and "user3" not in set(t.annotations["user_id"])
    assert "user_without_adaptation_labels=1" in t.summary.format()
    # every remaining user has a survey label (seen: training, unseen: adaptation)
    assert set(t.annotations.loc[t.annotations.split == "survey", "user_id"]) == set(
        t.users.user_id
    )


def test_report_names_the_controversial_definition(tmp_path: Path) -> None:
    from copl_ray.artifacts import RunDir
    from copl_ray.data.build import run_data_stage
    from copl_ray.report import build_report

    cfg = cfg_for(write(tmp_path / "own.jsonl", own_rows()))
    run = RunDir(tmp_path / "run")
    run_data_stage(cfg, run)
    rep = json.loads(build_report(cfg, run).read_text())
    assert "minority side >= 0.25" in rep["data"]["controversial_definition"]
    assert "| controversial = | annotators' minority side >= 0.25" in run.report_md.read_text()
