"""The Ray Train worker loop: BTL reward training under DeepSpeed ZeRO.

Runs inside every ``TorchTrainer`` worker. Each worker reads its Ray Data shard of
tokenised pairs (``ray.train.get_dataset_shard``) and minimises the Bradley-Terry loss

    L = -mean log σ(f(u, chosen) - f(u, rejected))  (+ load-balance term when enabled)

with DeepSpeed (ZeRO stage / offload / bf16 from the typed config). Chosen and rejected of
a batch of ``B`` pairs run as ONE forward of ``2B`` rows ``[chosen; rejected]`` with the
``B`` users' routes, so a pair's two responses share one gate evaluation.

Checkpoints (every ``train.ckpt_every`` optimizer steps and at the end): each rank writes
its DeepSpeed shards, rank 0 adds ``model/`` (``PersonalRewardModel.save`` with ZeRO-3
parameters gathered, so the reward head and gates are never lost) and
``trainer_state.json``; all of it is one Ray Train checkpoint. On (re)start the loop
resumes from ``ray.train.get_checkpoint()``: DeepSpeed restores parameters, optimizer and
scheduler; the data position is restored by skipping the batches already consumed.

``deepspeed`` is imported here, inside the worker, never on the driver (docs/stack-notes.md S1).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRAINER_STATE = "trainer_state.json"
MODEL_DIR = "model"
DS_TAG = "deepspeed"


class InjectedInterruption(RuntimeError):
    """Raised by the loop at ``interrupt_at_step`` (tests: a crash after a checkpoint)."""


def pair_forward(engine, batch: dict, user_table):
    """Scores ``(chosen [B], rejected [B])`` of a collated batch in one forward of 2B rows.

    ``PersonalRewardModel.score_rows`` (the scoring path eval and serving share) trims
    the fixed ``max_length`` padding and passes the user input the variant takes: the
    seen user's GNN row of ``user_table`` or the ``user_index`` into the model's own table.
    """
    import torch

    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]], dim=0)
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], dim=0)
    index = batch["user_index"]
    user_emb = None if user_table is None else user_table[index.to(user_table.device)]
    scores = engine.module.score_rows(ids, mask, user_emb, index, forward=engine)
    b = batch["chosen_input_ids"].shape[0]
    return scores[:b].float(), scores[b:].float()


def _to_device(batch: dict, device) -> dict:
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing of the backbone's layers, safe with ZeRO-3 + frozen weights.

    ``use_reentrant=True``: the non-reentrant variant recomputes with frozen ZeRO-3 params
    re-partitioned to shape [0] and fails with ``CheckpointError`` (docs/stack-notes.md S3;
    TRL forces the same). Reentrant checkpointing only back-propagates into a segment whose
    input requires grad, so the embedding output is made to require grad
    (``enable_input_require_grads``; the official code's ``requires_grad_()`` on the whole
    embedding matrix is bug B8 of docs/reference-code.md). The MoLE route stays set after
    the forward, so the recomputation reads the same gate (same noise) — as a detached copy
    whose gradient is handed back to the gate outside the recomputed blocks, so the gate,
    the no_gnn user table and every other trainable parameter get exactly one gradient hook
    per step, as ZeRO-2/3 require (copl_ray/mole/layer.py RouteContext).
    """
    backbone = model.backbone
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    backbone.enable_input_require_grads()


