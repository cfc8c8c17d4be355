"""GNN benchmark: seconds per optimisation step, peak memory, time-to-accuracy.

Schedules compared (both propagate the whole graph once per optimisation step):

- ``official``: minibatches of 1024 pairs, lr 1e-4 (REFERENCE.md §1.3): an epoch costs
  ``ceil(N/1024)`` full propagations (157 at UF-P-4 scale);
- ``full``: one step per epoch over all pairs (``gnn.schedule=full``), lr 3e-3 — an epoch
  costs one propagation.

Both use ``gnn.l2_reference_batch=1024``: λ keeps the strength of the official sum over a
1024-pair batch (without it a full step over 160k pairs is regularised 156× harder and
stalls at loss log 2; measured on an H100, 2026-11-25). lr sweep of ``full`` at UF-P scale
on the H100: 1e-2 diverges, 3e-3 best (held-out 0.69: the full schedule overfits there).

Data: a planted UF-P-4-shaped graph generated here in numpy (groups = rating attributes,
4 responses per prompt, controversial pairs only, users of a group label by that group's
ratings, no noise, no ties), so the benchmark needs no text and scales to 10× users.
Each user has ``--labels`` survey labels (graph edges) plus ``--val`` held-out pool pairs;
accuracy = share of held-out pairs ranked right.

Part 1 (``--scales``): step time and peak memory at UF-P scale (10,000 users, ~50,000
responses, 16 labels/user, d=512, L=4) and multiples of it. Part 2: time-to-accuracy —
wall time (training only, evaluation excluded) until held-out accuracy ≥ ``--target``,
for both schedules on the ``--tta-*`` graph. Examples::

    python benchmarks/gnn.py                                   # full settings (GPU box)
    python benchmarks/gnn.py --device cuda --scales 1,10
    python benchmarks/gnn.py --scales 1 --dim 128 --steps 1 --tta-users 2000   # 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import threading
import time

import numpy as np
import pandas as pd
import torch

from copl_ray.config import GNNConfig
from copl_ray.graph.bipartite import build_graph, pair_index
from copl_ray.graph.train import GNNTrainer


def planted_annotations(
    n_users: int, n_groups: int, labels: int, n_val: int, seed: int, n_prompts: int
) -> pd.DataFrame:
    """``n_users·labels`` survey + ``n_users·n_val`` val annotations over a planted pool
    of the controversial, tie-free pairs of ``n_prompts`` prompts × 4 responses (pairs
    drawn with replacement per user: a repeat among ~20 of ~30k pool pairs is rare)."""
    rng = np.random.default_rng(seed)
    ratings = rng.integers(1, 6, size=(n_prompts, 4, n_groups))
    ia, ib = np.triu_indices(4, 1)
    diff = np.sign(ratings[:, ia] - ratings[:, ib])  # [P, 6, G]
    keep = (diff != 0).all(-1) & (diff != diff[..., :1]).any(-1)  # no tie, controversial
    prompt, k = np.nonzero(keep)
    resp_a, resp_b = prompt * 4 + ia[k], prompt * 4 + ib[k]
    label = diff[prompt, k]  # [pool, G]: +1 = group prefers a
    group = np.arange(n_users) % n_groups
    take = labels + n_val
    picks = rng.integers(0, len(resp_a), size=(n_users, take))
    users = np.repeat(np.arange(n_users), take)
    pid = picks.ravel()
    lab = label[pid, group[users]]
    chosen = np.where(lab > 0, resp_a[pid], resp_b[pid])
    rejected = np.where(lab > 0, resp_b[pid], resp_a[pid])
    split = np.tile(np.array(["survey"] * labels + ["val"] * n_val), n_users)
    return pd.DataFrame(
        {
            "user_id": users.astype(str),
            "pair_id": pid,
            "chosen": chosen,
            "rejected": rejected,
            "split": split,
        }
    )


class PeakMemory:
    """Peak process RSS (CPU, sampled every 5 ms) or peak CUDA allocation."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(ann, cfg: GNNConfig, device):
    graph = build_graph(ann)
    return GNNTrainer(
        graph, pair_index(graph, ann, "survey"), pair_index(graph, ann, "val"), cfg, device
    )


