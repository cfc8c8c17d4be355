"""copl_ray/graph/plots.py: the t-SNE figure is a 7×6 in, 120 dpi PNG (840×720 pixels)
with drawn points; fewer than MIN_TSNE_POINTS users write nothing; beyond ``max_points``
the unseen users are kept first and the seen users subsampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from copl_ray.graph.plots import MIN_TSNE_POINTS, _tsne_2d, plot_user_tsne


def test_tsne_png_size_and_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (6, 4)), rng.normal(8, 1, (6, 4))])
    groups = ["a"] * 6 + [None] * 5 + [float("nan")]  # None / NaN: "unknown"
    seen = np.array([True] * 5 + [False] + [True] * 5 + [False])
    out = plot_user_tsne(emb, groups, seen, tmp_path / "f" / "tsne.png")
    assert out == tmp_path / "f" / "tsne.png"
    img = imread(out)[..., :3]
    assert img.shape == (720, 840, 3)
    assert (img < 0.99).any(-1).sum() > 500  # points, frame, legend are drawn


def test_tsne_skips_too_few_points(tmp_path: Path) -> None:
    out = tmp_path / "tsne.png"
    emb = np.random.default_rng(0).normal(size=(2, 8))
    assert plot_user_tsne(emb, ["a", "b"], np.array([True, False]), out) is None
    assert not out.exists()
    few = np.random.default_rng(0).normal(size=(MIN_TSNE_POINTS - 1, 8))
    assert plot_user_tsne(few, ["a"] * len(few), np.ones(len(few), bool), out) is None


def test_subsample_keeps_every_unseen_user_first() -> None:
    x = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    seen = np.ones(20, bool)
    seen[[4, 9, 15]] = False
    grp = np.array(["g"] * 20, dtype=object)
    xy, s, g = _tsne_2d(x, seen, grp, max_points=8, seed=0)
    assert xy.shape == (8, 2) and len(g) == 8
    assert s.tolist() == [False] * 3 + [True] * 5
