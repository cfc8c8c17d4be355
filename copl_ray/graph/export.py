"""From tables to a trained, evaluated, exported GNN — the pure-torch path (no Ray).

``prepare_inputs`` builds the graph and pair indices; ``export_gnn`` writes every file of
``run.gnn`` (see :mod:`copl_ray.graph.artifacts`; every user's embedding through
:class:`~copl_ray.graph.users.UserEmbeddings`) and returns ``metrics.json``;
``train_gnn_local`` chains both around :class:`~copl_ray.graph.train.GNNTrainer` (used by
the accuracy tests and the benchmark; the Ray stage trains in a worker instead).

Accuracies (share of pairs with ``s_ua > s_ub``; ``None`` where a set is empty):

- ``val_accuracy``: the seen users' ``val`` pairs (checkpoint selection);
- ``test_accuracy_in_graph``: their ``test`` pairs whose two responses have nodes (the
  synthetic/UF-P test pairs come from held-out prompts, so usually none: counted in
  ``n_test_skipped``);
- ``heldout_accuracy``: val ∪ test-in-graph (the paper's Table 5 metric);
- ``truth_accuracy`` (groups known): up to ``gnn.truth_pairs_per_user`` survey-pool pairs
  per user (drawn with replacement, never one the user labelled, both responses in the
  graph), labelled by the user's true group — a large held-out set of exactly the
  Table 5 kind. Adapted unseen users get the same measure per variant.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from copl_ray.config import Config
from copl_ray.data.tables import PreferenceTables, label_column
from copl_ray.graph.adapt import adapt_unseen_users
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.bipartite import BipartiteGraph, PairIndex, build_graph, pair_index
from copl_ray.graph.model import CoPLGNN, GNNShape, export_user_embeddings, pair_accuracy
from copl_ray.graph.users import ADAPTED, TRAINED, UserEmbedding, UserEmbeddings, path_in
from copl_ray.graph.users import COLUMNS as USER_COLUMNS


@dataclass
class GNNInputs:
    graph: BipartiteGraph
    train: PairIndex
    val: PairIndex
    test: PairIndex


def prepare_inputs(tables: PreferenceTables) -> GNNInputs:
    graph = build_graph(tables.annotations, tables.users)
    return GNNInputs(
        graph=graph,
        train=pair_index(graph, tables.annotations, "survey"),
        val=pair_index(graph, tables.annotations, "val"),
        test=pair_index(graph, tables.annotations, "test"),
    )


def concat_pairs(*parts: PairIndex) -> PairIndex:
    return PairIndex(
        torch.cat([p.user for p in parts]),
        torch.cat([p.chosen for p in parts]),
        torch.cat([p.rejected for p in parts]),
        sum(p.n_skipped for p in parts),
    )


def truth_pairs(
    tables: PreferenceTables, user_ids: list[str], response_index, per_user: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row in ``user_ids``, chosen node, rejected node) of held-out pool pairs by true group."""
    users = tables.users.set_index("user_id")
    pool = tables.pairs[~tables.pairs["heldout"].astype(bool)].reset_index(drop=True)
    ra, rb = (
        response_index(pool["response_a"].to_numpy()),
        response_index(pool["response_b"].to_numpy()),
    )
    pool = pool[(ra >= 0) & (rb >= 0)].reset_index(drop=True)
    groups = users.reindex(user_ids)["group"].to_numpy()
    label_cols = {g: label_column(g) for g in set(groups) if isinstance(g, str)}
    if pool.empty or per_user <= 0 or not all(c in pool for c in label_cols.values()):
        return (np.zeros(0, np.int64),) * 3
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(user_ids)), per_user)
    pick = rng.integers(0, len(pool), size=len(rows))
    labelled = tables.annotations[tables.annotations["split"].isin(["survey", "val"])]
    pair_pos = pd.Index(pool["pair_id"]).get_indexer(labelled["pair_id"])
    user_pos = pd.Index(user_ids).get_indexer(labelled["user_id"].astype(str))
    ok = (pair_pos >= 0) & (user_pos >= 0)
    seen_keys = set((user_pos[ok] * len(pool) + pair_pos[ok]).tolist())
    keep = ~np.isin(rows * len(pool) + pick, list(seen_keys))
    label = np.zeros(len(rows), dtype=np.int64)
    for g, col in label_cols.items():
        m = groups[rows] == g
        label[m] = pool[col].to_numpy()[pick[m]]
    keep &= label != 0  # unknown group or a tie: no truth
    rows, pick, label = rows[keep], pick[keep], label[keep]
    a = response_index(pool["response_a"].to_numpy())[pick]
    b = response_index(pool["response_b"].to_numpy())[pick]
    return rows, np.where(label > 0, a, b), np.where(label > 0, b, a)


