"""The run plan: what a run will train and for how long, announced before the GNN stage.

``plan_run(cfg, run)`` runs after the data stage (reading the tables takes seconds) and
returns a :class:`RunPlan`: seen users and survey labels, the reward models, each model's
pairs and steps -- counted by :func:`copl_ray.reward.stage.training_schedule`, the one
place the reward stage counts them (``train.batch_size`` x ``num_workers`` x
``grad_accum`` per step, ``train.epochs`` or ``train.max_steps``) -- and an ETA of the
training:

* reward models: 3 real forward+backward steps of each variant's model, built as the
  reward stage builds it (:meth:`PersonalRewardModel.build`, micro batch x
  ``reward.max_length`` tokens: the workers pad every row to ``max_length``), timed in this
  process on the CPU with one worker's threads; the faster of the last 2 counts (the first
  warms up). Timed in CPU seconds of this process per torch thread, not wall seconds
  (the driver runs nothing else yet): other processes on the machine do not change the
  plan -- the ETA is that of an otherwise idle machine, and a rerun plans the same. Only for the config-built ``tiny-gemma`` backbone on CPU: a hub model on a GPU
  cannot be timed here in seconds, and then no ETA is claimed;
* the GNN: 2 steps of :class:`~copl_ray.graph.train.GNNTrainer` on the real graph, the
  faster one x steps per epoch x ``gnn.epochs``;
* per-stage overheads measured on the tiny run (2 CPUs; see the constants).

Eval and report are not in the ETA (they do not train and no budget cuts them).

Budget: ``train.time_budget_min`` (None = none). When the ETA exceeds it, every reward
model's steps are scaled by one common factor (:func:`budget_steps`) so the ETA fits; the
cosine schedule then spans the capped steps, so a capped model finishes its schedule. The
tiny preset sets 15 min, ~3x its measured ~5-min training: the synthetic default is never
capped, while a real file of tens of thousands of labels is (~3,000 steps a model).

How the cap reaches the reward stage: ``run_dir/plan.json``, keyed by the reward stage's
config hash (sections data, gnn, reward, train). The config is never changed, so stage
markers and a rerun's config hash stay those of the user's config; a rerun or resume
with the same config reuses plan.json without measuring again and trains the very same
steps; changing any of those sections (the budget included) makes a new plan.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from copl_ray.artifacts import RunDir
from copl_ray.budget import PLAN_FILE, plan_key, planned_steps  # noqa: F401 - the plan file's reader
from copl_ray.config import Config

# Measured on the tiny run (2 CPUs, 2 workers x 0.5 CPU, ZeRO-2): a reward model costs
# ~40 s besides its steps (Ray Train start, DeepSpeed init, data pipeline, checkpoints;
# uniform 129 steps 55.7 s, oracle groups 63 steps 45.8 / 50.1 s), and a Ray Train step
# ~1.3x the in-process step timed here (0.12 s vs 0.09 s: gradient all-reduce, data
# pipeline); the GNN stage 40.9 s of which ~2 s training (Ray Train start, export,
# adaptation, t-SNE).
REWARD_JOB_OVERHEAD_S = 40.0
RAY_STEP_FACTOR = 1.3
GNN_OVERHEAD_S = 40.0
MIN_STEPS = 10  # a budget never cuts a model below this many steps (or its full schedule)
TIMED_STEPS = 3  # reward-model steps run by the warm-up; the first one is not counted


@dataclass
class JobPlan:
    job: str  # reward-stage job name: copl, uniform, oracle-<group>, ...
    variant: str
    pairs: int
    steps: int  # the schedule's steps (epochs or train.max_steps)
    budget_steps: int  # after the time budget (== steps when not capped)


@dataclass
class RunPlan:
    key: str  # reward-stage config hash this plan belongs to
    n_users_seen: int
    n_labels: dict[str, int]  # annotations by split
    jobs: list[JobPlan]
    workers: int
    batch_size: int
    epochs: int
    max_steps: int
    step_s: dict[str, float] = field(default_factory=dict)  # per variant, Ray-calibrated
    gnn_s: float | None = None  # GNN stage incl. overhead
    fill_s: float = 0.0  # reward.adapted_layers: frozen lower layers of every text, once
    eta_s: float | None = None  # training ETA before the budget
    budget_eta_s: float | None = None  # after the budget
    budget_min: float | None = None
    note: str | None = None  # why there is no ETA
    reused: bool = False

    @property
    def capped(self) -> bool:
        return any(j.budget_steps < j.steps for j in self.jobs)

    def lines(self) -> list[str]:
        """One line per fact, for the console."""
        n = self.n_labels
        out = [
            f"data: {self.n_users_seen:,} seen users; labels survey {n.get('survey', 0):,}, "
            f"val {n.get('val', 0):,}, test {n.get('test', 0):,}",
            f"models: {', '.join(j.job for j in self.jobs) or 'none'} (batch "
            f"{self.batch_size} x {self.workers} workers, "
            + (f"max_steps {self.max_steps})" if self.max_steps > 0 else f"{self.epochs} epochs)"),
            "steps per model: "
            + ", ".join(f"{j.job} {j.steps:,} ({j.pairs:,} pairs)" for j in self.jobs),
        ]
        if self.eta_s is None:
            out.append(f"ETA: not measured ({self.note}); train.time_budget_min does not apply")
            return out
        per = ", ".join(f"{v} {s:.3f} s/step" for v, s in self.step_s.items())
        if self.fill_s:
            per += f"; frozen lower layers once ~{_min(self.fill_s)}"
        out += [
            f"warm-up: {per} (timed in this process); GNN ~{_min(self.gnn_s)}",
            f"ETA of the training: {_min(self.eta_s)} (GNN {_min(self.gnn_s)} + reward "
            f"{_min(self.eta_s - (self.gnn_s or 0))}; eval and report not included)"
            + (" [plan.json reused]" if self.reused else ""),
        ]
        if self.budget_min is None:
            out.append("budget: none (train.time_budget_min=null)")
        elif not self.capped:
            out.append(f"budget: train.time_budget_min={self.budget_min:g}: fits, not capped")
        else:
            steps = ", ".join(f"{j.job} {j.budget_steps:,}" for j in self.jobs)
            out += [
                f"budget: train.time_budget_min={self.budget_min:g}: steps capped to {steps} "
                f"(ETA {_min(self.budget_eta_s)})",
                "full run: --set train.time_budget_min=null",
            ]
        return out


def _min(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


# --------------------------------------------------------------------------- budget
def budget_steps(
    steps: list[int], step_s: list[float], fixed_s: float, budget_s: float
) -> list[int]:
    """Steps per model so that ``fixed_s + sum(steps_j * step_s_j)`` fits ``budget_s``.

    Unchanged when it already fits. Otherwise one common factor ``f`` scales every model
    (each keeps the same share of its own schedule, e.g. an Oracle group half of CoPL's
    steps as before), rounded down, never below ``min(steps_j, MIN_STEPS)``: a budget
    smaller than the fixed overheads still trains something, and the ETA says so.
    """
    variable = sum(n * s for n, s in zip(steps, step_s))
    if fixed_s + variable <= budget_s or variable <= 0:
        return list(steps)
    f = max(0.0, (budget_s - fixed_s) / variable)
    return [min(n, max(min(n, MIN_STEPS), math.floor(f * n))) for n in steps]


# --------------------------------------------------------------------------- measuring
def measure_reward_step_s(cfg: Config, variant: str, micro: int, n_users: int) -> float:
    """Seconds of one optimizer step of ``variant`` in a Ray Train worker (see module doc)."""
    import torch

    from copl_ray.reward.model import PersonalRewardModel, btl_loss

    threads, used = torch.get_num_threads(), max(1, int(cfg.train.cpus_per_worker))
    torch.set_num_threads(used)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = PersonalRewardModel.build(cfg.reward, variant, cfg.gnn.dim, max(n_users, 1))
            model.train()
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
            L, B = cfg.reward.max_length, micro
            ids = torch.randint(4, max(cfg.reward.tokenizer_vocab, 5), (2 * B, L))
            mask = torch.ones_like(ids)
            emb = torch.randn(B, cfg.gnn.dim)
            if model.user_input == "context":  # VPL reads C labelled pairs' features per user
                hidden = model.backbone.config.get_text_config().hidden_size
                emb = torch.randn(B, cfg.reward.vpl_context, 2 * hidden + 1)
            index = torch.zeros(B, dtype=torch.long)
            times = []
            for _ in range(TIMED_STEPS):
                t0 = time.process_time()
                s = model.score_rows(ids, mask, emb, index)
                loss = btl_loss(s[:B], s[B:]) + model.aux_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append((time.process_time() - t0) / used)
    finally:
        torch.set_num_threads(threads)
    tc = cfg.train
    cpus = cfg.run.num_cpus or os.cpu_count() or 1
    share = max(1.0, tc.num_workers * max(1, int(tc.cpus_per_worker)) / cpus)  # oversubscribed
    return min(times[1:]) * tc.grad_accum * RAY_STEP_FACTOR * share


def measure_fill_s(cfg: Config, n_texts: int) -> float:
    """Seconds the reward stage spends computing every text's frozen lower layers once
    (``reward.adapted_layers``; copl_ray/reward/stage.py ``frozen_states_file``): 8 rows of
    ``max_length`` tokens timed in this process, x ``n_texts`` / 8. 0 without the field."""
    if cfg.reward.adapted_layers is None or n_texts == 0:
        return 0.0
    import torch

    from copl_ray.reward.backbone import build_backbone
    from copl_ray.reward.frozen_cache import FrozenLowerLayers
    from copl_ray.reward.pooling import position_ids_of

    frozen = FrozenLowerLayers(build_backbone(cfg.reward), cfg.reward.adapted_layers, 0)
    ids = torch.randint(4, max(cfg.reward.tokenizer_vocab, 5), (8, cfg.reward.max_length))
    mask = torch.ones_like(ids)
    pos = position_ids_of(mask)
    times = []
    for _ in range(2):  # the first warms up
        t0 = time.process_time()
        frozen.lower_states(ids, mask, pos)
        times.append((time.process_time() - t0) / torch.get_num_threads())
    return times[-1] * n_texts / 8


def measure_gnn_s(cfg: Config, run: RunDir) -> float | None:
    """Seconds of the GNN stage: 2 timed steps on the real graph x all steps + overhead."""
    import torch

    from copl_ray.data.tables import PreferenceTables
    from copl_ray.graph.export import prepare_inputs
    from copl_ray.graph.train import GNNTrainer

    inputs = prepare_inputs(PreferenceTables.read(run.data))
    n = len(inputs.train)
    if n == 0:
        return None  # the GNN stage names the problem
    batch = n if cfg.gnn.schedule == "full" else max(1, min(cfg.gnn.batch_size, n))
    train = inputs.train if batch == n else inputs.train.select(torch.arange(batch))
    threads, used = torch.get_num_threads(), max(1, int(cfg.gnn.cpus_per_worker))
    torch.set_num_threads(used)
    try:
        with torch.random.fork_rng(devices=[]):
            trainer = GNNTrainer(inputs.graph, train, inputs.val, cfg.gnn, "cpu")
            times = []
            for _ in range(2):  # one step per epoch: the full graph, or one batch
                t0 = time.process_time()
                trainer.train_epoch()
                times.append((time.process_time() - t0) / used)
    finally:
        torch.set_num_threads(threads)
    return (
        GNN_OVERHEAD_S + trainer.init_seconds + min(times) * math.ceil(n / batch) * cfg.gnn.epochs
    )


# --------------------------------------------------------------------------- planning
def _jobs(cfg: Config, run: RunDir) -> tuple[list[JobPlan], dict[str, int], int, int]:
    """Every reward job's pairs and steps (uncapped); micro batch per variant; seen users;
    distinct response texts."""
    from copl_ray.reward.shards import read_lookups
    from copl_ray.reward.stage import load_user_table, model_jobs, training_schedule

    users, _ = load_user_table(cfg, run, need_embeddings=False)
    texts = read_lookups(run.data, users)[0]
    jobs, micro = [], {}
    for job, variant, _sub, only in model_jobs(cfg, users):
        members = only if only is not None else [u for u in users.user_ids if u]
        sched = training_schedule(cfg, run, job, members, texts)
        jobs.append(JobPlan(job, variant, sched["rows"], sched["total"], sched["total"]))
        micro[variant] = max(micro.get(variant, 0), sched["micro"])
    return jobs, micro, len(users.user_ids), len(set(texts))


def _no_eta_reason(cfg: Config) -> str | None:
    """Why no ETA is claimed, or None: CPU runs of the config-built backbone, a named one
    (installed package) or a local folder are timed; a hub model is not fetched to time."""
    from pathlib import Path

    from copl_ray.reward.backbone import NAMED_BACKBONES

    if cfg.train.use_gpu or cfg.gnn.use_gpu:
        return "GPU training is not timed on this machine's CPU"
    name = cfg.reward.backbone
    if name != "tiny-gemma" and name not in NAMED_BACKBONES and not Path(name).is_dir():
        return f"reward.backbone {name!r} (a hub model) is not fetched to be timed"
    return None


def make_plan(cfg: Config, run: RunDir) -> RunPlan:
    """Count, time and budget the training (see the module docstring)."""
    summary = json.loads((run.data / "summary.json").read_text())
    jobs, micro, n_seen, n_texts = _jobs(cfg, run)
    tc = cfg.train
    plan = RunPlan(
        key=plan_key(cfg),
        n_users_seen=int(summary.get("n_users_seen", n_seen)),
        n_labels=dict(summary.get("n_annotations") or {}),
        jobs=jobs,
        workers=tc.num_workers,
        batch_size=tc.batch_size,
        epochs=tc.epochs,
        max_steps=tc.max_steps,
        budget_min=tc.time_budget_min,
        note=_no_eta_reason(cfg),
    )
    if plan.note is not None:
        return plan
    plan.step_s = {v: measure_reward_step_s(cfg, v, m, n_seen) for v, m in micro.items()}
    plan.gnn_s = measure_gnn_s(cfg, run) or GNN_OVERHEAD_S
    plan.fill_s = measure_fill_s(cfg, n_texts)
    fixed = plan.gnn_s + plan.fill_s + REWARD_JOB_OVERHEAD_S * len(jobs)
    rates = [plan.step_s[j.variant] for j in jobs]
    plan.eta_s = fixed + sum(j.steps * r for j, r in zip(jobs, rates))
    if tc.time_budget_min is not None:
        capped = budget_steps([j.steps for j in jobs], rates, fixed, 60 * tc.time_budget_min)
        for j, n in zip(jobs, capped):
            j.budget_steps = n
    plan.budget_eta_s = fixed + sum(j.budget_steps * r for j, r in zip(jobs, rates))
    return plan


def plan_run(cfg: Config, run: RunDir) -> RunPlan:
    """The plan of this run: ``run_dir/plan.json`` when it belongs to this config, else a
    new one (measured, then written there for the reward stage and later reruns)."""
    path = run.root / PLAN_FILE
    if path.exists():
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError:
            d = {}
        if d.get("key") == plan_key(cfg):
            try:
                return RunPlan(**{**d, "jobs": [JobPlan(**j) for j in d["jobs"]], "reused": True})
            except (TypeError, KeyError):
                pass  # written by another version: plan again
    plan = make_plan(cfg, run)
    record: dict[str, Any] = asdict(plan)
    record.pop("reused")
    tmp = path.with_name(PLAN_FILE + ".tmp")  # atomic: the reward stage never reads half
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return plan
