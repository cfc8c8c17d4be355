"""Accuracy summaries, expert allocation and the eval figures on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from copl_ray.eval.metrics import accuracy_summary, allocation_matrix, expert_usage
from copl_ray.eval.plots import plot_expert_allocation, plot_labels_curve


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


def test_figures_are_written(tmp_path):
    p = plot_expert_allocation(["x", "y"], np.array([[1.0, 0.0], [0.2, 0.8]]), tmp_path / "a.png")
    q = plot_expert_allocation(
        ["x", "y"], np.random.rand(3, 2, 4), tmp_path / "b.png", ["l0.q", "l0.v", "l1.q"]
    )
    c = plot_labels_curve([1, 2, 4, 8], [0.6, 0.7, None, 0.9], tmp_path / "c.png", {"uniform": 0.6})
    for f in (p, q, c):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