def truth_accuracy(
    e_user: torch.Tensor, e_resp: torch.Tensor, rows: np.ndarray, a: np.ndarray, b: np.ndarray
) -> float | None:
    pairs = PairIndex(torch.from_numpy(rows), torch.from_numpy(a), torch.from_numpy(b))
    return pair_accuracy(e_user, e_resp, pairs)


@torch.no_grad()
def final_embeddings(
    graph: BipartiteGraph, shape: GNNShape, state: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    model = CoPLGNN(shape)
    model.load_state_dict({k: v.cpu() for k, v in state.items()})
    model.eval()
    return model(graph.adjacency())


def _kmeans_ari(x: np.ndarray, groups: np.ndarray, seed: int) -> float | None:
    known = np.array([isinstance(g, str) for g in groups])
    if known.sum() < 2 or len(set(groups[known].tolist())) < 2:
        return None
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    k = len(set(groups[known].tolist()))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x[known])
    return float(adjusted_rand_score(groups[known], pred))


# The adaptation whose unseen users the user-embedding file holds (what the reward model,
# eval and serving read); the other configured variants go to adaptation.parquet only.
FILE_VARIANT = "weighted"
ADAPTATION_FILE = "adaptation.parquet"


def export_gnn(
    cfg: Config,
    tables: PreferenceTables,
    inputs: GNNInputs,
    shape: GNNShape,
    best_state: dict[str, torch.Tensor],
    train_meta: dict,
    out_dir: str | Path,
) -> dict:
    """Write model, graph, embeddings of every user, adaptation, metrics and t-SNE.

    Steps in this order (each seeded draw — truth pairs, k-means, t-SNE — in the order of
    the single function this was): weights and graph, the unseen users' adaptations, the
    user-embedding file and adaptation table, then the metrics of seen and adapted users.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    e_user, e_resp = final_embeddings(inputs.graph, shape, best_state)
    art = save_model_and_graph(cfg, inputs.graph, shape, best_state, e_user, e_resp, out)
    unseen_ids = unseen_user_ids(tables)
    adapted = adapt_every_variant(cfg, tables, art, unseen_ids)
    write_user_files(art, adapted, cfg.adapt.variants, out)
    metrics = seen_metrics(cfg, tables, inputs, e_user, e_resp, art, train_meta, len(unseen_ids))
    if adapted:
        metrics["adaptation"] = adaptation_metrics(cfg, tables, art, unseen_ids, adapted)
    if cfg.gnn.tsne:
        skipped = user_tsne(tables, art, unseen_ids, adapted, out / "tsne.png", cfg.gnn.seed)
        if skipped is not None:
            metrics["tsne_skipped"] = skipped
            print(f"gnn: t-SNE skipped: {skipped}", flush=True)
    metrics["export_seconds"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def save_model_and_graph(
    cfg: Config,
    graph: BipartiteGraph,
    shape: GNNShape,
    best_state: dict[str, torch.Tensor],
    e_user: torch.Tensor,
    e_resp: torch.Tensor,
    out: Path,
) -> GNNArtifacts:
    """Weights, ``gnn_config.json`` and the graph files; returns the artifacts (seen users at
    the export scale) that adaptation and serving read back."""
    e_export = export_user_embeddings(e_user, cfg.gnn.normalize_embeddings)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in best_state.items()},
        str(out / "model.safetensors"),
    )
    (out / "gnn_config.json").write_text(
        json.dumps({"shape": asdict(shape), "gnn": asdict(cfg.gnn)}, indent=2)
    )
    art = GNNArtifacts(
        graph.user_ids,
        e_export,
        graph.response_ids,
        e_resp,
        graph.pos_edge_index,
        graph.neg_edge_index,
        cfg.gnn.normalize_embeddings,
    )
    art.save(out)
    return art


def unseen_user_ids(tables: PreferenceTables) -> list[str]:
    users = tables.users
    return users.loc[~users["seen"].astype(bool), "user_id"].astype(str).tolist()


def user_groups(tables: PreferenceTables, user_ids: list[str]) -> np.ndarray:
    """Each user's known group (NaN where none), in the order of ``user_ids``."""
    users = tables.users.assign(user_id=tables.users["user_id"].astype(str))
    return users.set_index("user_id").reindex(user_ids)["group"].to_numpy()


