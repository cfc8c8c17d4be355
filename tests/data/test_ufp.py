"""UF-P builder on small fixture files in the EXACT schemas of both HF datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables
from copl_ray.data.ufp import ATTRIBUTES

UF = "UltraFeedback"
BIN = "ultrafeedback-binarized-preferences-cleaned"


def _completion(model: str, response: str, ratings: dict[str, str]) -> dict:
    """One openbmb/UltraFeedback completion (HF schema: annotations are structs)."""
    ann = {
        "helpfulness": {
            "Rating": ratings["helpfulness"],
            "Rationale": "clear and relevant",
            "Rationale For Rating": "informative",
            "Type": ["1", "2"],
        },
        "honesty": {"Rating": ratings["honesty"], "Rationale": "confident"},
        "instruction_following": {"Rating": ratings["instruction_following"], "Rationale": "ok"},
        "truthfulness": {
            "Rating": ratings["truthfulness"],
            "Rationale": "no hallucination",
            "Rationale For Rating": "truthful",
            "Type": ["0"],
        },
    }
    return {
        "annotations": ann,
        "critique": "fine",
        "custom_system_prompt": "You are helpful.",
        "fine-grained_score": 3.5,
        "model": model,
        "overall_score": 7.0,
        "principle": "helpfulness",
        "response": response,
    }


def make_ufp_files(folder: Path, n_prompts: int = 60, seed: int = 0, fmt: str = "parquet"):
    """Write both datasets; returns the expected drop counts of the injected bad rows."""
    rnd = random.Random(seed)
    uf_rows, bin_rows = [], []
    for i in range(n_prompts):
        prompt = f"Question number {i} about topic {i % 7}?"
        comps = []
        for j in range(4):
            ratings = {a: str(rnd.randint(1, 5)) for a in ATTRIBUTES}
            comps.append(
                _completion(f"model-{j}", f"Answer {j} to question {i}: " + "word " * j, ratings)
            )
        uf_rows.append(
            {
                "source": "evol_instruct",
                "instruction": prompt,
                "models": [c["model"] for c in comps],
                "completions": comps,
                "correct_answers": ["None"],
                "incorrect_answers": ["None"],
            }
        )
        a, b = rnd.sample(range(4), 2)
        bin_rows.append(_bin_row(prompt, comps[a]["response"], comps[b]["response"]))
    # injected problems (each counted once)
    uf_rows[0]["completions"][0]["annotations"]["honesty"]["Rating"] = "N/A"
    bin_rows[0] = _bin_row(
        uf_rows[0]["instruction"],
        uf_rows[0]["completions"][0]["response"],
        uf_rows[0]["completions"][1]["response"],
    )
    bin_rows.append(_bin_row("A prompt UltraFeedback never saw", "x", "y"))
    bin_rows.append(_bin_row(uf_rows[1]["instruction"], "an unknown response", "another"))
    bin_rows.append(_bin_row(uf_rows[2]["instruction"], "", "something"))
    bin_rows.append(dict(bin_rows[3]))  # duplicate pair
    expected = {
        "rating_na": 1,
        "prompt_not_in_ultrafeedback": 1,
        "response_not_in_ultrafeedback": 1,
        "empty_text": 1,
        "duplicate_pair": 1,
    }
    _write(folder / f"{UF}.{fmt}", uf_rows)
    _write(folder / f"{BIN}.{fmt}", bin_rows)
    return expected


def _bin_row(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "source": "evol_instruct",
        "prompt": prompt,
        "chosen": [{"content": prompt, "role": "user"}, {"content": chosen, "role": "assistant"}],
        "chosen-rating": 4.5,
        "chosen-model": "model-a",
        "rejected": [
            {"content": prompt, "role": "user"},
            {"content": rejected, "role": "assistant"},
        ],
        "rejected-rating": 2.0,
        "rejected-model": "model-b",
    }


def joinable_pairs(folder: Path, fmt: str = "parquet") -> list[tuple[dict, dict, str, str]]:
    """The fixture's pairs that survive the join, read back from its two files: both
    responses rated (no ``N/A``) under the pair's prompt, not empty, not a repeated pair;
    ``(ratings_a, ratings_b, text_a, text_b)`` each. The counted drops of
    :func:`make_ufp_files` are exactly the other rows."""
    read = (
        (lambda p: pq.read_table(p).to_pylist())
        if fmt == "parquet"
        else (lambda p: [json.loads(x) for x in p.read_text().splitlines()])
    )
    rating = {
        (r["instruction"], c["response"]): {a: c["annotations"][a]["Rating"] for a in ATTRIBUTES}
        for r in read(folder / f"{UF}.{fmt}")
        for c in r["completions"]
    }
    out, seen = [], set()
    for r in read(folder / f"{BIN}.{fmt}"):
        a, b = r["chosen"][-1]["content"], r["rejected"][-1]["content"]
        ra, rb = rating.get((r["prompt"], a)), rating.get((r["prompt"], b))
        key = (r["prompt"], frozenset((a, b)))
        if not (a and b and ra and rb) or "N/A" in {*ra.values(), *rb.values()} or key in seen:
            continue
        seen.add(key)
        to_int = lambda d: {k: int(v) for k, v in d.items()}  # noqa: E731
        out.append((to_int(ra), to_int(rb), a, b))
    return out


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


# a small UF-P build: few users and labels, so the ~60-prompt fixture can serve them
SMALL_UFP = [
    "data.source=ufp",
    "data.n_users=24",
    "data.n_unseen_users=4",
    "data.labels_per_user=4",
    "data.test_pairs_seen=2",
    "data.test_pairs_unseen=3",
    "data.heldout_prompt_frac=0.2",
    "data.tie_policy=coin",
]


def _cfg(folder: Path, *ov: str):
    return load_config("tiny", [*SMALL_UFP, f"data.path={folder}", *ov])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_ufp4_builds_with_counted_drops(tmp_path: Path, fmt: str) -> None:
    expected = make_ufp_files(tmp_path, fmt=fmt)
    t = build_tables(_cfg(tmp_path, "data.n_groups=4", "data.test_pool=pool"))
    for reason, n in expected.items():
        assert t.summary.drops.get(reason) == n, (reason, t.summary.drops)
    assert t.groups == ATTRIBUTES
    # UF-P-4 with test_pool=pool: every pair is controversial among the four groups
    assert t.pairs["controversial"].all()
    # text convention and the join: each pair's label agrees with the source ratings
    assert t.responses["prompt"].str.startswith("Question number").all()
    a = t.annotations.merge(t.pairs, on="pair_id").merge(t.users, on="user_id")
    assert ((a.chosen == a.response_a) | (a.chosen == a.response_b)).all()
    assert (
        not a.loc[a.split != "test", "heldout"].any() and a.loc[a.split == "test", "heldout"].all()
    )
    # every joinable pair is kept (test_pool=pool: held out too) or dropped as groups_agree
    d = t.summary.drops
    n_agree = d.get("groups_agree", 0) + d.get("groups_agree_heldout", 0)
    assert len(t.pairs) + n_agree == len(joinable_pairs(tmp_path, fmt))
    assert t.summary.n_pool_pairs == int((~t.pairs["heldout"]).sum())
    assert any("25993" in n or "25,993" in n for n in t.summary.notes)


def test_ufp_labels_match_ratings(tmp_path: Path) -> None:
    make_ufp_files(tmp_path, seed=3)
    t = build_tables(_cfg(tmp_path, "data.n_groups=4", "data.tie_policy=drop"))
    rows = pq.read_table(tmp_path / f"{UF}.parquet").to_pylist()
    rating = {
        c["response"]: {a: int(c["annotations"][a]["Rating"]) for a in ATTRIBUTES}
        for r in rows
        for c in r["completions"]
        if c["annotations"]["honesty"]["Rating"] != "N/A"
    }
    text = t.responses.set_index("response_id")["text"]
    for _, p in t.pairs.iterrows():
        ra, rb = rating[text[p.response_a]], rating[text[p.response_b]]
        for g in ATTRIBUTES:
            assert p[f"label_{g}"] == np.sign(ra[g] - rb[g])  # no ties under drop
    # tie_policy=drop: a pair tied on any of the four attributes is dropped, counted once
    tied = [p for p in joinable_pairs(tmp_path) if any(p[0][g] == p[1][g] for g in ATTRIBUTES)]
    assert t.summary.drops["tie"] == len(tied)


def test_ufp2_disagreement_switch(tmp_path: Path) -> None:
    make_ufp_files(tmp_path, n_prompts=120)
    base = build_tables(_cfg(tmp_path, "data.n_groups=2"))
    strict = build_tables(_cfg(tmp_path, "data.n_groups=2", "data.ufp2_require_disagreement=true"))
    assert base.groups == ["helpfulness", "honesty"]
    pool = lambda t: t.pairs[~t.pairs.heldout]  # noqa: E731
    # official code: UF-P-2 pool keeps pairs where helpfulness == honesty (B6)
    assert not pool(base)["controversial"].all()
    assert pool(strict)["controversial"].all()
    assert strict.summary.n_pool_pairs < base.summary.n_pool_pairs


def test_length_filter_whitespace_and_trained_tokenizer(tmp_path: Path) -> None:
    make_ufp_files(tmp_path)
    # "Human: Question number i about topic k?\n\nAssistant: Answer j to question i: word*j"
    # = 7 + 6 + j whitespace words; max_tokens=14 drops every pair with a j >= 2 side
    t = build_tables(_cfg(tmp_path, "data.max_tokens=14"))
    long_pairs = sum(
        max(p[2].count("word"), p[3].count("word")) >= 2 for p in joinable_pairs(tmp_path)
    )
    assert t.summary.drops["too_long"] == long_pairs
    assert t.responses["text"].map(lambda s: s.count("word")).max() <= 1

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["Human Assistant Answer word question"] * 3,
        trainers.WordLevelTrainer(special_tokens=["[UNK]"]),
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(
        tmp_path / "tok"
    )
    # Whitespace pre-tokenizer splits punctuation: 17 + j tokens; at max_tokens=18 it drops
    # every pair with a j >= 2 side, while whitespace words (13 + j <= 16) drop nothing
    wt = build_tables(_cfg(tmp_path, "data.max_tokens=18"))
    assert "too_long" not in wt.summary.drops
    t2 = build_tables(
        _cfg(tmp_path, "data.max_tokens=18", f"data.length_tokenizer={tmp_path / 'tok'}")
    )
    assert t2.summary.drops["too_long"] == long_pairs
    assert t2.responses["text"].map(lambda s: s.count("word")).max() <= 1


def test_ufp_missing_inputs_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path"):
        build_tables(_cfg(tmp_path / "nope"))
    with pytest.raises(DataError, match="UltraFeedback"):
        build_tables(_cfg(tmp_path))  # folder exists but has no files
    make_ufp_files(tmp_path)
    rows = pq.read_table(tmp_path / f"{UF}.parquet").to_pylist()
    del rows[5]["completions"][2]["annotations"]["truthfulness"]
    _write(tmp_path / f"{UF}.parquet", rows)
    with pytest.raises(DataError, match=r"row 5.*completions\[2\]\.annotations\.truthfulness"):
        build_tables(_cfg(tmp_path))


def test_ufp_hub_name_offline_is_clear(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = load_config("tiny", ["data.source=ufp", "data.n_groups=4"])
    with pytest.raises(DataError, match="data.ufp_ratings"):
        build_tables(cfg)


def test_ufp_through_datasets_load_dataset(tmp_path: Path, monkeypatch) -> None:
    """Hub-shaped local dataset folders go through the same ``datasets.load_dataset`` call."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    flat = tmp_path / "flat"
    make_ufp_files(flat)
    for stem in (UF, BIN):
        repo = tmp_path / "hub" / stem / "data"
        repo.mkdir(parents=True)
        (flat / f"{stem}.parquet").rename(repo / "train-00000-of-00001.parquet")
    hub = load_config(
        "tiny",
        [
            *SMALL_UFP,
            "data.n_groups=4",
            f"data.ufp_ratings={tmp_path / 'hub' / UF}",
            f"data.ufp_pairs={tmp_path / 'hub' / BIN}",
        ],
    )
    t = build_tables(hub)
    make_ufp_files(flat)
    ref = build_tables(_cfg(flat, "data.n_groups=4"))
    assert t.summary.drops == ref.summary.drops
    assert t.pairs.equals(ref.pairs) and t.annotations.equals(ref.annotations)