def one_step_seconds(trainer: GNNTrainer, steps: int, device) -> float:
    """Mean seconds of ``steps`` optimisation steps (after one warm-up step)."""
    n, bs = len(trainer.train_pairs), trainer.batch_size
    from copl_ray.graph.bipartite import PairIndex
    from copl_ray.graph.model import bpr_backward

    def step(i: int) -> None:
        idx = torch.arange(i * bs, (i + 1) * bs, device=device) % n  # wraps around
        tp = trainer.train_pairs
        batch = PairIndex(tp.user[idx], tp.chosen[idx], tp.rejected[idx])
        trainer.optimizer.zero_grad(set_to_none=True)
        e_user, e_resp = trainer.model(trainer.adj)
        bpr_backward(e_user, e_resp, batch, trainer.l2, trainer.cfg.loss_chunk)
        trainer.optimizer.step()

    trainer.model.train()
    step(0)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    sync(device)
    return (time.perf_counter() - t0) / steps


def time_to_accuracy(trainer: GNNTrainer, target: float, budget_s: float, eval_every: int):
    """Train epochs until held-out accuracy ≥ target or the budget; returns a summary."""
    train_s, best, reached, curve = 0.0, 0.0, None, []
    while trainer.epoch < trainer.cfg.epochs and train_s < budget_s:
        t0 = time.perf_counter()
        for _ in range(eval_every):
            trainer.train_epoch()
            trainer.epoch += 1
        sync(trainer.device)
        train_s += time.perf_counter() - t0
        acc = trainer.evaluate() or 0.0
        best = max(best, acc)
        curve.append((trainer.epoch, round(train_s, 2), round(acc, 4)))
        if reached is None and acc >= target:
            reached = (trainer.epoch, train_s)
            break
    return {
        "reached": reached,
        "best": best,
        "epochs": trainer.epoch,
        "train_s": train_s,
        "curve": curve,
    }


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    out = f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        out += f", GPU {torch.cuda.get_device_name(device)}"
    try:
        out += f", load avg {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return out


