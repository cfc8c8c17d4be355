"""PRISM builder: on conversations.jsonl / survey.jsonl in the hub's exact schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables

MODELS = ["gpt-4", "claude-2", "llama-2-70b-chat", "zephyr-7b-beta"]
USERS = [f"user{i}" for i in range(6)]
N_CONV = 3


def _utterance(turn: int, role: str, content: str, j: int = 0, score=None, model=None) -> dict:
    if role == "user":
        return {
            "turn": turn,
            "role": "user",
            "content": content,
            "model_provider": None,
            "model_name": None,
            "score": None,
            "if_chosen": None,
            "within_turn_id": None,
        }
    return {
        "turn": turn,
        "role": "model",
        "content": content,
        "model_provider": "provider",
        "model_name": model,
        "score": score,
        "if_chosen": False,
        "within_turn_id": j,
    }


def conversation(user: str, c: int, scores: list) -> dict:
    """One conversation: turn 0 = opening prompt + one answer per score; a turn 1 after."""
    cid = f"c{user}_{c}"
    prompt = f"{user} opening prompt {c}: what should I cook tonight?"
    hist = [_utterance(0, "user", prompt)]
    for j, s in enumerate(scores):
        hist.append(_utterance(0, "model", f"answer {j} to {cid}", j, s, MODELS[j]))
    best = max(range(len(scores)), key=lambda j: scores[j] or 0)
    hist[1 + best]["if_chosen"] = True
    hist += [  # a later turn: ignored (only the opening prompt's answers are compared)
        _utterance(1, "user", "and dessert?"),
        _utterance(1, "model", f"late a {cid}", 0, 90, MODELS[best]),
        _utterance(1, "model", f"late b {cid}", 1, 10, MODELS[best]),
    ]
    return {
        "conversation_id": cid,
        "user_id": user,
        "generated_datetime": "2023-11-22 15:49:47",
        "timing_duration_s": 300.0,
        "conversation_type": "unguided",
        "opening_prompt": prompt,
        "conversation_turns": 2,
        "conversation_history": hist,
        "performance_attributes": {"values": 50, "fluency": 80},
        "choice_attributes": {"values": 50},
        "open_feedback": "fine",
        "included_in_balanced_subset": True,
    }


def prism_rows() -> tuple[list[dict], list[dict]]:
    conv = []
    for u in USERS:
        for c in range(N_CONV):
            conv.append(conversation(u, c, [10, 40, 70, 95]))
    conv[0] = conversation("user0", 0, [10, 50, 50, 90])  # one tie: 5 pairs
    conv[N_CONV] = conversation("user1", 0, [10, None, 60, 90])  # one unscored: 3 pairs
    conv.append(conversation("ghost", 0, [1, 2, 3, 4]))  # not in the survey
    conv.append(conversation("rare", 0, [1, 2]))  # 1 pair: below the minimum
    survey = [
        {
            "user_id": u,
            "survey_only": False,
            "num_completed_conversations": N_CONV,
            "consent": "Yes",
            "age": "25-34 years old",
            "gender": "Female",
            "self_description": "I like food.",
        }
        for u in [*USERS, "rare"]
    ]
    return conv, survey


def write_prism(folder: Path, conv=None, survey=None, with_survey: bool = True) -> Path:
    """The hub's layout: conversations.jsonl and survey.jsonl at the top."""
    c, s = prism_rows()
    folder.mkdir(parents=True, exist_ok=True)
    files = [("conversations.jsonl", conv or c)]
    if with_survey:
        files.append(("survey.jsonl", survey or s))
    for name, rows in files:
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _cfg(path: Path, *ov: str):
    return load_config(
        "prism", [f"data.path={path}", "data.min_user_labels=5", "data.n_unseen_users=2", *ov]
    )


def test_prism_participants_as_users(tmp_path: Path) -> None:
    t = build_tables(_cfg(write_prism(tmp_path / "prism")))
    s = t.summary
    assert s.source == "prism"
    assert (s.n_users_seen, s.n_users_unseen) == (4, 2)
    assert set(t.users["user_id"]) == set(USERS)
    assert t.users["group"].isna().all() and t.groups == []
    per_user = t.annotations.groupby("user_id").size().to_dict()
    assert per_user == {"user0": 5 + 12, "user1": 3 + 12, **{u: 18 for u in USERS[2:]}}
    assert len(t.pairs) == sum(per_user.values())  # nobody shares a prompt
    assert s.drops == {
        "tie": 1,
        "unscored_response": 1,
        "user_not_in_survey": 1,
        "user_below_min_labels": 1,
        "annotation_of_dropped_user": 1,
    }
    assert any(n.startswith(f"0 of {len(t.pairs)} pairs are judged by >= 2") for n in s.notes)
    # later turns are never used; chosen = the higher score of the two answers
    text = t.responses.set_index("response_id")["text"]
    assert not text.str.startswith("late").any()
    for row in t.annotations.itertuples():
        ch, rj = text[row.chosen], text[row.rejected]
        assert ch.split(" to ")[1] == rj.split(" to ")[1]  # same conversation
        assert int(ch.split()[1]) > int(rj.split()[1])  # fixture scores rise with the index


def test_prism_splits_per_participant(tmp_path: Path) -> None:
    t = build_tables(_cfg(write_prism(tmp_path / "prism")))
    ann = t.annotations.merge(t.users, on="user_id")
    by = ann.groupby(["user_id", "split"]).size().unstack(fill_value=0)
    assert (by["test"] == ann.groupby("user_id").size().mul(0.2).round().astype(int)).all()
    assert (by.loc[ann.loc[~ann["seen"], "user_id"].unique(), "val"] == 0).all()
    assert (by.loc[ann.loc[ann["seen"], "user_id"].unique(), "val"] == 1).all()


def test_prism_without_survey_keeps_every_participant(tmp_path: Path) -> None:
    t = build_tables(_cfg(write_prism(tmp_path / "prism", with_survey=False)))
    assert "ghost" in set(t.users["user_id"]) and "user_not_in_survey" not in t.summary.drops


def test_prism_single_file_path(tmp_path: Path) -> None:
    folder = write_prism(tmp_path / "prism")
    t = build_tables(_cfg(folder / "conversations.jsonl"))  # no survey beside a file
    assert len(t.users) == len(USERS) + 1


def test_prism_utterance_without_role_names_row_and_column(tmp_path: Path) -> None:
    conv, survey = prism_rows()
    del conv[2]["conversation_history"][1]["role"]
    write_prism(tmp_path / "prism", conv, survey)
    with pytest.raises(DataError, match=r"row 2, column 'conversation_history\[1\].role': missing"):
        build_tables(_cfg(tmp_path / "prism"))
