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
from pathlib import Path
from typing import Any

import numpy as np

TRAINER_STATE = "trainer_state.json"
MODEL_DIR = "model"
DS_TAG = "deepspeed"


class InjectedInterruption(RuntimeError):
    """Raised by the loop at ``interrupt_at_step`` (tests: a crash after a checkpoint)."""


def pair_forward(model, batch: dict, variant: str, user_table):
    """Scores ``(chosen [B], rejected [B])`` of a collated batch in one forward of 2B rows."""
    ids = torch_cat(batch["chosen_input_ids"], batch["rejected_input_ids"])
    mask = torch_cat(batch["chosen_attention_mask"], batch["rejected_attention_mask"])
    # Rows are right-padded to max_length; cutting the all-pad tail is exact (causal
    # attention: no position attends to later ones) and skips wasted compute.
    width = int(mask.sum(1).max())
    ids, mask = ids[:, :width], mask[:, :width]
    kwargs: dict[str, Any] = {}
    if variant in ("copl", "no_mole"):
        kwargs["user_emb"] = user_table[batch["user_index"].to(user_table.device)]
    elif variant == "no_gnn":
        kwargs["user_index"] = batch["user_index"]
    scores = model(ids, mask, **kwargs)
    b = batch["chosen_input_ids"].shape[0]
    return scores[:b].float(), scores[b:].float()


def torch_cat(a, b):
    import torch

    return torch.cat([a, b], dim=0)


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