def save_model(engine, model, out_dir: Path, zero_stage: int, rank: int) -> None:
    """``model.save(out_dir)`` on rank 0 with every parameter gathered under ZeRO-3.

    Under ZeRO-3 each rank holds a 1/N shard of every parameter (``p.numel() == 0``
    locally); saving without gathering writes empty tensors — the lost-reward-head bug
    (docs/stack-notes.md S2). ``GatheredParameters`` is collective: all ranks enter it.
    """
    import deepspeed

    if zero_stage == 3:
        # Config-built backbones are saved whole; hub backbones only by their adapters/head.
        everything = model.reward_cfg.backbone == "tiny-gemma"
        params = [p for p in model.parameters() if everything or p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if rank == 0:
                model.save(str(out_dir))
    elif rank == 0:
        model.save(str(out_dir))


class RewardRecipe:
    """One worker's BTL training, torchtune-style: :meth:`setup` builds everything,
    :meth:`train` runs the steps, :meth:`validate` and :meth:`save_checkpoint` are called
    by it. ``config`` is built by :mod:`copl_ray.reward.stage`."""

    def __init__(self, config: dict[str, Any]) -> None:
        from copl_ray.config import config_from_dict

        self.config = config
        self.cfg = config_from_dict(config["cfg"])
        self.tc = self.cfg.train
        self.name, self.variant = config["name"], config["variant"]
        self.micro, self.spe = config["micro_batch"], config["steps_per_epoch"]
        self.total = config["total_steps"]
        self.step, self.history, self.val_curve, self.resumed_from = 0, [], [], None
        self.val_cache: list[dict] = []
        self.train_cache: list[dict] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Distributed init, model, user table, DeepSpeed engine, resume, data shards."""
        if not self.tc.use_gpu:
            # before deepspeed is imported (docs/stack-notes.md S5)
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed
        import ray.train
        import ray.train.torch
        import torch

        from copl_ray.env import clear_stale_build_locks
        from copl_ray.reward.ds_config import build_ds_config

        tc, config = self.tc, self.config
        clear_stale_build_locks()  # a killed earlier build would hang DeepSpeed's op load
        # DeepSpeed's CPU backend prints "... shm_comm_op built successfully" from every worker
        # of every model; a failed build raises, so that stdout carries nothing a user needs
        with contextlib.redirect_stdout(io.StringIO()):
            deepspeed.init_distributed(dist_backend="nccl" if tc.use_gpu else "gloo")
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")
        torch.set_num_threads(max(1, int(config.get("torch_threads", 1))))
        ds_config = build_ds_config(
            tc, micro_batch=self.micro, world_size=self.world, on_gpu=tc.use_gpu
        )
        # Under ZeRO-3 the HF config object must exist BEFORE the backbone is built, so that
        # transformers constructs it inside zero.Init and no rank ever holds a full copy in
        # host RAM (docs/stack-notes.md S4); held (a weak reference) as long as the recipe.
        self._hf_ds = None
        if tc.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(ds_config)
        self._build_model()
        self._build_engine(ds_config)
        self._resume()
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None

    def _build_model(self) -> None:
        """Seeded model (same frozen weights on every rank) and the GNN user table."""
        import torch

        from copl_ray.reward.backbone import load_tokenizer
        from copl_ray.reward.model import PersonalRewardModel

        tc, config = self.tc, self.config
        torch.manual_seed(tc.seed)  # identical frozen weights on every rank for random backbones
        tokenizer = load_tokenizer(config["tokenizer_dir"])
        self.model = model = PersonalRewardModel.build(
            self.cfg.reward,
            self.variant,
            user_dim=config["user_dim"],
            n_users=config["n_users"],
            tokenizer=tokenizer,
        )
        if config.get("user_init") is not None:  # PReF: the SVD start of its user weights
            with torch.no_grad():
                init = torch.tensor(np.array(config["user_init"], dtype=np.float32))
                model.user_table.weight.copy_(init.to(model.user_table.weight.dtype))
        if tc.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.user_table = None
        if config.get("user_embeddings") is not None:
            # a copy: the table arrives read-only from Ray's object store
            table = torch.tensor(np.array(config["user_embeddings"], dtype=np.float32))
            self.user_table = table.to(self.device)
            if model.mole.gate is not None and self.cfg.reward.gate_input == "standardized":
                # every rank holds the same table, so every rank freezes the same (mu, sigma)
                model.mole.gate.standardize_inputs(self.user_table)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters; the free user rows in their own group at
        ``reward.user_lr_scale`` times the learning rate."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        users = [p for n, p in named if n.startswith("user_table.")]
        groups: list[dict[str, Any]] = [
            {"params": [p for n, p in named if not n.startswith("user_table.")]}
        ]
        if users:
            groups.append({"params": users, "lr": self.tc.lr * self.cfg.reward.user_lr_scale})
        return groups

    def _build_engine(self, ds_config: dict) -> None:
        """DeepSpeed engine and cosine schedule; the frozen-layer states loaded after it."""
        import deepspeed
        import torch

        from copl_ray.schedule import cosine_with_warmup

        total, n_warm = self.total, self.config["warmup_steps"]
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            model_parameters=self._param_groups(),
            config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, cosine_with_warmup(total, n_warm)
            ),
        )
        if self.user_table is not None and self.tc.bf16:
            self.user_table = self.user_table.to(torch.bfloat16)
        if self.config.get("context") is not None:  # VPL: the users' labelled pairs
            self.user_table = self._context_table()
        if self.config.get("frozen_states") and self.model.frozen is not None:
            from copl_ray.reward.frozen_cache import load_states

            # after deepspeed.initialize: moving the model (.to) clears the cache
            load_states(self.model.frozen, self.config["frozen_states"])  # computed by the stage

    def _context_table(self):
        """VPL's context of every seen user ``[U, C, 2H + 1]``: the frozen features of the
        responses of their labelled pairs (copl_ray/reward/baselines.py context_tensor),
        computed once by this worker's own model (ZeRO-3: parameters gathered for it)."""
        import deepspeed

        from copl_ray.reward.baselines import context_tensor

        ctx, model = self.config["context"], self.model
        gather = contextlib.nullcontext()
        if self.tc.zero_stage == 3:
            gather = deepspeed.zero.GatheredParameters(list(model.parameters()))
        with gather:
            feats = model.response_features(np.asarray(ctx["ids"]), np.asarray(ctx["mask"]))
        return context_tensor(
            feats,
            np.asarray(ctx["chosen"]),
            np.asarray(ctx["rejected"]),
            np.asarray(ctx["user"]),
            self.config["n_users"],
            self.cfg.reward.vpl_context,
        )

    def _resume(self) -> None:
        """Restore from Ray Train's latest checkpoint, if any, and say so on rank 0."""
        import ray.train

        from copl_ray.recovery import restart_line, start_attempt

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = json.loads((Path(d) / TRAINER_STATE).read_text())
                self.engine.load_checkpoint(
                    d, tag=DS_TAG, load_module_strict=False, load_optimizer_states=True
                )
            self.step, self.history = state["step"], state["history"]
            self.val_curve = state["val_curve"]
            self.resumed_from = self.step
        attempt = start_attempt(self.config.get("attempts_file"), self.rank)
        if self.rank == 0 and attempt > 1:  # Ray Train restarted the group after a failure
            resumed = f"step {self.step}" if ckpt is not None else None
            line = restart_line(f"reward/{self.name}", attempt, self.tc.max_failures, resumed)
            print(line, flush=True)
        elif self.rank == 0 and ckpt is not None:
            print(
                f"[{self.name}] resumed from checkpoint at step {self.step}/{self.total}",
                flush=True,
            )

    # ------------------------------------------------------------------ data
    def epoch_batches(self, epoch: int):
        """Stream the shard; with ``train.cache_shards`` later epochs re-batch a permutation
        of the rows the first streamed pass kept in worker memory (small data: re-running
        the pipeline would cost more than the training)."""
        import torch

        from copl_ray.reward.shards import collate_pairs

        tc, micro, cache = self.tc, self.micro, self.train_cache
        if tc.cache_shards and cache:
            cols = {
                k: torch.cat([b[k] for b in cache])
                for k in cache[0]
                if isinstance(cache[0][k], torch.Tensor)
            }
            n_rows = next(iter(cols.values())).shape[0]
            perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(tc.seed + epoch))
            for j in range(n_rows // micro):
                idx = perm[j * micro : (j + 1) * micro]
                yield {k: v[idx] for k, v in cols.items()}
            return
        for b in self.train_shard.iter_torch_batches(
            batch_size=micro,
            collate_fn=collate_pairs,
            drop_last=True,
            local_shuffle_buffer_size=self.config["shuffle_buffer"],
            local_shuffle_seed=tc.seed + epoch,
        ):
            if tc.cache_shards:
                cache.append(b)
            yield b

    # ------------------------------------------------------------------ validate / save
    def validate(self) -> float | None:
        """Pairwise accuracy on the val shard, summed over ranks (None without one)."""
        import torch

        from copl_ray.reward.shards import collate_pairs

        if self.val_shard is None:
            return None
        self.engine.eval()
        correct = n = 0.0
        # The val shard is small and read every eval_every steps: keep it after one pass
        # instead of re-running the Ray Data pipeline each time.
        if not self.val_cache:
            self.val_cache.extend(
                self.val_shard.iter_torch_batches(
                    batch_size=self.micro, collate_fn=collate_pairs, drop_last=False
                )
            )
        with torch.no_grad():
            for b in self.val_cache:
                c, r = pair_forward(self.engine, _to_device(b, self.device), self.user_table)
                correct += float((c > r).sum())
                n += c.numel()
        self.engine.train()
        correct, n = _all_reduce_sum([correct, n], self.device)
        return correct / n if n else None

    def save_checkpoint(self, metrics: dict[str, Any]) -> None:
        """DeepSpeed shards of every rank + ``model/`` + trainer state: one Ray checkpoint."""
        import ray.train

        from copl_ray.recovery import commit_checkpoint

        with tempfile.TemporaryDirectory(prefix=f"copl-{self.name}-") as tmp:
            self.engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
            save_model(
                self.engine, self.model, Path(tmp) / MODEL_DIR, self.tc.zero_stage, self.rank
            )
            if self.rank == 0:
                state = {"step": self.step, "history": self.history, "val_curve": self.val_curve}
                (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if self.step < self.total:  # a worker killed from here on restarts from this checkpoint
            commit_checkpoint()

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        """Epochs of optimizer steps from the resumed step to ``total_steps``."""
        tc, spe = self.tc, self.spe
        mole = getattr(self.model, "mole", None)
        self.n_dense = math.ceil(self.cfg.reward.gate_dense_warmup * self.total)
        self.engine.train()
        self.t0, self.start_step = time.time(), self.step
        self.window = _Window.empty(
            self.cfg.reward.num_experts if getattr(mole, "gate", None) is not None else 0
        )
        for epoch in range(self.step // spe, math.ceil(self.total / spe)):
            if self.step >= self.total:
                break
            skip = self.step - epoch * spe  # batches of this epoch consumed before a restart
            for i, batch in enumerate(self.epoch_batches(epoch)):
                if i >= spe * tc.grad_accum:
                    break
                if i < skip * tc.grad_accum:
                    continue
                self._micro_step(_to_device(batch, self.device), mole)
                if not self.engine.is_gradient_accumulation_boundary():
                    continue
                self.step += 1
                self._after_step(epoch)
                if self.step >= self.total:
                    break

    def _micro_step(self, batch: dict, mole) -> None:
        """One forward/backward of a micro batch; its loss, accuracy, tokens, routing."""
        import torch

        if mole is not None:  # dense-to-sparse gate warm-up (same step on every rank)
            mole.dense_routing = self.step < self.n_dense
        self.model.set_progress(self.step / max(self.total, 1))  # VPL's KL annealing
        c, r = pair_forward(self.engine, batch, self.user_table)
        loss = -torch.nn.functional.logsigmoid(c - r).mean()
        aux = getattr(self.model, "aux_loss", None)
        if isinstance(aux, torch.Tensor) and aux.requires_grad:
            loss = loss + aux
        self.engine.backward(loss)
        self.engine.step()
        w = self.window
        w.loss_sum += float(loss.detach()) * c.numel()
        w.correct += float((c > r).sum())
        w.n += c.numel()
        w.tokens += float(
            batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        )
        w.pairs += c.numel()
        if w.usage:  # top-k assignments of this forward's users, summed over the gates
            w.usage = [u + float(x) for u, x in zip(w.usage, self.model.expert_usage().sum(0))]

    def _after_step(self, epoch: int) -> None:
        """Log / validate / checkpoint / report at an optimizer step, as configured."""
        import ray.train

        tc, step, last = self.tc, self.step, self.step >= self.total
        log_now = step % tc.log_every == 0 or last
        eval_now = step % tc.eval_every == 0 or last
        metrics: dict[str, Any] = {"step": step, "epoch": epoch}
        if log_now:
            metrics.update(self._window_metrics())
        if eval_now:
            metrics["val_acc"] = self.validate()
            self.val_curve.append({"step": step, "val_acc": metrics["val_acc"]})
        if log_now and self.rank == 0:
            print(_log_line(self.name, step, self.total, epoch, metrics), flush=True)
        if step % tc.ckpt_every == 0 or last:
            metrics["resumed_from_step"] = self.resumed_from
            metrics["train_seconds"] = time.time() - self.t0
            self.save_checkpoint(metrics)
        elif log_now or eval_now:
            ray.train.report(metrics)
        interrupt_at = self.config.get("interrupt_at_step")
        if interrupt_at is not None and step == interrupt_at and self.resumed_from is None:
            raise InjectedInterruption(f"[{self.name}] injected interruption at step {step}")

    def _window_metrics(self) -> dict[str, Any]:
        """Loss, accuracy, rates and expert shares since the last log, summed over ranks
        (the time-based rates since this attempt's start); the window starts over."""
        w, step = self.window, self.step
        loss_sum, corr, n, tok, n_pairs, *routed = _all_reduce_sum(
            [w.loss_sum, w.correct, w.n, w.tokens, w.pairs, *w.usage], self.device
        )
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = (step - self.start_step) / elapsed
        metrics = {
            "loss": loss_sum / max(n, 1),
            "train_acc": corr / max(n, 1),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": tok / elapsed,
            "pairs_per_s": n_pairs / elapsed,
            "eta_s": (self.total - step) / max(rate, 1e-9),
        }
        if routed and sum(routed) > 0:  # share of the window's samples per expert
            metrics["expert_usage"] = [u / sum(routed) for u in routed]
        self.history.append({"step": step, **{k: metrics[k] for k in ("loss", "train_acc", "lr")}})
        w.reset()
        return metrics

    def cleanup(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


@dataclass
class _Window:
    """Sums since the last log line. ``tokens`` and ``pairs`` run over the whole attempt
    (rates are per second since its start); the rest start over at each log."""

    loss_sum: float
    correct: float
    n: float
    tokens: float
    pairs: float
    usage: list[float]  # samples routed to each expert ([] without a gate)

    @classmethod
    def empty(cls, n_experts: int) -> _Window:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, [0.0] * n_experts)

    def reset(self) -> None:
        self.loss_sum = self.correct = self.n = 0.0
        self.usage = [0.0] * len(self.usage)


def _log_line(name: str, step: int, total: int, epoch: int, metrics: dict[str, Any]) -> str:
    val = metrics.get("val_acc")
    return (
        f"[{name}] step {step}/{total} epoch {epoch} loss {metrics['loss']:.4f} "
        f"acc {metrics['train_acc']:.3f}"
        + (f" val_acc {val:.3f}" if val is not None else "")
        + f" lr {metrics['lr']:.2e} tok/s {metrics['tokens_per_s']:.0f} "
        f"eta {_fmt_eta(metrics['eta_s'])}"
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is built by :mod:`copl_ray.reward.stage`."""
    recipe = RewardRecipe(config)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
