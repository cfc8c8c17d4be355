"""copl_ray/eval/plots.py: each figure is a PNG with drawn pixels; a ``None`` accuracy is
left out of the labels curve; a 2-D allocation matrix is the single-panel case of the
``[G, n_groups, M]`` form (same picture)."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from copl_ray.eval.plots import plot_expert_allocation, plot_labels_curve

PNG = b"\x89PNG\r\n\x1a\n"


def pixels(path) -> np.ndarray:
    return imread(path)[..., :3]


def drawn(img: np.ndarray) -> int:
    """Pixels that are not white."""
    return int((img < 0.99).any(-1).sum())


def test_figures_are_written(tmp_path):
    p = plot_expert_allocation(["x", "y"], np.array([[1.0, 0.0], [0.2, 0.8]]), tmp_path / "a.png")
    q = plot_expert_allocation(
        ["x", "y"], np.random.rand(3, 2, 4), tmp_path / "b.png", ["l0.q", "l0.v", "l1.q"]
    )
    c = plot_labels_curve([1, 2, 4, 8], [0.6, 0.7, None, 0.9], tmp_path / "c.png", {"uniform": 0.6})
    for f in (p, q, c):
        assert f.read_bytes()[:8] == PNG


def test_allocation_heatmap_panels(tmp_path):
    groups, m = ["x", "y"], np.array([[1.0, 0.0], [0.2, 0.8]])
    one = pixels(plot_expert_allocation(groups, m, tmp_path / "sub" / "one.png"))
    stacked = pixels(plot_expert_allocation(groups, m[None], tmp_path / "stacked.png"))
    assert np.array_equal(one, stacked)  # [n, M] is the one-panel [1, n, M]
    assert drawn(one) > 0.1 * one.shape[0] * one.shape[1]  # a heatmap fills its panel
    # 5 gated modules: a 2×4 grid (3 axes switched off), figure 6.0 × 2.9 in against
    # 2.4 × 1.9 in for one panel (before the tight bounding box trims the margins)
    five = pixels(plot_expert_allocation(groups, np.stack([m] * 5), tmp_path / "five.png"))
    assert five.shape[0] > one.shape[0] and five.shape[1] > 1.5 * one.shape[1]


def test_labels_curve_leaves_out_missing_points(tmp_path):
    ref = {"uniform": 0.6, "oracle": None}  # a None reference draws no line
    gap = pixels(plot_labels_curve([1, 2, 4, 8], [0.6, 0.7, None, 0.9], tmp_path / "g.png", ref))
    kept = pixels(plot_labels_curve([1, 2, 8], [0.6, 0.7, 0.9], tmp_path / "k.png", ref))
    assert np.array_equal(gap, kept)
    other = pixels(plot_labels_curve([1, 2, 8], [0.6, 0.8, 0.9], tmp_path / "o.png", ref))
    assert not np.array_equal(kept, other) and drawn(kept) > 0