def train_loop_per_worker(config: dict[str, Any]) -> None:  # noqa: C901 - one loop, read top-down
    """Ray Train entry point; ``config`` is built by :mod:`copl_ray.reward.stage`."""
    from copl_ray.config import config_from_dict

    cfg = config_from_dict(config["cfg"])
    tc = cfg.train
    if not tc.use_gpu:
        # before deepspeed is imported (docs/stack-notes.md S5)
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from copl_ray.data.ray_data import collate_pairs
    from copl_ray.env import clear_stale_build_locks
    from copl_ray.recovery import commit_checkpoint, restart_line, start_attempt
    from copl_ray.reward.backbone import load_tokenizer
    from copl_ray.reward.ds_config import build_ds_config
    from copl_ray.reward.model import PersonalRewardModel
    from copl_ray.schedule import cosine_with_warmup

    clear_stale_build_locks()  # a killed earlier build would hang DeepSpeed's op load
    # DeepSpeed's CPU backend prints "... shm_comm_op built successfully" from every worker
    # of every model; a failed build raises, so that stdout carries nothing a user needs
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(dist_backend="nccl" if tc.use_gpu else "gloo")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(config.get("torch_threads", 1))))
    name, variant = config["name"], config["variant"]
    micro, spe, total = config["micro_batch"], config["steps_per_epoch"], config["total_steps"]
    ds_config = build_ds_config(tc, micro_batch=micro, world_size=world, on_gpu=tc.use_gpu)

    # Under ZeRO-3 the HF config object must exist BEFORE the backbone is built, so that
    # transformers constructs it inside zero.Init and no rank ever holds a full copy in host
    # RAM (docs/stack-notes.md S4).
    hf_ds = None
    if tc.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841 - kept alive by reference
    torch.manual_seed(tc.seed)  # identical frozen weights on every rank for random backbones
    tokenizer = load_tokenizer(config["tokenizer_dir"])
    model = PersonalRewardModel.build(
        cfg.reward,
        variant,
        user_dim=config["user_dim"],
        n_users=config["n_users"],
        tokenizer=tokenizer,
    )
    if tc.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    user_table = None
    if config.get("user_embeddings") is not None:
        # a copy: the table arrives read-only from Ray's object store
        user_table = torch.tensor(np.array(config["user_embeddings"], dtype=np.float32))
        user_table = user_table.to(device)
        if model.mole.gate is not None and cfg.reward.gate_input == "standardized":
            # every rank holds the same table, so every rank freezes the same (mu, sigma)
            model.mole.gate.standardize_inputs(user_table)

    trainable = [p for p in model.parameters() if p.requires_grad]
    n_warm = config["warmup_steps"]
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(total, n_warm)
        ),
    )
    if user_table is not None and tc.bf16:
        user_table = user_table.to(torch.bfloat16)
    if config.get("frozen_states") and model.frozen is not None:
        from copl_ray.reward.frozen_cache import load_states

        # after deepspeed.initialize: moving the model (.to) clears the cache
        load_states(model.frozen, config["frozen_states"])  # computed once by the stage

    # ------------------------------------------------------------------ resume
    step, history, val_curve, resumed_from = 0, [], [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / TRAINER_STATE).read_text())
            engine.load_checkpoint(
                d, tag=DS_TAG, load_module_strict=False, load_optimizer_states=True
            )
        step, history, val_curve = state["step"], state["history"], state["val_curve"]
        resumed_from = step
    attempt = start_attempt(config.get("attempts_file"), rank)
    if rank == 0 and attempt > 1:  # Ray Train restarted the worker group after a failure
        resumed = f"step {step}" if ckpt is not None else None
        print(restart_line(f"reward/{name}", attempt, tc.max_failures, resumed), flush=True)
    elif rank == 0 and ckpt is not None:
        print(f"[{name}] resumed from checkpoint at step {step}/{total}", flush=True)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None

    val_cache: list[dict] = []

    def validate() -> float | None:
        if val_shard is None:
            return None
        engine.eval()
        correct = n = 0.0
        # The val shard is small and read every eval_every steps: keep it after one pass
        # instead of re-running the Ray Data pipeline each time.
        if not val_cache:
            val_cache.extend(
                val_shard.iter_torch_batches(
                    batch_size=micro, collate_fn=collate_pairs, drop_last=False
                )
            )
        with torch.no_grad():
            for b in val_cache:
                c, r = pair_forward(engine, _to_device(b, device), variant, user_table)
                correct += float((c > r).sum())
                n += c.numel()
        engine.train()
        correct, n = _all_reduce_sum([correct, n], device)
        return correct / n if n else None

    def checkpoint(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix=f"copl-{name}-") as tmp:
            engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
            save_model(engine, model, Path(tmp) / MODEL_DIR, tc.zero_stage, rank)
            if rank == 0:
                state = {"step": step, "history": history, "val_curve": val_curve}
                (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if step < total:  # a worker killed from here on restarts from this checkpoint
            commit_checkpoint()

    train_cache: list[dict] = []

    def epoch_batches(epoch: int):
        """Stream the shard; with ``train.cache_shards`` later epochs re-batch a permutation
        of the rows the first streamed pass kept in worker memory (small data: re-running
        the pipeline would cost more than the training)."""
        if tc.cache_shards and train_cache:
            cols = {
                k: torch.cat([b[k] for b in train_cache])
                for k in train_cache[0]
                if isinstance(train_cache[0][k], torch.Tensor)
            }
            n_rows = next(iter(cols.values())).shape[0]
            perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(tc.seed + epoch))
            for j in range(n_rows // micro):
                idx = perm[j * micro : (j + 1) * micro]
                yield {k: v[idx] for k, v in cols.items()}
            return
        for b in train_shard.iter_torch_batches(
            batch_size=micro,
            collate_fn=collate_pairs,
            drop_last=True,
            local_shuffle_buffer_size=config["shuffle_buffer"],
            local_shuffle_seed=tc.seed + epoch,
        ):
            if tc.cache_shards:
                train_cache.append(b)
            yield b

    # ------------------------------------------------------------------ loop
    mole = getattr(model, "mole", None)
    n_dense = math.ceil(cfg.reward.gate_dense_warmup * total)
    engine.train()
    t0, tokens, window = time.time(), 0.0, [0.0, 0.0, 0.0, 0]  # loss_sum, correct, n, steps
    pairs_done = 0.0
    # samples routed to each expert since the last log (gated variants; [] without a gate)
    usage = [0.0] * (cfg.reward.num_experts if getattr(mole, "gate", None) is not None else 0)
    start_step, interrupt_at = step, config.get("interrupt_at_step")
    n_epochs = math.ceil(total / spe)
    done = step >= total
    for epoch in range(step // spe, n_epochs):
        if done:
            break
        skip = step - epoch * spe  # batches of this epoch consumed before a restart
        for i, batch in enumerate(epoch_batches(epoch)):
            if i >= spe * tc.grad_accum:
                break
            if i < skip * tc.grad_accum:
                continue
            batch = _to_device(batch, device)
            if mole is not None:  # dense-to-sparse gate warm-up (same step on every rank)
                mole.dense_routing = step < n_dense
            c, r = pair_forward(engine, batch, variant, user_table)
            loss = -torch.nn.functional.logsigmoid(c - r).mean()
            aux = getattr(model, "aux_loss", None)
            if isinstance(aux, torch.Tensor) and aux.requires_grad:
                loss = loss + aux
            engine.backward(loss)
            engine.step()
            window[0] += float(loss.detach()) * c.numel()
            window[1] += float((c > r).sum())
            window[2] += c.numel()
            tokens += float(
                batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
            )
            pairs_done += c.numel()
            if usage:  # top-k assignments of this forward's users, summed over the gates
                usage = [u + float(x) for u, x in zip(usage, model.expert_usage().sum(0))]
            if not engine.is_gradient_accumulation_boundary():
                continue
            step += 1
            window[3] += 1
            last = step >= total
            log_now = step % tc.log_every == 0 or last
            eval_now = step % tc.eval_every == 0 or last
            ckpt_now = step % tc.ckpt_every == 0 or last
            metrics: dict[str, Any] = {"step": step, "epoch": epoch}
            if log_now:
                loss_sum, corr, n, tok, n_pairs, *routed = _all_reduce_sum(
                    [window[0], window[1], window[2], tokens, pairs_done, *usage], device
                )
                elapsed = time.time() - t0
                rate = (step - start_step) / max(elapsed, 1e-9)
                metrics.update(
                    loss=loss_sum / max(n, 1),
                    train_acc=corr / max(n, 1),
                    lr=scheduler.get_last_lr()[0],
                    tokens_per_s=tok / max(elapsed, 1e-9),
                    pairs_per_s=n_pairs / max(elapsed, 1e-9),
                    eta_s=(total - step) / max(rate, 1e-9),
                )
                if routed and sum(routed) > 0:  # share of the window's samples per expert
                    metrics["expert_usage"] = [u / sum(routed) for u in routed]
                history.append({k: metrics[k] for k in ("step", "loss", "train_acc", "lr")})
                window = [0.0, 0.0, 0.0, 0]
                usage = [0.0] * len(usage)
            if eval_now:
                metrics["val_acc"] = validate()
                val_curve.append({"step": step, "val_acc": metrics["val_acc"]})
            if log_now and rank == 0:
                val = metrics.get("val_acc")
                print(
                    f"[{name}] step {step}/{total} epoch {epoch} loss {metrics['loss']:.4f} "
                    f"acc {metrics['train_acc']:.3f}"
                    + (f" val_acc {val:.3f}" if val is not None else "")
                    + f" lr {metrics['lr']:.2e} tok/s {metrics['tokens_per_s']:.0f} "
                    f"eta {_fmt_eta(metrics['eta_s'])}",
                    flush=True,
                )
            if ckpt_now:
                metrics["resumed_from_step"] = resumed_from
                metrics["train_seconds"] = time.time() - t0
                checkpoint(metrics)
            elif log_now or eval_now:
                ray.train.report(metrics)
            if interrupt_at is not None and step == interrupt_at and resumed_from is None:
                raise InjectedInterruption(f"[{name}] injected interruption at step {step}")
            if last:
                done = True
                break
    if dist.is_initialized():
        dist.barrier()
