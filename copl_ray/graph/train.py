"""Pure-torch training loop of the GNN (no Ray): BPR, AdamW, warm-up + cosine.

The graph is propagated **once per optimisation step** and the loss takes every pair of
the step from that one propagation:

- ``schedule="minibatch"``: ``ceil(N / batch_size)`` steps an epoch over shuffled pairs,
  each re-propagating the whole graph (the official schedule, docs/reference-code.md B11);
- ``schedule="full"``: one step an epoch over all survey pairs (one propagation an
  epoch — the cost of an epoch drops by the number of minibatches).

Initial embeddings: random (Xavier, the paper's) or, with ``gnn.init=spectral``, the top
singular vectors of the signed survey matrix in the first ``spectral_k`` coordinates
(:mod:`copl_ray.graph.spectral`). Learning rate: linear warm-up over ``warmup_ratio`` of
all steps, then cosine to 0.
The checkpoint with the best validation accuracy (``≥``, later wins ties as in the
official code) is kept; without validation pairs the last epoch is kept.
State (model, optimizer, scheduler, RNG, curves) round-trips through safetensors + JSON
so a run resumes exactly (``state_tensors`` / ``state_meta`` / ``load_state``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from copl_ray.config import GNNConfig
from copl_ray.graph.bipartite import BipartiteGraph, PairIndex
from copl_ray.graph.model import CoPLGNN, GNNShape, bpr_backward, pair_accuracy
from copl_ray.graph.spectral import spectral_init_
from copl_ray.schedule import cosine_with_warmup

log = logging.getLogger("copl_ray.gnn")


def resolve_device(use_gpu: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("gnn.use_gpu=true but no CUDA device is visible; set gnn.use_gpu=false")
    return torch.device("cuda")


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: ``s/w`` for ``s < w``, then ``½(1 + cos(π (s−w)/(T−w)))``, with
    ``w = ⌊T · warmup_ratio⌋`` (:func:`copl_ray.schedule.cosine_with_warmup`)."""
    return cosine_with_warmup(total_steps, int(total_steps * warmup_ratio))


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


