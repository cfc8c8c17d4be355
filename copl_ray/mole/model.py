"""MoLEModel: inject MoLE layers into named ``nn.Linear`` modules of any model, route users.

::

    mole = MoLEModel(backbone, MoLEConfig(target_modules=["q_proj", "v_proj"], user_dim=64))
    out = mole(input_ids=ids, attention_mask=mask, user_emb=e)   # e: [B, d], ids: [k·B, T]

Routing. The gate runs once per forward on the ``B`` user embeddings; for an input of
``N = k·B`` rows the per-user scales are tiled ``k`` times (row ``j`` uses user
``j mod B``), so chosen and rejected of a pair laid out as ``[chosen_1..B, rejected_1..B]``
share one gate evaluation — and therefore one noise draw (the official code draws the noise
per row, so a pair's two responses could be routed apart; docs/reference-code.md,
"Reward-model routing").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from copl_ray.config import ConfigError
from copl_ray.mole.config import MoLEConfig
from copl_ray.mole.layer import (
    GateOutput,
    MoLEGate,
    MoLELinear,
    RouteContext,
    RouteSink,
    expand_scale,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_target_linears(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of modules whose last name component (or full dotted name) is in ``targets``."""
    names = []
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            if not isinstance(module, nn.Linear):
                raise ConfigError(
                    f"reward.target_modules: {name!r} is a {type(module).__name__}, "
                    "not an nn.Linear"
                )
            names.append(name)
    if not names:
        linears = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"reward.target_modules: none of {targets} matches a module of "
            f"{type(model).__name__}; its nn.Linear names are {linears}"
        )
    return names


