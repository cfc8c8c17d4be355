"""Benchmark: MoLE (stacked-dense) vs one LoRA (r16, r64) vs a per-expert loop (official).

Same random Gemma-architecture backbone (frozen), same batch of ``B`` pairs (``2B`` rows of
``T`` tokens, ``B`` users), one training step = forward + BTL loss + backward + AdamW step.
Each variant runs in its own subprocess so its peak memory is its own (CUDA: peak
allocated; CPU: peak RSS of the process).

Variants
- ``base``     frozen backbone + head, one rank-1 LoRA on layer-0 q_proj (so backward walks
               the whole stack): the cost every adapter variant pays anyway;
- ``lora16``, ``lora64``  one LoRA of that rank (copl_ray MoLELinear with M = 0);
- ``mole``     copl_ray MoLE, M = 8 experts + shared, rank 8, top-1, one global gate;
- ``mole_pm``  the same with one gate per wrapped module (official routing granularity);
- ``loop``     the official implementation's shape: per-module gate, experts as separate
               nn.Linear pairs, a SparseDispatcher that sorts samples by expert, splits
               them (host sync for part sizes) and loops over experts, index_add back.

Goals (issue §7): mole ≤ 1.15× lora16 step time; mole ≥ 3× faster than loop (reported both
for the full step and for the adapter overhead = step − base).

    python benchmarks/mole.py                         # CPU default (one gemma-2b layer)
    python benchmarks/mole.py --shape gemma-2b --device cuda --dtype bfloat16 --batch 8 --seq 512
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import machine
from torch import nn

SHAPES = {
    # ONE gemma-2b-shaped decoder layer, small vocab: the real adapter/base cost ratio,
    # a few seconds per step on a 2-core CPU
    "cpu": dict(
        hidden_size=2048,
        intermediate_size=16384,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=2000,
    ),
    # gemma-2b (public HF config), random weights
    "gemma-2b": dict(
        hidden_size=2048,
        intermediate_size=16384,
        num_hidden_layers=18,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=256000,
    ),
}
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = ["base", "lora16", "lora64", "mole", "mole_pm", "loop"]
USER_DIM = 512


# ----------------------------------------------------------------- official-style loop
class LoopMoLELinear(nn.Module):
    """Per-expert loop as in the official peft fork: gate per module, SparseDispatcher."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        n_experts: int,
        alpha: float,
        gate_hidden: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.base_layer, self.scaling, self.n = base, alpha / rank, n_experts
        d_in, d_out = base.in_features, base.out_features
        kw = dict(bias=False, dtype=dtype)  # adapters in the adapter dtype, gate in fp32
        self.experts_A = nn.ModuleList(nn.Linear(d_in, rank, **kw) for _ in range(n_experts))
        self.experts_B = nn.ModuleList(nn.Linear(rank, d_out, **kw) for _ in range(n_experts))
        for b in self.experts_B:
            nn.init.normal_(b.weight, std=1e-3)
        self.shared_A = nn.Linear(d_in, rank, **kw)
        self.shared_B = nn.Linear(rank, d_out, **kw)
        self.w_gate = nn.Sequential(
            nn.Linear(USER_DIM, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, n_experts)
        )
        self.dropout = nn.Dropout(0.1)
        self.input_emb: torch.Tensor | None = None  # set on every layer before each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        e = self.input_emb
        logits = self.w_gate(e.float())
        if self.training:
            logits = logits + 0.1 * torch.randn_like(logits)
        probs = torch.softmax(logits, -1)
        top_p, top_i = probs.topk(1, -1)
        gates = torch.zeros_like(probs).scatter(1, top_i, top_p)
        gates = gates.repeat(x.shape[0] // gates.shape[0], 1)
        # SparseDispatcher
        sorted_experts, index_sorted = torch.nonzero(gates).sort(0)
        _, expert_index = sorted_experts.split(1, dim=1)
        batch_index = torch.nonzero(gates)[index_sorted[:, 1], 0]
        part_sizes = (gates > 0).sum(0).tolist()  # host sync, as the original
        nonzero_gates = torch.gather(gates[batch_index.flatten()], 1, expert_index)
        xa = x.to(self.shared_A.weight.dtype)  # adapter dtype, as copl-ray
        inputs = xa[batch_index].split(part_sizes, dim=0)
        outs = []
        for i in range(self.n):
            if part_sizes[i] == 0:
                continue
            h = self.experts_B[i](self.experts_A[i](self.dropout(inputs[i])))
            outs.append(h * self.scaling)
        stitched = torch.cat(outs, 0) * nonzero_gates.to(x.dtype)[:, :, None]
        combined = torch.zeros_like(out).index_add(0, batch_index, stitched.to(out.dtype))
        shared = self.shared_B(self.shared_A(self.dropout(xa))) * self.scaling
        return out + combined + shared.to(out.dtype)


def wrap_loop(
    model: nn.Module, targets: list[str], rank: int, n: int, dtype: torch.dtype
) -> list[LoopMoLELinear]:
    layers = []
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            parent, _, child = name.rpartition(".")
            layer = LoopMoLELinear(mod, rank, n, 2.0 * rank, 256, dtype).to(mod.weight.device)
            setattr(model.get_submodule(parent), child, layer)
            layers.append(layer)
    return layers


# ----------------------------------------------------------------- one variant
def build(
    variant: str, shape: dict, dtype: torch.dtype, device: str, targets: list[str], adapter: str
):
    from transformers import AutoModel, GemmaConfig

    from copl_ray.mole import MoLEConfig, MoLEModel

    torch.manual_seed(0)
    cfg = GemmaConfig(**shape, max_position_embeddings=4096, pad_token_id=0)
    with torch.device(device):  # random init on the device: seconds, not minutes, at 2.5B
        backbone = AutoModel.from_config(cfg, dtype=dtype).eval()
    if variant == "loop":
        return backbone, wrap_loop(backbone, targets, 8, 8, getattr(torch, adapter))
    kw = dict(
        dropout=0.1, user_dim=USER_DIM, gate_hidden=256, gate_noise=0.1, adapter_dtype=adapter
    )
    if variant == "base":
        mcfg = MoLEConfig(
            target_modules=["layers.0.self_attn.q_proj"], num_experts=0, rank=1, alpha=2.0, **kw
        )
    elif variant.startswith("lora"):
        r = int(variant[4:])
        mcfg = MoLEConfig(target_modules=targets, num_experts=0, rank=r, alpha=2.0 * r, **kw)
    else:
        mcfg = MoLEConfig(
            target_modules=targets,
            num_experts=8,
            rank=8,
            alpha=16.0,
            gate_per_module=variant == "mole_pm",
            **kw,
        )
    return MoLEModel(backbone, mcfg).to(device), None


def run_variant(args: argparse.Namespace) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    shape = SHAPES[args.shape]
    targets = ALL_PROJ if args.targets == "all" else ["q_proj", "v_proj"]
    model, loop_layers = build(args.variant, shape, dtype, device, targets, args.adapter_dtype)
    head = nn.Linear(shape["hidden_size"], 1, bias=False, device=device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    b, t = args.batch, args.seq
    ids = torch.randint(1, shape["vocab_size"], (2 * b, t), generator=g).to(device)
    mask = torch.ones_like(ids)
    users = torch.randn(b, USER_DIM, generator=g).to(device)

    def step() -> None:
        if loop_layers is not None:  # official: the embedding is set on every layer
            for layer in loop_layers:
                layer.input_emb = users
            hidden = model(input_ids=ids, attention_mask=mask, use_cache=False)
        elif args.variant.startswith("mole"):
            hidden = model(input_ids=ids, attention_mask=mask, use_cache=False, user_emb=users)
        else:
            hidden = model(input_ids=ids, attention_mask=mask, use_cache=False)
        s = head(hidden.last_hidden_state[:, -1].float()).squeeze(-1)
        loss = -F.logsigmoid(s[:b] - s[b:]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    n_trainable = sum(p.numel() for p in params)
    n_base = sum(
        p.numel()
        for n, p in model.named_parameters()
        if not p.requires_grad and "embed_tokens" not in n
    )
    return dict(
        variant=args.variant,
        step_s=min(times),
        median_s=statistics.median(times),
        peak_bytes=peak,
        trainable=n_trainable,
        base_params=n_base,
    )


# ----------------------------------------------------------------- layer micro-benchmark
def micro(args: argparse.Namespace, d: int = 2048) -> None:
    """Adapter path alone on one d×d projection: (wrapped layer − bare layer) fwd+bwd time."""
    from copl_ray.mole import MoLELinear, RouteContext, expand_scale

    device, dtype = args.device, getattr(torch, args.dtype)
    b, t = args.batch, args.seq
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * b, t, d, generator=g).to(device, dtype).requires_grad_(True)
    users = torch.randn(b, USER_DIM, generator=g).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def bench(layer: nn.Module, before=lambda: None) -> float:
        times = []
        for i in range(args.warmup + 3 * args.steps):
            t0 = time.perf_counter()
            before()
            layer(x).float().square().mean().backward()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return min(times)

    base = nn.Linear(d, d, bias=False, device=device, dtype=dtype).requires_grad_(False)
    bare = bench(base)
    res = {}
    for name, r, m in (("lora16", 16, 0), ("lora64", 64, 0), ("mole", 8, 8)):
        route = RouteContext()
        layer = MoLELinear(
            base,
            rank=r,
            num_experts=m,
            alpha=2.0 * r,
            dropout=0.1,
            route=route if m else None,
            dtype=getattr(torch, args.adapter_dtype),
        ).to(device)
        if m:
            gate = nn.Sequential(nn.Linear(USER_DIM, 256), nn.ReLU(), nn.Linear(256, m)).to(device)

            def set_route(gate=gate, route=route):
                p = torch.softmax(gate(users).float(), -1)
                top_p, top_i = p.topk(1, -1)
                w = torch.zeros_like(p).scatter(-1, top_i, top_p)
                route.set(expand_scale(w, 8)[None].repeat(1, 2, 1))

            res[name] = bench(layer, set_route) - bare
        else:
            res[name] = bench(layer) - bare
    loop = LoopMoLELinear(base, 8, 8, 16.0, 256, getattr(torch, args.adapter_dtype)).to(device)
    loop.input_emb = users
    res["loop"] = bench(loop) - bare
    print(
        f"layer micro-benchmark ({d}×{d} projection, {2 * b}×{t} rows, fwd+bwd, min of "
        f"{3 * args.steps}): bare {bare * 1e3:.2f} ms; adapter overhead ms: "
        + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in res.items())
        + f"; loop / mole {res['loop'] / res['mole'] if res['mole'] > 0 else float('nan'):.2f}"
    )


# ----------------------------------------------------------------- orchestration
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="cpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--adapter-dtype",
        choices=["float32", "bfloat16"],
        help="LoRA/MoLE weights (default: --dtype, as DeepSpeed's bf16 engine casts the "
        "whole module, adapters included; gates and softmax stay fp32 either way)",
    )
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (2×batch rows)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--targets", choices=["all", "qv"], default="all")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="accelerator dense bf16 peak for MFU (H100/H200 SXM: 989)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--no-micro", action="store_true", help="skip the layer micro-benchmark")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.adapter_dtype = args.adapter_dtype or args.dtype
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    shape = SHAPES[args.shape]
    tokens = 2 * args.batch * args.seq
    print(f"machine: {machine(args.device)}")
    print(
        f"shape {args.shape} {shape}, dtype {args.dtype} (adapters {args.adapter_dtype}), device {args.device}, targets "
        f"{args.targets}, batch {args.batch} pairs × 2 × {args.seq} tokens, min of "
        f"{args.steps} steps (a shared machine adds noise only upwards) after {args.warmup} warm-up"
    )
    results = {}
    for v in args.variants.split(","):
        passed, skip = [], False
        for a in sys.argv[1:]:  # forward every option except --variants (and its value)
            if skip or a.startswith("--variants"):
                skip = a == "--variants"
                continue
            passed.append(a)
        cmd = [sys.executable, __file__, "--variant", v, *passed]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{v}: FAILED\n{proc.stderr[-2000:]}")
            continue
        results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results.get("base", {}).get("step_s")
    print(
        f"{'variant':8s} {'step s':>8s} {'tok/s':>9s} {'peak MiB':>9s} {'trainable':>10s} "
        f"{'overhead s':>10s}" + (" MFU" if args.device == "cuda" else "")
    )
    for v, r in results.items():
        over = f"{r['step_s'] - base:10.4f}" if base else f"{'-':>10s}"
        line = (
            f"{v:8s} {r['step_s']:8.4f} {tokens / r['step_s']:9.0f} "
            f"{r['peak_bytes'] / 2**20:9.0f} {r['trainable']:10d} {over}"
        )
        if args.device == "cuda":
            # frozen base: forward 2N + input-grad backward 2N FLOPs per token (+ attention)
            n = r["base_params"]
            # QK^T and AV (2 × 2 FLOPs per MAC), fwd + input-grad bwd (× 2): 8 · L · T · H · d_h
            dims = ("num_hidden_layers", "num_attention_heads", "head_dim")
            attn = 8 * args.seq * math.prod(shape[k] for k in dims)
            flops = tokens * (4 * n + attn)
            line += f" {flops / r['step_s'] / (args.peak_tflops * 1e12):.1%}"
        print(line)
    if {"mole", "lora16", "loop"} <= results.keys():
        m, l16, lp = (results[k]["step_s"] for k in ("mole", "lora16", "loop"))
        print(f"mole / lora16 step time: {m / l16:.3f}  (goal ≤ 1.15)")
        print(f"loop / mole   step time: {lp / m:.2f}  (goal ≥ 3)")
        if base:
            om, o16, olp = (x - base for x in (m, l16, lp))
            print(
                f"adapter overhead over base (s): mole {om:.4f}, lora16 {o16:.4f}, "
                f"loop {olp:.4f}; loop / mole overhead "
                + (f"{olp / om:.2f}" if om > 0 and olp > 0 else "n/a (≤ 0: timing noise)")
            )
    if not args.no_micro:
        micro(args)
    if "mole_pm" in results and "loop" in results:
        print(
            f"loop / mole_pm step time: {results['loop']['step_s'] / results['mole_pm']['step_s']:.2f}"
            " (both per-module gates)"
        )


if __name__ == "__main__":
    main()