class GNNTrainer:
    """Owns the model, optimiser, schedule and curves of one GNN run."""

    def __init__(
        self,
        graph: BipartiteGraph,
        train_pairs: PairIndex,
        val_pairs: PairIndex,
        cfg: GNNConfig,
        device: torch.device | str = "cpu",
    ):
        if len(train_pairs) == 0:
            raise ValueError("GNN training: no survey pairs with both responses in the graph")
        self.cfg, self.device = cfg, torch.device(device)
        torch.manual_seed(cfg.seed)
        self.shape = GNNShape(
            n_users=graph.n_users,
            n_responses=graph.n_responses,
            dim=cfg.dim,
            layers=cfg.layers,
            message=cfg.message,
            leaky_slope=cfg.leaky_slope,
            edge_dropout=cfg.edge_dropout,
        )
        self.model = CoPLGNN(self.shape)
        self._init_embeddings(graph)
        self.model.to(self.device)
        self.adj = graph.adjacency().to(self.device)
        self.train_pairs = train_pairs.to(self.device)
        self.val_pairs = val_pairs.to(self.device)
        n = len(train_pairs)
        self.batch_size = n if cfg.schedule == "full" else max(1, min(cfg.batch_size, n))
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        # λ is summed over a step's pairs (official); with gnn.l2_reference_batch = N it is
        # rescaled to N/B so a full-graph step (B = all pairs) is not regularised B/N times
        # harder than an official 1024-pair batch (at UF-P scale: 156×, and training stalls
        # at loss log 2 — measured on GPU, benchmarks/gnn.py)
        ref = cfg.l2_reference_batch
        self.l2 = cfg.l2 * ref / self.batch_size if ref > 0 else cfg.l2
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.optimizer, self.scheduler = self._optimizer()
        self.epoch = 0  # epochs completed
        self.best_val: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.loss_curve: list[float] = []
        self.val_curve: list[float | None] = []
        self.epoch_seconds: list[float] = []

    def _init_embeddings(self, graph: BipartiteGraph) -> None:
        """``gnn.init``: keep the random tables, or overwrite them with the spectral init.

        The init's seconds count as training (time-to-accuracy); ``self.init`` (the rule,
        its seconds, and for spectral ``k`` and the singular values) goes to the metrics.
        """
        cfg = self.cfg
        self.init_seconds, self.init = 0.0, {"init": cfg.init}
        if cfg.init == "spectral":
            t0 = time.perf_counter()
            f = spectral_init_(
                self.model.user_emb,
                self.model.resp_emb,
                graph,
                cfg.spectral_k,
                cfg.spectral_scale,
                cfg.seed,
            )
            self.init_seconds = time.perf_counter() - t0
            self.init |= {"k": f.k, "singular_values": [float(v) for v in f.singular_values]}
            log.info(
                "gnn spectral init: k=%d, singular values %s, %.2f s",
                f.k,
                " ".join(f"{v:.3f}" for v in f.singular_values),
                self.init_seconds,
            )
        elif cfg.init != "random":
            raise ValueError(f"gnn.init: expected 'random' or 'spectral', got {cfg.init!r}")
        self.init["seconds"] = self.init_seconds

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW with the embedding tables at ``gnn.lr`` and the layer weights at
        ``lr * weight_lr_scale``, under the warm-up + cosine schedule over all steps."""
        cfg = self.cfg
        tables = [self.model.user_emb, self.model.resp_emb]
        weights = [p for p in self.model.parameters() if all(p is not t for t in tables)]
        optimizer = torch.optim.AdamW(
            [
                {"params": tables, "lr": cfg.lr},
                {"params": weights, "lr": cfg.lr * cfg.weight_lr_scale},
            ],
            weight_decay=cfg.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.total_steps, cfg.warmup_ratio)
        )
        return optimizer, scheduler

    # ------------------------------------------------------------------ steps
    def train_epoch(self) -> float:
        """One epoch; returns the mean training loss over its steps."""
        self.model.train()
        n = len(self.train_pairs)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=gen).to(self.device)
        losses = []
        for start in range(0, n, self.batch_size):
            batch = self.train_pairs.select(order[start : start + self.batch_size])
            self.optimizer.zero_grad(set_to_none=True)
            e_user, e_resp = self.model(self.adj)  # one propagation per step
            loss = bpr_backward(e_user, e_resp, batch, self.l2, self.cfg.loss_chunk)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss)
        return sum(losses) / len(losses)

    @torch.no_grad()
    def embeddings(self, state: dict[str, torch.Tensor] | None = None):
        """Eval-mode ``(E_user, E_resp)``; with ``state`` (e.g. the best) loaded temporarily."""
        current = None
        if state is not None:
            current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(state)
        self.model.eval()
        out = self.model(self.adj)
        if current is not None:
            self.model.load_state_dict(current)
        return out

    def evaluate(self, pairs: PairIndex | None = None) -> float | None:
        e_user, e_resp = self.embeddings()
        return pair_accuracy(e_user, e_resp, self.val_pairs if pairs is None else pairs)

    def step_epoch(self) -> dict:
        """Train one epoch, validate when due, update the best state; returns the log row."""
        t0 = time.perf_counter()
        loss = self.train_epoch()
        self.epoch += 1
        due = self.epoch % max(1, self.cfg.eval_every) == 0 or self.epoch == self.cfg.epochs
        val = self.evaluate() if due else None
        if due and (val is None or self.best_val is None or val >= self.best_val):
            self.best_val = val if val is not None else self.best_val
            self.best_epoch = self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.loss_curve.append(loss)
        self.val_curve.append(val)
        self.epoch_seconds.append(time.perf_counter() - t0)
        return self.progress_row()

    def progress_row(self) -> dict:
        recent = self.epoch_seconds[-10:]
        per_epoch = sum(recent) / max(1, len(recent))
        return {
            "epoch": self.epoch,
            "epochs": self.cfg.epochs,
            "loss": self.loss_curve[-1] if self.loss_curve else None,
            "val_accuracy": self.val_curve[-1] if self.val_curve else None,
            "best_val_accuracy": self.best_val,
            "best_epoch": self.best_epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "seconds_per_epoch": per_epoch,
            "eta_seconds": per_epoch * (self.cfg.epochs - self.epoch),
        }

    def fit(self, on_epoch: Callable[[dict], None] | None = None) -> GNNTrainer:
        """Run the remaining epochs (all of them, or the rest after ``load_state``)."""
        while self.epoch < self.cfg.epochs:
            row = self.step_epoch()
            if on_epoch is not None:
                on_epoch(row)
            elif row["val_accuracy"] is not None or self.epoch == self.cfg.epochs:
                log.info(format_progress(row))
        if self.best_state is None:  # no evaluation ever ran (epochs=0)
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return self

    # ------------------------------------------------------------- checkpoint
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensor dict (safetensors): model, best model, AdamW moments, RNG."""
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.best_state is not None:
            out.update({f"best.{k}": v for k, v in self.best_state.items()})
        for i, st in self.optimizer.state_dict()["state"].items():
            for key, val in st.items():
                out[f"opt.{i}.{key}"] = torch.as_tensor(val)
        out["rng.cpu"] = torch.get_rng_state()
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def state_meta(self) -> dict:
        return {
            "epoch": self.epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "loss_curve": self.loss_curve,
            "val_curve": self.val_curve,
            "epoch_seconds": self.epoch_seconds,
            "param_groups": self.optimizer.state_dict()["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "shape": asdict(self.shape),
            "init": self.init,
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if meta["shape"] != asdict(self.shape):
            raise ValueError(
                f"GNN checkpoint shape {meta['shape']} does not match this run {asdict(self.shape)}"
            )
        dev = self.device
        self.model.load_state_dict(
            {k[len("model.") :]: v.to(dev) for k, v in tensors.items() if k.startswith("model.")}
        )
        best = {k[len("best.") :]: v.to(dev) for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, key = k.split(".", 2)
                opt_state.setdefault(int(i), {})[key] = v if key == "step" else v.to(dev)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.cpu"])
        self.epoch, self.best_val, self.best_epoch = (
            meta["epoch"],
            meta["best_val"],
            meta["best_epoch"],
        )
        self.loss_curve, self.val_curve = list(meta["loss_curve"]), list(meta["val_curve"])
        self.epoch_seconds = list(meta["epoch_seconds"])
        self.init = meta.get("init", self.init)  # the run's own init, not this process's


def format_progress(row: dict) -> str:
    val = row["val_accuracy"]
    best = row["best_val_accuracy"]
    return (
        f"gnn epoch {row['epoch']}/{row['epochs']} loss {row['loss']:.4f} "
        f"val {'-' if val is None else f'{val:.4f}'} "
        f"best {'-' if best is None else f'{best:.4f}'}@{row['best_epoch']} "
        f"lr {row['lr']:.2e} {row['seconds_per_epoch']:.2f}s/epoch "
        f"ETA {format_eta(row['eta_seconds'])}"
    )
