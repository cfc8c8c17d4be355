"""PersonalLLM builder: on parquet files in the hub's exact schema, with a known-truth check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables
from copl_ray.data.personalllm import REWARD_MODELS

N_PROMPTS = 30
# the reward models' raw scales differ by orders of magnitude, as the real ones do
SCALES = {m: 10.0 ** (k % 4 - 1) for k, m in enumerate(REWARD_MODELS)}


def personalllm_frame(n_prompts: int = N_PROMPTS, seed: int = 0) -> pd.DataFrame:
    """prompt, response_1..8, response_<i>_<rm> (float64): one row per prompt."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        row = {"prompt": f"prompt {p}: how do I learn to play the piano as an adult?"}
        for i in range(1, 9):
            row[f"response_{i}"] = f"response {i} to prompt {p}"
            for m in REWARD_MODELS:
                row[f"response_{i}_{m}"] = float(rng.normal(3.0, 1.0) * SCALES[m])
        rows.append(row)
    df = pd.DataFrame(rows)
    df.loc[0, "response_3"] = ""  # empty response: dropped
    df.loc[1, f"response_2_{REWARD_MODELS[4]}"] = None  # missing score: dropped
    df.loc[2, "response_8"] = df.loc[2, "response_7"]  # identical to response 7: no pair
    return df


def write_personalllm(folder: Path, df: pd.DataFrame | None = None) -> Path:
    """The hub's layout: data/train-00000-of-00001.parquet and data/test-...parquet."""
    df = personalllm_frame() if df is None else df
    d = folder / "data"
    d.mkdir(parents=True, exist_ok=True)
    cut = len(df) * 5 // 6
    test = pd.concat([df.iloc[cut:], df.iloc[[5]]])  # a prompt also in train: dropped
    for name, part in (("train", df.iloc[:cut]), ("test", test)):
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False),
            d / f"{name}-00000-of-00001.parquet",
        )
    return folder


def _cfg(path: Path, *ov: str):
    return load_config(
        "personalllm",
        [
            f"data.path={path}",
            "data.n_users=20",
            "data.n_unseen_users=4",
            "data.labels_per_user=4",
            "data.test_pairs_seen=3",
            "data.test_pairs_unseen=3",
            "data.heldout_prompt_frac=0.2",
            "data.personalllm_reward_models=null",
            *ov,
        ],
    )


def test_personalllm_counts_splits_groups(tmp_path: Path) -> None:
    t = build_tables(_cfg(write_personalllm(tmp_path / "pl")))
    s = t.summary
    assert s.source == "personalllm"
    assert (s.n_users_seen, s.n_users_unseen) == (20, 4)
    # seen: 3 survey + 1 val + 3 test; unseen: 4 adaptation labels + 3 test
    assert s.n_annotations == {"survey": 20 * 3 + 4 * 4, "val": 20, "test": 24 * 3}
    assert s.drops == {
        "empty_text": 1,
        "missing_score": 1,
        "identical_responses": 1,
        "duplicate_prompt": 1,
    }
    assert set(t.groups) == set(REWARD_MODELS)  # one label column per reward model
    assert set(t.users["group"]) <= set(REWARD_MODELS) and t.users["group"].notna().all()
    # test pairs come from held-out prompts only, survey/val pairs never do
    ann = t.annotations.merge(t.pairs[["pair_id", "heldout"]], on="pair_id")
    assert ann.loc[ann["split"] == "test", "heldout"].all()
    assert not ann.loc[ann["split"] != "test", "heldout"].any()
    assert t.pairs["controversial"].dtype == bool


