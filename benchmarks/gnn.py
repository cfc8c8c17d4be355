"""GNN benchmark: seconds per optimisation step, peak memory, time-to-accuracy.

Schedules compared (every one propagates the whole graph once per optimisation step):

- ``official``: minibatches of 1024 pairs, lr 1e-4, edge dropout 0.1 (the official code's
  schedule, docs/reference-code.md B11):
  an epoch costs ``ceil(N/1024)`` full propagations (157 at UF-P-4 scale);
- ``fast`` (``--fast``, default ``FAST``): one full-graph step per epoch
  (``gnn.schedule=full``: an epoch costs one propagation), **spectral init**
  (``gnn.init=spectral``: the tables' first 8 coordinates start at the top singular vectors
  of the signed survey matrix, copl_ray/graph/spectral.py; its seconds count as training),
  tables at lr 1e-4, the layers' d×d weights at 1e-2 (``weight_lr_scale:100``), edge
  dropout 0.3;
- ``--candidates``: more specs to compare, ``key:value`` lists of ``gnn`` config fields.

All use ``gnn.l2_reference_batch=1024``: λ keeps the strength of the official sum over a
1024-pair batch (without it a full step over 160k pairs is regularised 156× harder and
stalls at loss log 2; measured on an H100, 2026-11-25). Why each part of ``fast`` (2-core
CPU studies, benchmarks/RESULTS.md "GNN time-to-accuracy"): edge dropout 0.3, because with 0.1 the full
step memorises the survey pairs (held-out 0.69 at UF-P on the H100); slow tables + fast
weights, because fast tables memorise at 10,000 users (d=64: 0.637 at step 100); spectral
init, because from random tables every full-graph run first sits ~50 steps on a plateau
where all users look alike (held-out ≈ 0.60) before the groups separate — from the
spectral start, at the full UF-P shape (d=512): 0.818 at step 20, 0.888 at step 40 (from
random tables, same settings: 0.618 at step 50, 0.731 at 100, 0.754 at 170).

Data: the planted UF-P-4-shaped graph of ``copl_ray.data.planted`` (groups = rating
attributes, 4 responses per prompt, controversial pairs only, users of a group label by
that group's ratings, no noise, no ties), so the benchmark needs no text and scales to 10×
users.
Each user has ``--labels`` survey labels (graph edges) plus ``--val`` held-out pool pairs;
accuracy = share of held-out pairs ranked right.

Part 1 (``--scales``): step time and peak memory at UF-P scale (10,000 users, ~50,000
responses, 16 labels/user, d=512, L=4) and multiples of it. Part 2: time-to-accuracy —
training seconds (evaluation excluded; ``--clock process`` counts this process's CPU time,
for shared CPU boxes) until held-out accuracy ≥ the target, per schedule on the ``--tta-*``
graph, each within ``--budget-s``. Target: ``--target``, or by default the lower of
official's best and the best of the most accurate other schedule (an accuracy both reach);
speed-up = official's time to it / the schedule's. Part 3 (``--wall-epochs N``): N fast
epochs at UF-P scale.
Examples::

    bash benchmarks/gpu_session.sh       # the lent-GPU run (parts 1-3 + candidates)
    python benchmarks/gnn.py --device cuda --scales 1,10 --budget-s 240 --wall-epochs 300
    python benchmarks/gnn.py --threads 1 --clock process --scales 1 --users 1000 \\
        --responses 6900 --dim 64 --steps 2 --tta-users 1000 --tta-dim 64 --budget-s 300
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch
from common import PeakMemory, machine

from copl_ray.config import GNNConfig
from copl_ray.data.planted import planted_annotations
from copl_ray.graph.bipartite import build_graph, pair_index
from copl_ray.graph.train import GNNTrainer

# the fast schedule (study: benchmarks/RESULTS.md "GNN time-to-accuracy"); gnn config overrides, key:value
FAST = "schedule:full,init:spectral,lr:1e-4,weight_lr_scale:100,edge_dropout:0.3"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(ann, cfg: GNNConfig, device):
    graph = build_graph(ann)
    return GNNTrainer(
        graph, pair_index(graph, ann, "survey"), pair_index(graph, ann, "val"), cfg, device
    )


def one_step_seconds(trainer: GNNTrainer, steps: int, device, clock=None) -> float:
    """Mean seconds of ``steps`` optimisation steps (after one warm-up step)."""
    n, bs = len(trainer.train_pairs), trainer.batch_size
    from copl_ray.graph.model import bpr_backward

    def step(i: int) -> None:
        idx = torch.arange(i * bs, (i + 1) * bs, device=device) % n  # wraps around
        batch = trainer.train_pairs.select(idx)
        trainer.optimizer.zero_grad(set_to_none=True)
        e_user, e_resp = trainer.model(trainer.adj)
        bpr_backward(e_user, e_resp, batch, trainer.l2, trainer.cfg.loss_chunk)
        trainer.optimizer.step()

    trainer.model.train()
    clock = clock or Clock("wall", device)
    step(0)
    t0 = clock()
    for i in range(steps):
        step(i + 1)
    return (clock() - t0) / steps


def parse_schedule(spec: str) -> dict:
    """``"schedule:full,lr:3e-3,edge_dropout:0.3"`` → ``GNNConfig`` overrides, each value cast
    to its field's type (``batch`` is short for ``batch_size``)."""
    fields = {f.name for f in dataclasses.fields(GNNConfig)}
    defaults, out = GNNConfig(), {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = item.partition(":")
        key = {"batch": "batch_size"}.get(key.strip(), key.strip())
        if not sep or key not in fields:
            raise SystemExit(
                f"schedule spec {spec!r}: bad item {item!r}; expected key:value with key a "
                f"gnn config field (e.g. schedule:full,lr:3e-3,edge_dropout:0.3)"
            )
        kind = type(getattr(defaults, key))
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    if out.get("schedule", "minibatch") not in ("minibatch", "full"):
        raise SystemExit(f"schedule spec {spec!r}: schedule must be minibatch or full")
    return out


def spec_text(sched: dict) -> str:
    return ",".join(f"{k}:{v:g}" if isinstance(v, float) else f"{k}:{v}" for k, v in sched.items())


class Clock:
    """Training seconds: wall (``perf_counter``, synchronised on CUDA) or this process's CPU
    time (``--clock process``: robust to other jobs on a shared CPU box; CPU runs only)."""

    def __init__(self, kind: str, device: torch.device):
        if kind == "process" and device.type == "cuda":
            raise SystemExit("--clock process measures CPU time: use --clock wall on a GPU")
        self.now = time.process_time if kind == "process" else time.perf_counter
        self.device = device

    def __call__(self) -> float:
        sync(self.device)
        return self.now()


def train_curve(
    trainer: GNNTrainer, budget_s: float, every: int, clock: Clock, stop_at=None, live=""
):
    """Train (``every`` epochs between evaluations) until the config's epochs, the budget,
    or held-out accuracy ≥ ``stop_at``; evaluation time excluded. Curve rows:
    ``(epoch, optimisation steps, training seconds, held-out accuracy)``; with ``live`` (a
    name) each row is also printed as it comes (hour-long CPU runs show progress). The
    seconds start at the init's (a spectral init's decomposition is part of training)."""
    train_s, curve = trainer.init_seconds, []
    while trainer.epoch < trainer.cfg.epochs and train_s < budget_s:
        t0 = clock()
        for _ in range(min(every, trainer.cfg.epochs - trainer.epoch)):
            trainer.train_epoch()
            trainer.epoch += 1
        train_s += clock() - t0
        acc = trainer.evaluate() or 0.0
        curve.append((trainer.epoch, trainer.epoch * trainer.steps_per_epoch, train_s, acc))
        if live:
            print(
                f"  .. {live} epoch {curve[-1][0]} step {curve[-1][1]} {train_s:.1f} s "
                f"held-out {acc:.4f}",
                flush=True,
            )
        if stop_at is not None and acc >= stop_at:
            break
    return {"curve": curve, "best": max(r[3] for r in curve), "train_s": train_s}


def first_reach(curve: list, target: float):
    """``(epoch, steps, seconds)`` of the first evaluation with accuracy ≥ target, else None."""
    return next((r[:3] for r in curve if r[3] >= target - 1e-9), None)


def time_to_accuracy(a, base: dict, schedules: dict, device: torch.device) -> None:
    """Part 2: every schedule on the ``--tta-*`` graph; target = ``--target`` or, with 0, the
    best accuracy that BOTH official and the most accurate other schedule reach (the lower
    of their bests within ``--budget-s``); speed-up = official's time to it / each one's.

    Official runs last and stops once it reaches the others' best (the target can then be
    no higher), so a GPU session spends no device time past what the table needs.
    ``--schedules`` runs a subset (curves only, no speed-up without official)."""
    ann = planted_annotations(
        a.tta_users,
        a.groups,
        a.labels,
        a.val,
        a.seed,
        n_prompts=max(1, a.responses * a.tta_users // a.users // 4),
    )
    tta_base = base | dict(dim=a.tta_dim, layers=a.tta_layers)
    clock = Clock(a.clock, device)
    results = {}
    for name in sorted(schedules, key=lambda n: n == "official"):  # stable: official last
        sched = schedules[name]
        stop_at = a.target or None
        if name == "official" and stop_at is None and results:
            stop_at = max(r["best"] for r in results.values())  # no higher target possible
        torch.manual_seed(a.seed)
        cfg = GNNConfig(**(tta_base | dict(epochs=a.official_epochs) | sched))
        trainer = make_trainer(ann, cfg, device)
        every = max(1, math.ceil(a.eval_steps / trainer.steps_per_epoch))
        r = train_curve(trainer, a.budget_s, every, clock, stop_at, live=name if a.live else "")
        r["steps_per_epoch"], r["s_per_epoch"] = (
            trainer.steps_per_epoch,
            r["train_s"] / max(1, r["curve"][-1][0]),
        )
        results[name] = r
        print(
            f"{name:10s} {spec_text(sched)}: {trainer.steps_per_epoch} steps/epoch, "
            f"{r['s_per_epoch']:.3f} s/epoch, {r['curve'][-1][0]} epochs in {r['train_s']:.1f} s "
            f"(init {trainer.init_seconds:.2f} s), best held-out {r['best']:.4f}",
            flush=True,
        )
        if a.curves:
            print(
                "  curve (epoch, steps, s, acc): "
                + " ".join(f"({e},{st},{sec:.1f},{acc:.4f})" for e, st, sec, acc in r["curve"]),
                flush=True,
            )
    if "official" not in results or len(results) < 2:
        return
    top = max((n for n in results if n != "official"), key=lambda n: results[n]["best"])
    target = a.target or min(results["official"]["best"], results[top]["best"])
    how = "--target" if a.target else f"auto: the lower of official's and {top}'s best"
    print(f"\ntarget held-out accuracy {target:.4f} ({how}); clock: {a.clock}")
    print(
        "| schedule | steps/epoch | s/epoch | best held-out | epoch, steps, s to target | speed-up |"
    )
    print("|---|---|---|---|---|---|")
    t_off = first_reach(results["official"]["curve"], target)
    for name, r in results.items():
        hit = first_reach(r["curve"], target)
        if hit and t_off:
            speed = f"{t_off[2] / hit[2]:.1f}x"
        elif hit:  # official never got there within its budget
            speed = f"> {results['official']['train_s'] / hit[2]:.1f}x"
        else:
            speed = "-"
        at = f"{hit[0]}, {hit[1]}, {hit[2]:.1f} s" if hit else f"not in {r['train_s']:.0f} s"
        print(
            f"| {name} | {r['steps_per_epoch']} | {r['s_per_epoch']:.3f} | {r['best']:.4f} "
            f"| {at} | {speed} |",
            flush=True,
        )


def wall_time(a, base: dict, fast: dict, device: torch.device) -> None:
    """Part 3: wall time of ``--wall-epochs`` epochs of the fast schedule at UF-P scale
    (the paper trains 300 epochs), training only, then the held-out accuracy reached."""
    ann = planted_annotations(a.users, a.groups, a.labels, a.val, a.seed, a.responses // 4)
    torch.manual_seed(a.seed)
    trainer = make_trainer(ann, GNNConfig(**(base | fast | dict(epochs=a.wall_epochs))), device)
    trainer.model.train()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(a.wall_epochs):
        trainer.train_epoch()
        trainer.epoch += 1
    sync(device)
    sec = time.perf_counter() - t0 + trainer.init_seconds
    print(
        f"\n== part 3: {a.wall_epochs} fast-schedule epochs at {a.users} users, "
        f"d={a.dim}, L={a.layers}: {sec:.1f} s wall (training only, init "
        f"{trainer.init_seconds:.2f} s of it); "
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
    p.add_argument(
        "--target", type=float, default=0.0, help="0 = the lower of official's and fast's best"
    )
    p.add_argument("--official-epochs", type=int, default=300, help="sets its lr schedule")
    p.add_argument("--official-lr", type=float, default=1e-4, help="paper/official: 1e-4")
    p.add_argument("--fast", default=FAST, help="the fast schedule: key:value,... gnn fields")
    p.add_argument(
        "--candidates", nargs="*", default=[], help="more schedule specs to compare (part 2)"
    )
    p.add_argument(
        "--budget-s", type=float, default=240.0, help="training seconds per schedule (part 2)"
    )
    p.add_argument(
        "--eval-steps", type=int, default=5, help="optimisation steps between accuracy checks"
    )
    p.add_argument(
        "--schedules", default="", help="part 2 subset, e.g. fast or fast,cand1 (default: all)"
    )
    p.add_argument("--clock", default="wall", choices=["wall", "process"])
    p.add_argument("--curves", action="store_true", help="print every curve point (part 2)")
    p.add_argument("--live", action="store_true", help="print each curve point as it comes")
    p.add_argument("--skip-tta", action="store_true")
    p.add_argument(
        "--wall-epochs", type=int, default=0, help="part 3: wall time of N fast-schedule epochs"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"machine: {machine(a.device)}")

    official = dict(schedule="minibatch", batch_size=1024, lr=a.official_lr)
    fast = parse_schedule(a.fast)
    base = dict(
        dim=a.dim,
        layers=a.layers,
        message=a.message,
        edge_dropout=0.1,
        l2=1e-6,
        l2_reference_batch=1024,  # official strength (λ summed over 1024 pairs) everywhere
        warmup_ratio=0.1,
        seed=a.seed,
    )
    print(f"official: {spec_text(official)} | fast: {spec_text(fast)} | base: {spec_text(base)}")
    print("\n== part 1: one optimisation step (full re-propagation + loss + AdamW) ==")
    for scale in [int(s) for s in a.scales.split(",") if s]:
        # more users over the same survey set (UF-P: a fixed pool of responses)
        ann = planted_annotations(
            a.users * scale, a.groups, a.labels, a.val, a.seed, n_prompts=a.responses // 4
        )
        for name, sched in (("official", official), ("fast", fast)):
            cfg = GNNConfig(**(base | sched | dict(epochs=1)))
            torch.manual_seed(a.seed)
            with PeakMemory(device) as mem:
                trainer = make_trainer(ann, cfg, device)
                sec = one_step_seconds(trainer, a.steps, device, Clock(a.clock, device))
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
        wall_time(a, base, fast, device)
    if a.skip_tta:
        return
    print(
        f"\n== part 2: time-to-accuracy ({a.tta_users} users, d={a.tta_dim}, L={a.tta_layers}) =="
    )
    schedules = {"official": official, "fast": fast}
    schedules |= {f"cand{i + 1}": parse_schedule(c) for i, c in enumerate(a.candidates)}
    if a.schedules:
        names = [n.strip() for n in a.schedules.split(",") if n.strip()]
        unknown = sorted(set(names) - schedules.keys())
        if unknown:
            raise SystemExit(f"--schedules: unknown {unknown}; choose from {sorted(schedules)}")
        schedules = {n: schedules[n] for n in names}
    time_to_accuracy(a, base, schedules, device)


if __name__ == "__main__":
    main()
