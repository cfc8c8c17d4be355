"""From tables to a trained, evaluated, exported GNN — the pure-torch path (no Ray).

``prepare_inputs`` builds the graph and pair indices; ``export_gnn`` writes every file of
``run.gnn`` (see :mod:`copl_ray.graph.artifacts`) and returns ``metrics.json``;
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
from copl_ray.graph.artifacts import GNNArtifacts, write_user_table
from copl_ray.graph.bipartite import BipartiteGraph, PairIndex, build_graph, pair_index
from copl_ray.graph.model import CoPLGNN, GNNShape, export_user_embeddings, pair_accuracy


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


def export_gnn(
    cfg: Config,
    tables: PreferenceTables,
    inputs: GNNInputs,
    shape: GNNShape,
    best_state: dict[str, torch.Tensor],
    train_meta: dict,
    out_dir: str | Path,
) -> dict:
    """Write model, graph, embeddings of every user, adaptation, metrics and t-SNE."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    graph = inputs.graph
    e_user, e_resp = final_embeddings(graph, shape, best_state)
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

    users = tables.users.copy()
    users["user_id"] = users["user_id"].astype(str)
    unseen_ids = users.loc[~users["seen"].astype(bool), "user_id"].tolist()
    ann = tables.annotations
    unseen_ann = ann[(ann["split"] == "survey") & ann["user_id"].astype(str).isin(unseen_ids)]
    adapted: dict[str, pd.DataFrame] = {}
    variants = list(dict.fromkeys(["weighted", *cfg.adapt.variants]))
    for variant in variants if unseen_ids else []:
        df = adapt_unseen_users(art, unseen_ann, cfg.adapt, variant) if len(unseen_ann) else None
        missing = [u for u in unseen_ids if df is None or u not in set(df["user_id"])]
        if missing:  # an unseen user without a label: the mean seen user, flagged
            mean = art.mean_user().numpy().astype(np.float32)
            extra = pd.DataFrame(
                {
                    "user_id": missing,
                    "embedding": [mean] * len(missing),
                    "n_neighbors": 0,
                    "fallback": True,
                    "n_unknown": 0,
                    "fallback_kind": "mean_user",
                }
            )
            df = extra if df is None else pd.concat([df, extra], ignore_index=True)
        adapted[variant] = df.set_index("user_id").loc[unseen_ids].reset_index()

    seen_rows = pd.DataFrame(
        {
            "user_id": graph.user_ids,
            "embedding": list(e_export.numpy()),
            "seen": True,
            "kind": "trained",
            "n_neighbors": 0,
            "fallback": False,
        }
    )
    parts = [seen_rows]
    if unseen_ids:
        w = adapted["weighted"]
        parts.append(w.assign(seen=False, kind="adapted")[seen_rows.columns])
    write_user_table(pd.concat(parts, ignore_index=True), out / "user_embeddings.parquet")
    if adapted:
        rows = [df.assign(variant=v) for v, df in adapted.items() if v in cfg.adapt.variants]
        table = pd.concat(rows, ignore_index=True)[
            [
                "variant",
                "user_id",
                "embedding",
                "n_neighbors",
                "fallback",
                "n_unknown",
                "fallback_kind",
            ]
        ]
        table["embedding"] = [np.asarray(e, np.float32) for e in table["embedding"]]
        table.to_parquet(out / "adaptation.parquet", index=False)

    # ------------------------------------------------------------- metrics
    seed = cfg.gnn.seed
    heldout = concat_pairs(inputs.val, inputs.test)
    rows, ta, tb = truth_pairs(
        tables, graph.user_ids, graph.response_index, cfg.gnn.truth_pairs_per_user, seed
    )
    groups = users.set_index("user_id").reindex(graph.user_ids)["group"].to_numpy()
    metrics = {
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
        "n_users_unseen": len(unseen_ids),
        "n_responses_in_graph": graph.n_responses,
        "n_edges": {
            "pos": int(graph.pos_edge_index.shape[1]),
            "neg": int(graph.neg_edge_index.shape[1]),
        },
        "ari": _kmeans_ari(e_export.numpy(), groups, seed),
        "adaptation": {},
    }
    if adapted:
        uann = ann[(ann["split"] == "test") & ann["user_id"].astype(str).isin(unseen_ids)]
        u_rows = pd.Index(unseen_ids).get_indexer(uann["user_id"].astype(str))
        ua, ub = (
            graph.response_index(uann["chosen"].to_numpy()),
            graph.response_index(uann["rejected"].to_numpy()),
        )  # noqa: E501
        ok = (ua >= 0) & (ub >= 0)
        trows, tra, trb = truth_pairs(
            tables, unseen_ids, graph.response_index, cfg.gnn.truth_pairs_per_user, seed
        )
        for v, df in adapted.items():
            emb = torch.from_numpy(np.stack(df["embedding"].to_numpy()).astype(np.float32))
            metrics["adaptation"][v] = {
                "gnn_accuracy": truth_accuracy(emb, e_resp, u_rows[ok], ua[ok], ub[ok]),
                "truth_accuracy": truth_accuracy(emb, e_resp, trows, tra, trb),
                "n_test_pairs_in_graph": int(ok.sum()),
                "n_test_skipped": int((~ok).sum()),
                "n_users": len(df),
                "n_fallback": int(df["fallback"].sum()),
                "mean_neighbors": float(df["n_neighbors"].mean()),
                "n_unknown_labels": int(df["n_unknown"].sum()),
            }
    if cfg.gnn.tsne:
        from copl_ray.graph.plots import plot_user_tsne

        emb_all = [e_export.numpy()]
        seen_flags = [np.ones(graph.n_users, bool)]
        grp = list(groups)
        if "weighted" in adapted:
            emb_all.append(np.stack(adapted["weighted"]["embedding"].to_numpy()))
            seen_flags.append(np.zeros(len(unseen_ids), bool))
            grp += list(users.set_index("user_id").reindex(unseen_ids)["group"].to_numpy())
        points, flags = np.concatenate(emb_all), np.concatenate(seen_flags)
        if plot_user_tsne(points, grp, flags, out / "tsne.png", seed=seed) is None:
            metrics["tsne_skipped"] = f"{len(points)} user(s): too few points for a t-SNE"
            print(f"gnn: t-SNE skipped: {metrics['tsne_skipped']}", flush=True)
    metrics["export_seconds"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


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
