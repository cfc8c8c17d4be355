"""Active onboarding on the tiny run (README command (1)): the eval stage's simulation,
on data whose truth is known.

The unseen users answer as their group prefers (no noise). With two groups, a pair the
groups disagree on (54 % of the pool) tells a user's group in one answer; a pair they agree
on tells nothing. Hence the bars:

* **CoPL's selector reaches random's 16-answer accuracy within 8 answers** (the issue's
  bar). Its opening question is a split pair by construction (a consensus pair cannot move
  the adapted embedding: its expected change is ~0), so one answer puts every user on
  their group's side; random needs several answers before each user has answered a split
  pair (after n answers a user has none with probability ~0.46ⁿ).
* **After one answer, CoPL's selector is ≥ 5 points above random's.** Random's first
  answer is a consensus pair for ~46 % of the users, who stay at the population mean
  (on controversial pairs: a coin); CoPL's is a split pair for all. 5 points is about 3
  standard errors of a difference between two accuracies over the same 2,000 pairs.
* **Every curve ends within 3 points of CoPL's unseen accuracy from 8 survey labels**
  (the labels curve's last point): after 16 answers every selector has identified the
  group, and the reward model then scores the user as any adapted user of that group.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def report(tiny_run):
    return json.loads(tiny_run.report_json.read_text())


def test_onboarding_record_is_complete(report, tiny_run):
    o = report["onboarding"]
    assert set(o["selectors"]) == {"copl", "pref", "random"}
    for name, curve in o["selectors"].items():
        assert curve["answers"] == [1, 2, 4, 8, 16], name
        assert all(0.0 <= a <= 1.0 for a in curve["accuracy"]), name
        assert curve["selection_ms_p50"] > 0
    assert o["selectors"]["random"]["draws"] == 3
    assert o["truth"] == "group" and o["n_users"] == 40 and o["n_pairs"] == 40 * 50
    assert o["reference_answers"] == 16
    assert o["random_reference_accuracy"] == o["selectors"]["random"]["accuracy"][-1]
    assert set(o["answers_to_match_random16"]) == {"copl", "pref", "random"}
    assert report["figures"]["onboarding"] == "eval/onboarding.png"
    assert (tiny_run.root / report["figures"]["onboarding"]).stat().st_size > 0
    assert "## Active onboarding" in tiny_run.report_md.read_text()


def test_copl_selector_needs_at_most_8_answers_to_match_random_at_16(report):
    o = report["onboarding"]
    assert o["answers_to_match_random16"]["copl"] is not None
    assert o["answers_to_match_random16"]["copl"] <= 8, o


def test_one_chosen_answer_beats_one_random_answer(report):
    curves = report["onboarding"]["selectors"]
    assert curves["copl"]["accuracy"][0] >= curves["random"]["accuracy"][0] + 0.05, curves


def test_every_selector_ends_where_adaptation_from_8_labels_is(report):
    from_labels = report["labels_curve"]["accuracy"][-1]
    for name, curve in report["onboarding"]["selectors"].items():
        assert abs(curve["accuracy"][-1] - from_labels) <= 0.03, (name, curve, from_labels)