class MoLEModel(nn.Module):
    """Wraps ``model`` in place: targets become :class:`MoLELinear`, base weights frozen.

    Attributes: ``gate`` (None when ``num_experts == 0``), ``route`` (shared context),
    ``last_gate`` (the last :class:`GateOutput`, for usage logging) and ``aux_loss``
    (``load_balance_coef · M·Σ f_i P_i`` of the last forward; 0 when the coef is 0).
    """

    def __init__(self, model: nn.Module, cfg: MoLEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        self.route = RouteContext()
        self.module_names = find_target_linears(model, cfg.target_modules)
        dtype = _DTYPES[cfg.adapter_dtype]
        for i, name in enumerate(self.module_names):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = MoLELinear(
                getattr(parent, child),
                rank=cfg.rank,
                num_experts=cfg.num_experts,
                alpha=cfg.alpha,
                dropout=cfg.dropout,
                route=self.route,
                gate_index=i if cfg.gate_per_module else 0,
                name=name,
                dtype=dtype,
            )
            setattr(parent, child, layer)
        self.gate: MoLEGate | None = None
        if cfg.num_experts > 0:
            n_gates = len(self.module_names) if cfg.gate_per_module else 1
            dev = next(model.parameters()).device
            self.gate = MoLEGate(
                cfg.user_dim,
                cfg.gate_hidden,
                cfg.num_experts,
                n_gates,
                standardized=cfg.gate_input == "standardized",
            ).to(dev)
        self.last_gate: GateOutput | None = None
        self._sink_hooks: dict[nn.Module, Any] = {}  # checkpointed block -> hook handle
        self.aux_loss: torch.Tensor = torch.zeros(())
        # Dense-to-sparse warm-up (set by the trainer, never saved): while True, training
        # forwards route every user through ALL experts with weights softmax(z/τ) and no
        # noise, so every gate logit gets a gradient. Why: with top-1 only the chosen
        # expert's logit learns, and from a gate init whose routes cut across the user
        # groups the logit margins (~0.05) stay under the noise (0.1): the experts never
        # specialise and routing collapses (measured on the tiny 2-group run).
        self.dense_routing = False

    # ------------------------------------------------------------------ routing
    def mole_layers(self) -> Iterator[tuple[str, MoLELinear]]:
        for name in self.module_names:
            yield name, self.model.get_submodule(name)

    def compute_gate(
        self, user_emb: torch.Tensor, *, noise: bool | torch.Tensor | None = None
    ) -> GateOutput:
        """Gate for ``B`` users. ``noise``: on/off (default ``self.training``; std
        cfg.gate_noise) or the exact noise tensor to replay."""
        if self.gate is None:
            raise RuntimeError("this MoLE model has no experts (num_experts=0), hence no gate")
        c = self.cfg
        dense = self.dense_routing and self.training
        if not isinstance(noise, torch.Tensor):
            use_noise = self.training if noise is None else noise
            noise = c.gate_noise if use_noise and not dense else 0.0
        return self.gate.route(
            user_emb,
            top_k=c.num_experts if dense else c.top_k,
            temperature=c.temperature,
            noise=noise,
            squared=c.gate_squared,
        )

    def gate_weights(self, user_emb: torch.Tensor) -> torch.Tensor:
        """Applied expert weights without noise: ``[B, M]`` (global) or ``[G, B, M]``."""
        w = self.compute_gate(user_emb, noise=False).weights
        return w[0] if w.shape[0] == 1 else w

    @contextmanager
    def routed(
        self, user_emb: torch.Tensor | Callable[[], torch.Tensor] | None, n_rows: int
    ) -> Iterator[GateOutput | None]:
        """Hold the route lock, compute the gate once and route ``n_rows = k·B`` input rows.

        ``user_emb`` may also be a zero-argument function returning it (called once).
        Under reentrant gradient checkpointing the gate stays out of the recomputation:
        every checkpointed block gets a :class:`RouteSink` on its input (RouteContext)."""
        with self.route.lock:
            gate = None
            blocks = self._reentrant_blocks()
            self.route.reentrant = bool(blocks)
            self.route.set(None)
            if self.gate is not None:
                if user_emb is None:
                    raise ValueError("user_emb is required: this MoLE model has experts")
                emb = user_emb() if callable(user_emb) else user_emb
                b = emb.shape[0]
                if b == 0 or n_rows % b:
                    raise ValueError(
                        f"input has {n_rows} rows, not a multiple of the {b} user embeddings"
                    )
                gate = self.compute_gate(emb)
                self.route.set(expand_scale(gate.weights, self.cfg.rank).repeat(1, n_rows // b, 1))
                self.last_gate = gate
                self.aux_loss = self.cfg.load_balance_coef * gate.balance_loss
                for block in blocks:
                    if block not in self._sink_hooks:
                        self._sink_hooks[block] = block.register_forward_pre_hook(
                            self._attach_sink, with_kwargs=True
                        )
            yield gate

    def _attach_sink(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        """Forward pre-hook of a checkpointed block: its hidden-state input (the first
        floating-point positional argument; reentrant checkpointing back-propagates into
        positional tensors only) goes through a :class:`RouteSink` tied to the route."""
        scale = self.route.scale
        if not (self.route.reentrant and scale is not None and scale.requires_grad):
            return None
        if torch._C._current_graph_task_id() != -1 or not torch.is_grad_enabled():
            return None  # a recomputation (legacy checkpointing calls hooks inside) or no_grad
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                sunk = RouteSink.apply(a, scale, self.route)
                return (*args[:i], sunk, *args[i + 1 :]), kwargs
        return None

    def _reentrant_blocks(self) -> list[nn.Module]:
        """Blocks under HF gradient checkpointing with ``use_reentrant=True`` (empty when
        off, in eval, under no_grad or with non-reentrant checkpointing)."""
        if not (self.training and torch.is_grad_enabled()):
            return []
        blocks = []
        for module in self.model.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if func is not None and getattr(module, "gradient_checkpointing", False):
                if not getattr(func, "keywords", {}).get("use_reentrant", True):
                    return []
                if module is not self.model:
                    blocks.append(module)
        return blocks

    def forward(self, *args: Any, user_emb: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with every wrapped layer routed by ``user_emb``."""
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is None:
            raise ValueError("MoLEModel.forward needs a tensor input to size the route")
        with self.routed(user_emb, first.shape[0]):
            return self.model(*args, **kwargs)

    def expert_usage(self) -> torch.Tensor | None:
        """[G, M] users per expert in the last forward (None before any routed forward)."""
        return None if self.last_gate is None else self.last_gate.usage()

    # ------------------------------------------------------------------ export
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable MoLE tensors (adapters + gate), keyed by their names in this module."""
        return {n: p for n, p in self.named_parameters() if "lora_" in n or n.startswith("gate.")}

    @torch.no_grad()
    def user_lora(self, user_emb: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """For ONE user: per wrapped module an ordinary LoRA ``(A [R, d_in], B [d_out, R])``
        with ``ΔW = (α/r)·B A`` and ``R = (1 + k)·r`` (shared + the k routed experts, gate
        weights folded into B). Exact: the unrouted blocks have weight 0."""
        if user_emb.dim() == 1:
            user_emb = user_emb[None]
        if user_emb.shape[0] != 1:
            raise ValueError(f"user_lora exports one user, got {user_emb.shape[0]} embeddings")
        gate = self.compute_gate(user_emb, noise=False) if self.gate is not None else None
        out = {}
        for name, layer in self.mole_layers():
            a_s, b_s = layer.block(0)
            a_parts, b_parts = [a_s], [b_s]
            if gate is not None:
                g = layer.gate_index
                for e in gate.top_idx[g, 0].tolist():
                    a_e, b_e = layer.block(e + 1)
                    a_parts.append(a_e)
                    b_parts.append(b_e * gate.weights[g, 0, e].to(b_e.dtype))
            out[name] = (torch.cat(a_parts, 0).clone(), torch.cat(b_parts, 1).clone())
        return out