def adapt_every_variant(
    cfg: Config, tables: PreferenceTables, art: GNNArtifacts, unseen_ids: list[str]
) -> dict[str, UserEmbeddings]:
    """Per adaptation variant (:data:`FILE_VARIANT` first, then ``adapt.variants``), every
    unseen user's record in ``unseen_ids`` order, adapted from their survey labels; a user
    without a label gets the mean seen user, flagged (``fallback_kind="mean_user"``)."""
    ann = tables.annotations
    unseen_ann = ann[(ann["split"] == "survey") & ann["user_id"].astype(str).isin(unseen_ids)]
    adapted: dict[str, UserEmbeddings] = {}
    for variant in list(dict.fromkeys([FILE_VARIANT, *cfg.adapt.variants])) if unseen_ids else []:
        parts = []
        if len(unseen_ann):
            frame = adapt_unseen_users(art, unseen_ann, cfg.adapt, variant)
            parts.append(UserEmbeddings(frame, f"adaptation/{variant}"))
        missing = [u for u in unseen_ids if not any(u in t for t in parts)]
        if missing:
            mean = art.mean_user().numpy().astype(np.float32)
            parts.append(UserEmbeddings.from_records(_mean_user(u, mean) for u in missing))
        adapted[variant] = UserEmbeddings.concat(*parts).take(unseen_ids, "unseen")
    return adapted


def _mean_user(user_id: str, mean: np.ndarray) -> UserEmbedding:
    return UserEmbedding(
        user_id, mean, seen=False, kind=ADAPTED, fallback=True, fallback_kind="mean_user"
    )


def write_user_files(
    art: GNNArtifacts, adapted: dict[str, UserEmbeddings], variants: list[str], out: Path
) -> None:
    """The user-embedding file (every seen user's trained row, then every unseen user's
    :data:`FILE_VARIANT` adaptation) and ``adaptation.parquet`` (``variant`` + the record's
    columns, one block per configured variant)."""
    trained = UserEmbeddings.from_records(
        UserEmbedding(u, e, seen=True, kind=TRAINED)
        for u, e in zip(art.user_ids, art.user_embeddings.numpy())
    )
    parts = [trained, adapted[FILE_VARIANT]] if adapted else [trained]
    UserEmbeddings.concat(*parts).write(path_in(out))
    if adapted:
        blocks = [t.frame().assign(variant=v) for v, t in adapted.items() if v in variants]
        table = pd.concat(blocks, ignore_index=True)[["variant", *USER_COLUMNS]]
        table.to_parquet(out / ADAPTATION_FILE, index=False)


def seen_metrics(
    cfg: Config,
    tables: PreferenceTables,
    inputs: GNNInputs,
    e_user: torch.Tensor,
    e_resp: torch.Tensor,
    art: GNNArtifacts,
    train_meta: dict,
    n_unseen: int,
) -> dict:
    """``metrics.json`` of the seen users (accuracies, training record, graph size, ARI);
    ``adaptation`` is left empty for :func:`adaptation_metrics`."""
    seed, graph = cfg.gnn.seed, inputs.graph
    heldout = concat_pairs(inputs.val, inputs.test)
    rows, ta, tb = truth_pairs(
        tables, graph.user_ids, graph.response_index, cfg.gnn.truth_pairs_per_user, seed
    )
    return {
        "heldout_accuracy": pair_accuracy(e_user, e_resp, heldout),
        "val_accuracy": pair_accuracy(e_user, e_resp, inputs.val),
        "test_accuracy_in_graph": pair_accuracy(e_user, e_resp, inputs.test),
        "truth_accuracy": truth_accuracy(e_user, e_resp, rows, ta, tb),
        "n_heldout_pairs": len(heldout),
        "n_val_pairs": len(inputs.val),
        "n_test_pairs_in_graph": len(inputs.test),
        "n_val_skipped": inputs.val.n_skipped,
        "n_test_skipped": inputs.test.n_skipped,
        "n_truth_pairs": int(len(rows)),
        "best_epoch": train_meta.get("best_epoch"),
        "epochs": train_meta.get("epoch"),
        "loss_curve": train_meta.get("loss_curve", []),
        "val_curve": train_meta.get("val_curve", []),
        "seconds": float(sum(train_meta.get("epoch_seconds", []))),
        "resumed_from_epoch": train_meta.get("resumed_from_epoch", 0),
        "init": train_meta.get("init", {"init": "random"}),
        "n_users_seen": graph.n_users,
        "n_users_unseen": n_unseen,
        "n_responses_in_graph": graph.n_responses,
        "n_edges": {
            "pos": int(graph.pos_edge_index.shape[1]),
            "neg": int(graph.neg_edge_index.shape[1]),
        },
        "ari": _kmeans_ari(art.user_embeddings.numpy(), user_groups(tables, graph.user_ids), seed),
        "adaptation": {},
    }