def wall_time(a, base: dict, full: dict, device: torch.device) -> None:
    """Part 3: wall time of ``--wall-epochs`` epochs of the full schedule at UF-P scale
    (the paper trains 300 epochs), training only, then the held-out accuracy reached."""
    ann = planted_annotations(a.users, a.groups, a.labels, a.val, a.seed, a.responses // 4)
    torch.manual_seed(a.seed)
    trainer = make_trainer(ann, GNNConfig(**base, **full, epochs=a.wall_epochs), device)
    trainer.model.train()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(a.wall_epochs):
        trainer.train_epoch()
        trainer.epoch += 1
    sync(device)
    sec = time.perf_counter() - t0
    print(
        f"\n== part 3: {a.wall_epochs} full-schedule epochs at {a.users} users, "
        f"d={a.dim}, L={a.layers}: {sec:.1f} s wall (training only); "
        f"held-out accuracy {trainer.evaluate() or 0.0:.4f} ==",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument(
        "--responses",
        type=int,
        default=69_000,
        help="candidate responses (~72%% occur in a kept pair: ~50k graph nodes)",
    )
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--labels", type=int, default=16)
    p.add_argument("--val", type=int, default=5)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--message", default="paper", choices=["paper", "reference"])
    p.add_argument("--scales", default="1,10", help="user multiples of --users for part 1")
    p.add_argument("--steps", type=int, default=3, help="timed steps per schedule (part 1)")
    p.add_argument("--tta-users", type=int, default=10_000)
    p.add_argument("--tta-dim", type=int, default=512)
    p.add_argument("--tta-layers", type=int, default=4)
    p.add_argument("--target", type=float, default=0.87)
    p.add_argument("--official-epochs", type=int, default=300)
    p.add_argument("--full-epochs", type=int, default=300)
    p.add_argument("--full-lr", type=float, default=3e-3, help="H100 sweep: 1e-2 diverges")
    p.add_argument("--official-lr", type=float, default=1e-4, help="paper/official: 1e-4")
    p.add_argument("--budget-s", type=float, default=3600.0, help="per schedule (part 2)")
    p.add_argument("--eval-every", type=int, default=5, help="epochs between accuracy checks")
    p.add_argument("--skip-tta", action="store_true")
    p.add_argument(
        "--wall-epochs", type=int, default=0, help="part 3: wall time of N full-schedule epochs"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"machine: {machine(device)}")

    official = dict(schedule="minibatch", batch_size=1024, lr=a.official_lr)
    full = dict(schedule="full", lr=a.full_lr)
    base = dict(
        dim=a.dim,
        layers=a.layers,
        message=a.message,
        edge_dropout=0.1,
        l2=1e-6,
        l2_reference_batch=1024,  # official strength (λ summed over 1024 pairs) in both
        warmup_ratio=0.1,
        seed=a.seed,
    )
    print("\n== part 1: one optimisation step (full re-propagation + loss + AdamW) ==")
    for scale in [int(s) for s in a.scales.split(",") if s]:
        # more users over the same survey set (UF-P: a fixed pool of responses)
        ann = planted_annotations(
            a.users * scale, a.groups, a.labels, a.val, a.seed, n_prompts=a.responses // 4
        )
        for name, sched in (("official", official), ("full", full)):
            cfg = GNNConfig(**base, **sched, epochs=1)
            torch.manual_seed(a.seed)
            with PeakMemory(device) as mem:
                trainer = make_trainer(ann, cfg, device)
                sec = one_step_seconds(trainer, a.steps, device)
            g = trainer.shape
            print(
                f"scale {scale}x: {g.n_users} users, {g.n_responses} responses, "
                f"{len(trainer.train_pairs)} pairs, d={g.dim}, L={g.layers} | {name:8s} "
                f"{sec:8.3f} s/step, {trainer.steps_per_epoch:4d} steps/epoch = "
                f"{sec * trainer.steps_per_epoch:9.2f} s/epoch | peak {mem.gib:.2f} GiB",
                flush=True,
            )
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if a.wall_epochs:
        wall_time(a, base, full, device)
    if a.skip_tta:
        return
    print(f"\n== part 2: time-to-accuracy (held-out accuracy >= {a.target}) ==")
    ann = planted_annotations(
        a.tta_users,
        a.groups,
        a.labels,
        a.val,
        a.seed,
        n_prompts=max(1, a.responses * a.tta_users // a.users // 4),
    )
    tta_base = base | dict(dim=a.tta_dim, layers=a.tta_layers)
    results = {}
    for name, sched, epochs in (
        ("official", official, a.official_epochs),
        ("full", full, a.full_epochs),
    ):
        torch.manual_seed(a.seed)
        trainer = make_trainer(ann, GNNConfig(**tta_base, **sched, epochs=epochs), device)
        every = max(1, a.eval_every if name == "full" else math.ceil(a.eval_every / 5))
        r = time_to_accuracy(trainer, a.target, a.budget_s, every)
        results[name] = r
        when = (
            f"reached at epoch {r['reached'][0]} after {r['reached'][1]:.1f} s"
            if r["reached"]
            else f"NOT reached in {r['train_s']:.1f} s / {r['epochs']} epochs"
        )
        print(
            f"{name:8s} ({trainer.steps_per_epoch} steps/epoch, lr {sched['lr']:g}): {when}; "
            f"best held-out accuracy {r['best']:.4f}; curve (epoch, s, acc) {r['curve'][-4:]}",
            flush=True,
        )
    o, f = results["official"], results["full"]
    if o["reached"] and f["reached"]:
        print(f"speed-up in time-to-accuracy: {o['reached'][1] / f['reached'][1]:.1f}x")
    elif f["reached"]:
        print(
            f"speed-up in time-to-accuracy: > {o['train_s'] / f['reached'][1]:.1f}x "
            f"(official did not reach {a.target} within its {o['train_s']:.0f} s)"
        )


if __name__ == "__main__":
    main()
