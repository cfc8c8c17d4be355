"""t-SNE of user embeddings (paper Fig. 1/4): colour = true group, marker = seen/adapted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# t-SNE needs perplexity < points; the perplexity below is >= 2, so 3 points is the least
# sklearn accepts, and fewer than 4 make no picture worth drawing
MIN_TSNE_POINTS = 4


def _tsne_2d(
    x: np.ndarray, seen: np.ndarray, grp: np.ndarray, max_points: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-d t-SNE of at most ``max_points`` users (all unseen first, then a random subset of
    the seen); returns the points with their ``seen`` and group labels.

    perplexity = clip((n - 1) / 3, 2, 30): sklearn needs perplexity < n.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if len(x) > max_points:
        rng = np.random.default_rng(seed)
        unseen_idx = np.flatnonzero(~seen)[:max_points]
        seen_idx = np.flatnonzero(seen)
        take = rng.choice(seen_idx, size=max(0, max_points - len(unseen_idx)), replace=False)
        keep = np.concatenate([unseen_idx, take])
        x, seen, grp = x[keep], seen[keep], grp[keep]
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=400, random_state=seed)
    with threadpool_limits(1):  # OpenMP threads on a shared 2-core box only oversubscribe
        return tsne.fit_transform(x), seen, grp


def plot_user_tsne(
    embeddings: np.ndarray,
    groups: list[str | None],
    seen: np.ndarray,
    path: str | Path,
    max_points: int = 1500,
    seed: int = 0,
    title: str = "CoPL user embeddings (t-SNE)",
) -> Path | None:
    """Write a PNG; seen users as dots, adapted unseen users as black-edged stars.

    At most ``max_points`` users are embedded (random subset, unseen users kept first)
    so the plot stays seconds even at UF-P scale (Barnes-Hut, 400 iterations). With fewer
    than :data:`MIN_TSNE_POINTS` users there is nothing to embed: returns None, writes
    nothing (the caller notes the skip) instead of failing the stage.
    """
    if len(embeddings) < MIN_TSNE_POINTS:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(embeddings, dtype=np.float32)
    seen = np.asarray(seen, dtype=bool)
    grp = np.array([g if g is not None and g == g else "unknown" for g in groups], dtype=object)
    xy, seen, grp = _tsne_2d(x, seen, grp, max_points, seed)

    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    for i, g in enumerate(sorted(set(grp.tolist()))):
        m = grp == g
        ax.scatter(*xy[m & seen].T, s=8, alpha=0.6, color=cmap(i % 10), label=f"{g} (seen)")
        if (m & ~seen).any():
            ax.scatter(
                *xy[m & ~seen].T,
                s=70,
                marker="*",
                color=cmap(i % 10),
                edgecolors="black",
                linewidths=0.6,
                label=f"{g} (adapted unseen)",
            )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=1.2, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
