"""Evaluation figures: expert allocation heatmap (paper Fig. 3), labels curve (Fig. 2) and\nthe active-onboarding curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (parents created), free it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_expert_allocation(
    groups: list[str], matrix: np.ndarray, path: str | Path, layer_names: list[str] | None = None
) -> Path:
    """Heatmap of the share of each group's users routed to each expert.

    ``matrix``: ``[n_groups, M]`` or ``[G, n_groups, M]`` (one panel per gated module).
    """
    plt = _pyplot()
    m = np.asarray(matrix)
    panels = m[None] if m.ndim == 2 else m
    n = panels.shape[0]
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.2 + 0.6 * panels.shape[2] * cols, 0.9 + 0.5 * len(groups) * rows),
        squeeze=False,
    )
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= n:
            ax.axis("off")
            continue
        im = ax.imshow(panels[k], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(panels.shape[2]))
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels(groups)
        ax.set_xlabel("expert")
        title = layer_names[k] if layer_names and k < len(layer_names) else "global gate"
        ax.set_title(title, fontsize=8)
        for gi in range(len(groups)):
            for e in range(panels.shape[2]):
                v = panels[k, gi, e]
                ax.text(
                    e,
                    gi,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < 0.6 else "black",
                )
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of group's users (top-1)")
    return _save(fig, path)


def plot_labels_curve(
    counts: list[int], accuracy: list[float | None], path: str | Path, reference: dict | None = None
) -> Path:
    """Unseen-user accuracy vs number of adaptation labels (horizontal lines: references)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [c for c, a in zip(counts, accuracy) if a is not None]
    ys = [a for a in accuracy if a is not None]
    ax.plot(xs, ys, marker="o", label="CoPL (adapted, unseen)")
    for name, value in (reference or {}).items():
        if value is not None:
            ax.axhline(value, linestyle="--", linewidth=1, label=name)
    ax.set_xlabel("adaptation labels per unseen user")
    ax.set_ylabel("accuracy")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_onboarding(answers: list[int], curves: dict[str, list[float]], path: str | Path) -> Path:
    """Unseen-user accuracy vs answers to the questions each selector chose (one line each)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, accuracy in curves.items():
        ax.plot(
            answers, accuracy, marker="o", label=name, linestyle="--" if name == "random" else "-"
        )
    ax.set_xlabel("answers per unseen user (questions chosen by the selector)")
    ax.set_ylabel("accuracy")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7, title="selector", title_fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