def adaptation_metrics(
    cfg: Config,
    tables: PreferenceTables,
    art: GNNArtifacts,
    unseen_ids: list[str],
    adapted: dict[str, UserEmbeddings],
) -> dict[str, dict]:
    """Per adaptation variant: accuracy of the adapted unseen users on their in-graph test
    pairs and on truth pairs, and how they were adapted (fallbacks, neighbours, unknowns)."""
    ann = tables.annotations
    uann = ann[(ann["split"] == "test") & ann["user_id"].astype(str).isin(unseen_ids)]
    u_rows = pd.Index(unseen_ids).get_indexer(uann["user_id"].astype(str))
    ua = art.response_index(uann["chosen"].to_numpy())
    ub = art.response_index(uann["rejected"].to_numpy())
    ok = (ua >= 0) & (ub >= 0)
    trows, tra, trb = truth_pairs(
        tables, unseen_ids, art.response_index, cfg.gnn.truth_pairs_per_user, cfg.gnn.seed
    )
    e_resp = art.response_embeddings
    out = {}
    for v, table in adapted.items():
        emb = torch.from_numpy(table.matrix)
        out[v] = {
            "gnn_accuracy": truth_accuracy(emb, e_resp, u_rows[ok], ua[ok], ub[ok]),
            "truth_accuracy": truth_accuracy(emb, e_resp, trows, tra, trb),
            "n_test_pairs_in_graph": int(ok.sum()),
            "n_test_skipped": int((~ok).sum()),
            "n_users": len(table),
            "n_fallback": int(table.meta["fallback"].sum()),
            "mean_neighbors": float(table.meta["n_neighbors"].mean()),
            "n_unknown_labels": int(table.meta["n_unknown"].sum()),
        }
    return out


def user_tsne(
    tables: PreferenceTables,
    art: GNNArtifacts,
    unseen_ids: list[str],
    adapted: dict[str, UserEmbeddings],
    path: Path,
    seed: int,
) -> str | None:
    """The t-SNE of the seen users and the :data:`FILE_VARIANT` adapted unseen users, by
    group; returns why it was skipped (too few points), else None."""
    from copl_ray.graph.plots import plot_user_tsne

    emb_all = [art.user_embeddings.numpy()]
    seen_flags = [np.ones(art.n_users, bool)]
    grp = list(user_groups(tables, art.user_ids))
    if FILE_VARIANT in adapted:
        emb_all.append(adapted[FILE_VARIANT].matrix)
        seen_flags.append(np.zeros(len(unseen_ids), bool))
        grp += list(user_groups(tables, unseen_ids))
    points, flags = np.concatenate(emb_all), np.concatenate(seen_flags)
    if plot_user_tsne(points, grp, flags, path, seed=seed) is None:
        return f"{len(points)} user(s): too few points for a t-SNE"
    return None


def train_gnn_local(cfg: Config, tables: PreferenceTables, out_dir: str | Path, log=None) -> dict:
    """Train (pure torch, in this process) and export; returns metrics."""
    from copl_ray.graph.train import GNNTrainer, resolve_device

    inputs = prepare_inputs(tables)
    trainer = GNNTrainer(
        inputs.graph, inputs.train, inputs.val, cfg.gnn, resolve_device(cfg.gnn.use_gpu)
    )
    trainer.fit(on_epoch=log)
    return export_gnn(
        cfg, tables, inputs, trainer.shape, trainer.best_state, trainer.state_meta(), out_dir
    )