def _raw_z(df: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(prompt, text) -> the reward models' scores standardised over the usable responses,
    computed from the raw file independently of the builder."""
    recs = []
    for _, r in df.iterrows():
        for i in range(1, 9):
            s = [r[f"response_{i}_{m}"] for m in REWARD_MODELS]
            if r[f"response_{i}"] and not any(pd.isna(s)):
                recs.append((r["prompt"], r[f"response_{i}"], *s))
    z = pd.DataFrame(recs, columns=["prompt", "text", *REWARD_MODELS])
    z = z.drop_duplicates(["prompt", "text"])
    cols = list(REWARD_MODELS)
    z[cols] = (z[cols] - z[cols].mean()) / z[cols].std(ddof=0)
    return {(p, t): v for p, t, v in zip(z["prompt"], z["text"], z[cols].to_numpy())}


def test_personalllm_labels_follow_each_users_mixture(tmp_path: Path) -> None:
    """Known truth: every label is the argmax of the user's mixed score, group = argmax w."""
    df = personalllm_frame()
    t = build_tables(_cfg(write_personalllm(tmp_path / "pl", df)))
    w = t.extras["user_weights"].set_index("user_id")[list(REWARD_MODELS)]
    assert np.allclose(w.sum(axis=1), 1.0)
    groups = t.users.set_index("user_id")["group"]
    assert (w.idxmax(axis=1) == groups.reindex(w.index)).all()
    z = _raw_z(df)
    r = t.responses.set_index("response_id")
    key = {i: (p, x) for i, p, x in zip(r.index, r["prompt"], r["text"])}
    for row in t.annotations.itertuples():
        mixed = w.loc[row.user_id].to_numpy() @ (z[key[row.chosen]] - z[key[row.rejected]])
        assert mixed > 0, row
    # the side table holds the same standardised scores
    rs = t.extras["response_scores"].set_index("response_id")
    assert np.allclose(rs.loc[list(key)].to_numpy(), np.stack([z[key[i]] for i in key]))


def test_personalllm_group_is_the_model_a_user_follows(tmp_path: Path) -> None:
    """Dirichlet(0.01) weights are ~one-hot: a user's labels follow their group's reward
    model (``pairs.label_<group>``), whatever that model's raw scale."""
    t = build_tables(_cfg(write_personalllm(tmp_path / "pl"), "data.personalllm_alpha=0.01"))
    lab = t.pairs.set_index("pair_id")
    agree = []
    for row in t.annotations.merge(t.users, on="user_id").itertuples():
        g = lab.loc[row.pair_id, f"label_{row.group}"]
        a = lab.loc[row.pair_id, "response_a"]
        agree.append((g > 0) == (row.chosen == a))
    assert np.mean(agree) > 0.95  # alpha 0.01: weights ~ one-hot on the group's model


def test_personalllm_model_subset_and_unknown_model(tmp_path: Path) -> None:
    path = write_personalllm(tmp_path / "pl")
    subset = ["gemma_2b", "beaver_7b"]
    t = build_tables(_cfg(path, f"data.personalllm_reward_models=[{','.join(subset)}]"))
    assert t.groups == subset and set(t.users["group"]) <= set(subset)
    with pytest.raises(DataError, match=r"data.personalllm_reward_models: \['gpt5'\] not among"):
        build_tables(_cfg(path, "data.personalllm_reward_models=[gpt5]"))


def test_personalllm_non_numeric_score_names_row_and_column(tmp_path: Path) -> None:
    df = personalllm_frame().astype({f"response_4_{REWARD_MODELS[0]}": object})
    df.loc[3, f"response_4_{REWARD_MODELS[0]}"] = "high"
    d = tmp_path / "pl.jsonl"
    df.to_json(d, orient="records", lines=True)
    with pytest.raises(DataError, match=r"row 3, column 'response_4_gemma_2b': expected a number"):
        build_tables(_cfg(d))


def test_personalllm_rows_through_datasets_match_local_rows(tmp_path: Path) -> None:
    """data.path null goes through ``datasets.load_dataset``: on the same files (a local
    dataset folder stands in for the hub) it must give the rows the local reader gives."""
    from copl_ray.data.hub import hub_rows, local_rows

    folder = write_personalllm(tmp_path / "pl")
    via_datasets = hub_rows(str(folder), None)
    local = local_rows(folder, None, main=True)
    assert sorted(s.label.rsplit("/", 1)[-1] for s in via_datasets) == ["test]", "train]"]

    def key(r: dict) -> str:
        return r["prompt"]

    def rows(sources) -> list[dict]:
        return sorted((r for s in sources for r in s.rows), key=key)

    got, want = rows(via_datasets), rows(local)
    assert len(got) == len(want) == N_PROMPTS + 1
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        assert all(g[k] == w[k] or (g[k] is None and w[k] is None) for k in w)
