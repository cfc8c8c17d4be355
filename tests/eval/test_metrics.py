"""Accuracy summaries and expert allocation on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from copl_ray.eval.metrics import accuracy_summary, allocation_matrix, expert_usage


def test_accuracy_summary_splits_by_group_and_pair_type():
    frame = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c", "c"],
            "group": ["g1", "g1", "g2", "g2", "g2", None],
            "controversial": [1, 0, 1, 1, -1, 0],
            "correct": [True, True, False, True, True, False],
        }
    )
    s = accuracy_summary(frame)
    assert s["overall"] == pytest.approx(4 / 6)
    assert s["controversial"] == pytest.approx(2 / 3)  # rows 0, 2, 3
    assert s["common"] == pytest.approx(1 / 2)  # rows 1, 5 (unknown type excluded)
    assert s["by_group"] == {"g1": 1.0, "g2": pytest.approx(2 / 3)}
    assert (s["n_pairs"], s["n_users"]) == (6, 3)


def test_empty_split_is_null():
    s = accuracy_summary(None)
    assert s["overall"] is None and s["controversial"] is None and s["n_pairs"] == 0


def test_allocation_matrix_global_and_per_module():
    w = np.array([[0.9, 0.0, 0.0], [0.0, 0.7, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.6]])
    groups = ["x", "y", "x", "y"]
    names, m = allocation_matrix(w, groups)
    assert names == ["x", "y"]
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 0.5, 0.5]])
    names, m3 = allocation_matrix(np.stack([w, w[:, ::-1]]), groups)
    assert m3.shape == (2, 2, 3)
    np.testing.assert_allclose(m3[1], [[0, 0, 1], [0.5, 0.5, 0]])
    u = expert_usage(w)
    assert u["share"] == pytest.approx([0.5, 0.25, 0.25]) and u["idle_experts"] == 0
    assert expert_usage(np.array([[1.0, 0.0], [0.9, 0.0]]))["idle_experts"] == 1
