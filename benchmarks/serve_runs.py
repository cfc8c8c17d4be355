"""Run directories for ``serve.py``: a trained tiny run, and a large synthetic GNN beside it.

The Serve benchmark scores with the tiny run's reward model and measures new-user
adaptation against 10,000 seen users; this builds both without touching the product code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np


def ensure_run(run_dir: Path) -> None:
    from copl_ray.config import load_config
    from copl_ray.pipeline import run_pipeline
    from copl_ray.variants import COPL

    if (run_dir / "reward" / COPL / "_SUCCESS").exists() or (
        run_dir / "reward" / COPL / "reward_config.json"
    ).exists():
        return
    print(f"[bench] no trained run at {run_dir}: running the tiny pipeline (data, gnn, reward)")
    run_pipeline(load_config("tiny", [f"run.dir={run_dir}"]), "data,gnn,reward")


def build_large_gnn_run(src: Path, dst: Path, n_users: int, labels: int, seed: int = 0) -> None:
    """A run dir sharing ``src``'s data/reward/tokenizer, with a synthetic GNN of n_users.

    Users: random unit embeddings; each labels ``labels`` random pairs of the data (one
    positive edge to the chosen, one negative edge to the rejected response). Response
    embeddings are the trained ones of ``src``, so response ids and texts match.
    """
    import pandas as pd
    import torch

    from copl_ray.data.tables import PreferenceTables
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.graph.users import TRAINED, UserEmbedding, UserEmbeddings

    if dst.exists():
        shutil.rmtree(dst)
    (dst / "gnn").mkdir(parents=True)
    for name in ("data", "reward", "tokenizer", "config.yaml"):
        if (src / name).exists():
            os.symlink(src / name, dst / name)
    real = GNNArtifacts.load(src / "gnn")
    pairs = PreferenceTables.read(src / "data").pairs
    known = set(real.response_ids.tolist())
    pairs = pairs[pairs["response_a"].isin(known) & pairs["response_b"].isin(known)]
    rng = np.random.default_rng(seed)
    emb = torch.nn.functional.normalize(torch.randn(n_users, real.dim), dim=1)
    pick = rng.integers(0, len(pairs), size=(n_users, labels))
    flip = rng.random((n_users, labels)) < 0.5
    a = pairs["response_a"].to_numpy()[pick]
    b = pairs["response_b"].to_numpy()[pick]
    chosen, rejected = np.where(flip, b, a), np.where(flip, a, b)
    users = np.repeat(np.arange(n_users), labels)
    node = pd.Index(real.response_ids)
    pos = torch.from_numpy(np.stack([users, node.get_indexer(chosen.ravel())]))
    neg = torch.from_numpy(np.stack([users, node.get_indexer(rejected.ravel())]))
    ids = [f"s{i:05d}" for i in range(n_users)]
    GNNArtifacts(
        ids, emb, real.response_ids, real.response_embeddings, pos, neg, real.normalized
    ).save(dst / "gnn")
    UserEmbeddings.from_records(
        UserEmbedding(u, e, seen=True, kind=TRAINED) for u, e in zip(ids, emb.numpy())
    ).write(dst / "gnn")
