"""MoLE building blocks: the gate, the route context and the wrapped linear layer.

Stacked-dense batching. All ``E = M + 1`` LoRA blocks of one layer live
in one ``A ∈ R^{E·r × d_in}`` (block 0 = shared) and one ``B ∈ R^{d_out × E·r}``. For a batch
whose row ``b`` belongs to a user with gate ``w_b ∈ R^M``::

    s_b = [1_r, w_b1·1_r, ..., w_bM·1_r] ∈ R^{E·r}
    y_b = W0 x_b + (α/r) · B (s_b ⊙ (A dropout(x_b)))
        = W0 x_b + (α/r) · (B_s A_s + Σ_i w_bi B_i A_i) x_b

Two GEMMs and one broadcast multiply per layer whatever the routes: no Python loop over
samples or experts, no data-dependent shapes, every parameter touched on every step (so
ZeRO-3 prefetching never meets an idle expert).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GateOutput:
    """One gate evaluation for ``B`` users and ``G`` gates (G = 1: one global gate)."""

    logits: torch.Tensor  # [G, B, M] fp32, noise included
    probs: torch.Tensor  # [G, B, M] softmax(logits / τ), fp32
    weights: torch.Tensor  # [G, B, M] applied expert weights (top-k masked; p² if squared)
    top_idx: torch.Tensor  # [G, B, k] chosen experts
    balance_loss: torch.Tensor  # scalar, Switch loss M·Σ f_i P_i (mean over gates)
    noise: torch.Tensor | None = None  # [G, B, M] logit noise drawn (None: no noise)

    def usage(self) -> torch.Tensor:
        """[G, M] number of users routed to each expert (top-k assignments)."""
        g, _, m = self.probs.shape
        counts = torch.zeros(g, m, device=self.top_idx.device)
        return counts.scatter_add_(
            1, self.top_idx.flatten(1), torch.ones_like(self.top_idx.flatten(1), dtype=counts.dtype)
        )


class MoLEGate(nn.Module):
    """``G`` independent 2-layer MLP gates ``z = W2 relu(W1 e + b1) + b2``, batched.

    The ``G`` gates (one global gate, or one per wrapped module as in the official code)
    are stacked into ``[G, ...]`` parameters and evaluated with two einsums. Everything is
    at least fp32 (autocast off): a bf16 softmax flips near-tied top-1 choices
    (docs/reference-code.md B3).

    ``forward`` returns the logits TENSOR ``[G, B, M]`` and :meth:`route` turns it into a
    :class:`GateOutput`. DeepSpeed ZeRO-3 gathers a module's partitioned parameters around
    its forward and re-gathers them in backward through hooks it attaches to the tensors the
    forward returns; it does not look inside a dataclass, so a forward returning
    ``GateOutput`` left ``w1..b2`` partitioned (size 0) in backward.
    """

    def __init__(
        self,
        user_dim: int,
        hidden: int,
        num_experts: int,
        n_gates: int = 1,
        standardized: bool = False,
    ) -> None:
        super().__init__()
        # plain ints: under ZeRO-3 the parameters read shape [0] outside the forward
        self.user_dim, self._n_gates = user_dim, n_gates
        # buffers (saved with the model, never trained, not ZeRO-partitioned); None = raw
        self.register_buffer("input_shift", torch.zeros(user_dim) if standardized else None)
        self.register_buffer("input_scale", torch.ones(()) if standardized else None)
        self.w1 = nn.Parameter(torch.empty(n_gates, user_dim, hidden))
        self.b1 = nn.Parameter(torch.empty(n_gates, hidden))
        self.w2 = nn.Parameter(torch.empty(n_gates, hidden, num_experts))
        self.b2 = nn.Parameter(torch.empty(n_gates, num_experts))
        # nn.Linear's default init, per gate: U(±1/sqrt(fan_in)).
        for w, b, fan_in in ((self.w1, self.b1, user_dim), (self.w2, self.b2, hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @property
    def n_gates(self) -> int:
        return self._n_gates

    @torch.no_grad()
    def standardize_inputs(self, user_embeddings: torch.Tensor) -> None:
        """Freeze ``μ`` = the mean of ``user_embeddings`` ``[U, d]`` and ``σ`` = the RMS of
        their centred coordinates; the gate then reads ``(e − μ)/σ``.

        Why: the gate's first layer is initialised for inputs of unit scale, but GNN
        embeddings are L2-normalised and, on data where users mostly agree, all point
        almost the same way (mean pairwise cosine ~0.98 on real crowd judgments): the
        gate then sees one input for everyone and routes every user to one expert. One
        shift and one scalar keep the embedding geometry (no per-dimension whitening)."""
        if self.input_shift is None:
            raise RuntimeError("this gate reads raw embeddings (reward.gate_input: raw)")
        e = user_embeddings.detach().to(self.input_shift.device, torch.float32)
        mu = e.mean(0)
        rms = (e - mu).square().mean().sqrt()
        self.input_shift.copy_(mu)
        self.input_scale.copy_(1.0 / rms.clamp(min=1e-8))

    def logits(self, user_emb: torch.Tensor) -> torch.Tensor:
        # at least fp32 (fp64 stays fp64, which the exactness tests use)
        dt = torch.promote_types(torch.float32, self.w1.dtype)
        with torch.autocast(device_type=user_emb.device.type, enabled=False):
            user_emb = user_emb.to(dt)
            if self.input_shift is not None:
                user_emb = (user_emb - self.input_shift.to(dt)) * self.input_scale.to(dt)
            h = torch.einsum("bd,gdh->gbh", user_emb, self.w1.to(dt)) + self.b1.to(dt)[:, None]
            z = torch.einsum("gbh,ghm->gbm", torch.relu(h), self.w2.to(dt))
            return z + self.b2.to(dt)[:, None]

    def forward(self, user_emb: torch.Tensor) -> torch.Tensor:
        """Logits ``z`` ``[G, B, M]`` (no noise); the only place the parameters are read."""
        return self.logits(user_emb)

    def route(
        self,
        user_emb: torch.Tensor,
        *,
        top_k: int,
        temperature: float,
        noise: float | torch.Tensor,
        squared: bool = False,
    ) -> GateOutput:
        """``w_i = softmax(z/τ)_i`` if ``i`` is among the top-k of ``z`` (+noise), else 0.

        ``noise``: a std (fresh Gaussian draw) or the exact noise tensor ``[G, B, M]`` to
        add (replays a forward's routing during gradient-checkpoint recompute)."""
        d = self.user_dim
        if user_emb.dim() != 2 or user_emb.shape[1] != d:
            raise ValueError(f"user_emb: expected shape [B, {d}], got {tuple(user_emb.shape)}")
        z = self(user_emb)  # through __call__: ZeRO-3 gathers/re-gathers w1..b2 around it
        drawn = None
        if isinstance(noise, torch.Tensor):
            drawn = noise
        elif noise > 0:
            drawn = noise * torch.randn_like(z)
        if drawn is not None:
            z = z + drawn
        probs = torch.softmax(z / temperature, dim=-1)
        top_p, top_idx = probs.topk(top_k, dim=-1)
        applied = top_p * top_p if squared else top_p
        weights = torch.zeros_like(probs).scatter(-1, top_idx, applied)
        m = probs.shape[-1]
        # Switch Transformer: f_i = share of top-k assignments to i, P_i = mean prob of i.
        assign = torch.zeros_like(probs).scatter(-1, top_idx, 1.0) / top_k
        balance = m * (assign.mean(1) * probs.mean(1)).sum(-1).mean()
        return GateOutput(z, probs, weights, top_idx, balance, drawn)


class RouteContext:
    """Per-forward routing state shared by all MoLE layers of ONE model.

    Why a context object rather than per-layer attributes set in a loop (official code):
    the model computes the gate ONCE per forward and stores one ``[G, N, E·r]`` scale
    tensor here; every wrapped layer holds a reference to the same context and reads its
    gate row ``gate_index``. ``lock`` (re-entrant) is held by the model for the whole
    set-route + forward, so two threads sharing one model (e.g. a threaded server
    replica) never see each other's routes.

    Gradient checkpointing: the route stays set after the forward, so a recomputation
    during backward sees the same route (same gate, same noise). Non-reentrant
    checkpointing replays the forward's ops, the cached graph-attached scale included.

    REENTRANT checkpointing (``reentrant``) back-propagates every recomputed segment in a
    graph task of its own, so the gate must not be part of the recomputation: a parameter
    reached from k graph tasks gets k gradient hooks per step, and DeepSpeed ZeRO-2/3
    reduce a parameter's gradient once per hook ("Gradient computed twice", the ZeRO-3
    ``params_in_bucket`` ds_id assertion; deepspeedai/DeepSpeed#988, #2103). So a layer
    recomputed during backward reads a detached LEAF copy ``ŝ`` of the scale (no gate
    parameter in the segment's graph), ``ŝ.grad`` collects ``∂L/∂s`` from that segment,
    and a :class:`RouteSink` placed on the input of every checkpointed block hands the
    collected ``Σ ∂L/∂ŝ`` to the real scale in the OUTER graph, where the gate (and a
    ``no_gnn`` user table) then back-propagates exactly once::

        outer graph:  e ─gate─> s ──────────────┬─────────────┐
                      x ──> RouteSink(x, s) ──> ckpt(block 1) ──> RouteSink ──> ckpt(block 2) ...
        backward:     ckpt(block k) recomputes with ŝ = s.detach() → ŝ.grad; then
                      RouteSink_k.backward returns (∂L/∂x, Σ ŝ.grad) → s → gate, once.

    A sink's backward runs after the backward of the segment it feeds, and the first
    block's sink runs last, so every leaf is collected; :meth:`check_collected` (queued at
    the end of the backward) raises instead of dropping gate gradients if one was not.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.scale: torch.Tensor | None = None  # [G, N, E·r]
        # set per forward by MoLEModel when HF reentrant checkpointing is on
        self.reentrant = False
        self.pending: list[tuple[int, torch.Tensor]] = []  # (gate_index, leaf ŝ_g) per read
        self._check_queued = False

    def set(self, scale: torch.Tensor | None) -> None:
        self.scale = scale
        self.pending, self._check_queued = [], False

    def read(self, gate_index: int, n_rows: int, where: str) -> torch.Tensor:
        if self.scale is None:
            raise RuntimeError(
                f"MoLE layer {where!r} called without a route: call the MoLE model with "
                "user_emb=... (or inside MoLEModel.routed(...))"
            )
        if self.scale.shape[1] != n_rows:
            raise RuntimeError(
                f"MoLE layer {where!r}: route set for {self.scale.shape[1]} rows but the input "
                f"has {n_rows}"
            )
        scale = self.scale[gate_index]
        if (
            self.reentrant
            and self.scale.requires_grad
            and torch._C._current_graph_task_id() != -1  # recomputing inside a backward
        ):
            leaf = scale.detach().requires_grad_()
            self.pending.append((gate_index, leaf))
            if not self._check_queued:
                torch.autograd.Variable._execution_engine.queue_callback(self.check_collected)
                self._check_queued = True
            return leaf
        return scale

    def collect_grad(
        self, spec: tuple[torch.Size, torch.dtype, torch.device]
    ) -> torch.Tensor | None:
        """``Σ ∂L/∂ŝ`` over the leaves read since the last collection, as a tensor of the
        scale's ``(shape, dtype, device)`` (None when none got a gradient); clears them."""
        grad = None
        for g, leaf in self.pending:
            if leaf.grad is None:
                continue
            if grad is None:
                grad = torch.zeros(spec[0], dtype=spec[1], device=spec[2])
            grad[g] += leaf.grad
        self.pending = []
        return grad

    def check_collected(self) -> None:
        """End-of-backward check: every recomputed read was collected by a sink."""
        self._check_queued = False
        lost = sum(leaf.grad is not None for _, leaf in self.pending)
        self.pending = []
        if lost:
            raise RuntimeError(
                f"MoLE gate gradients of {lost} recomputed layer reads were not collected: "
                "with reentrant gradient checkpointing the hidden states must enter each "
                "checkpointed block as a positional argument (MoLEModel attaches a RouteSink "
                "to the first floating-point one)"
            )


class RouteSink(torch.autograd.Function):
    """Identity on the hidden states ``x`` whose backward also returns the collected
    ``Σ ∂L/∂ŝ`` as the gradient of the route scale ``s`` (see :class:`RouteContext`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, route: RouteContext) -> torch.Tensor:
        ctx.route, ctx.spec = route, (scale.shape, scale.dtype, scale.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        return grad_x, ctx.route.collect_grad(ctx.spec), None


def expand_scale(weights: torch.Tensor, rank: int, shared: bool = True) -> torch.Tensor:
    """``[..., M]`` gate weights → ``[..., (M+1)·r]`` block scales ``[1_r, w_1 1_r, ...]``."""
    w = weights.repeat_interleave(rank, dim=-1)
    if not shared:
        return w
    ones = torch.ones(*weights.shape[:-1], rank, dtype=w.dtype, device=w.device)
    return torch.cat([ones, w], dim=-1)


class MoLELinear(nn.Module):
    """``y = W0 x + (α/r) B (s_u ⊙ A dropout(x))`` with stacked experts (module docstring).

    ``num_experts = 0`` makes this a plain LoRA of rank ``r`` (no route needed).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        rank: int,
        num_experts: int,
        alpha: float,
        dropout: float,
        route: RouteContext | None,
        gate_index: int = 0,
        name: str = "",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{name}: MoLE wraps nn.Linear only, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.rank, self.num_experts, self.scaling = rank, num_experts, alpha / rank
        self.name, self.gate_index = name, gate_index
        self.route = route  # plain object shared by all layers of the model (not a submodule)
        if num_experts > 0 and route is None:
            raise ValueError(f"{name}: a RouteContext is required when num_experts > 0")
        e = num_experts + 1
        dev = base_layer.weight.device
        self.lora_A = nn.Parameter(
            torch.empty(e * rank, base_layer.in_features, dtype=dtype, device=dev)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base_layer.out_features, e * rank, dtype=dtype, device=dev)
        )
        # peft's init: A ~ kaiming_uniform(a=√5) (fan_in = d_in for every block), B = 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # some HF code reads .weight of projections
        return self.base_layer.weight

    def block(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_i [r, d_in], B_i [d_out, r]) of block ``i`` (0 = shared, 1..M = experts)."""
        sl = slice(i * self.rank, (i + 1) * self.rank)
        return self.lora_A[sl], self.lora_B[:, sl]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        h = F.linear(self.lora_dropout(x.to(self.lora_A.dtype)), self.lora_A)  # [N, ..., E·r]
        # α/r and the gate scale the narrow [.., E·r] activations, never the wide output
        # (one pass fewer over [N, ..., d_out] per layer; measured on GPU, benchmarks/mole.py)
        if self.num_experts > 0:
            s = self.route.read(self.gate_index, x.shape[0], self.name)  # [N, E·r]
            s = s.view(s.shape[0], *([1] * (h.dim() - 2)), s.shape[1])
            h = h * (s * self.scaling).to(h.dtype)
        else:
            h = h * self.scaling
        if h.dtype == out.dtype:
            # out + h Bᵀ in one GEMM whose epilogue adds ``out`` (no separate add pass)
            flat = torch.addmm(
                out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.t()
            )
            return flat.view(out.shape)
        return out + F.linear(h, self.lora_B).to(out.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"experts={self.num_experts}, gate={self.gate_index}"
        )
