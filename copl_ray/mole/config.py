"""Configuration of a Mixture of LoRA Experts (MoLE) adapter, peft-style.

For every wrapped ``nn.Linear`` ``W0`` and a user ``u`` with embedding ``e_u``::

    W_u = W0 + ΔW_u,   ΔW_u = (α/r) (B_s A_s + Σ_{i=1..M} w_i(e_u) B_i A_i)

one shared LoRA (``B_s A_s``) plus ``M`` experts of rank ``r``; the gate ``w(e_u)`` is
``top-k(softmax(g(e_u)/τ))`` with ``g`` a 2-layer MLP. ``M = 0`` is a plain LoRA of
rank ``r`` through the same code (the Uniform / w/o-MoLE baselines).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, get_args

from copl_ray.config import (
    NONNEG,
    ConfigError,
    DType,
    GateInput,
    RewardConfig,
    check_fields,
    check_names,
    check_top_k,
    setting,
)

_REWARD_FIELDS = {f.name: f for f in dataclasses.fields(RewardConfig)}
# checked only with a gate (num_experts > 0): a plain LoRA ignores them
_GATE_FIELDS = frozenset({"gate_hidden", "top_k", "temperature", "gate_noise", "load_balance_coef"})


def _like(name: str, default: Any, help: str) -> Any:
    """A field with the range of ``RewardConfig.<name>``: the config field owns the rule,
    this dataclass (built from it, or in code by tests and benchmarks) re-applies it."""
    return setting(default, help, _REWARD_FIELDS[name].metadata.get("bounds"))


@dataclass
class MoLEConfig:
    target_modules: list[str] = setting(
        help="names (suffixes) of the nn.Linear modules wrapped",
        factory=lambda: ["q_proj", "v_proj"],
    )
    num_experts: int = setting(8, "M (0 = plain LoRA, no gate)", NONNEG)
    rank: int = _like("rank", 8, "r of the shared LoRA and of every expert")
    alpha: float = _like("alpha", 16.0, "scaling α/r")
    dropout: float = _like("dropout", 0.1, "on the adapter input")
    user_dim: int | None = setting(None, "gate input size; required when num_experts > 0")
    gate_hidden: int = _like("gate_hidden", 256, "hidden width of the gate MLP")
    top_k: int = _like("top_k", 1, "experts per route (<= num_experts)")
    temperature: float = _like("temperature", 1.0, "softmax temperature τ of the gate")
    gate_noise: float = _like("gate_noise", 0.1, "std of the logit noise while training (0 = off)")
    gate_per_module: bool = setting(False, "official code: one gate per wrapped module")
    gate_squared: bool = setting(False, "official bug B3: expert scaled by p² instead of p")
    load_balance_coef: float = _like(
        "load_balance_coef", 0.0, "Switch loss M·Σ f_i P_i, added via model.aux_loss"
    )
    gate_input: str = setting(
        "raw",
        'gate input: "raw" e_u, or "standardized" (e_u − μ)/σ with μ, σ frozen from the seen '
        "users (MoLEGate.standardize_inputs): users that differ by little still route apart",
    )
    adapter_dtype: str = setting("float32", "adapters/gates keep this dtype under a bf16 backbone")
    prefix: str = setting("reward.", "how error messages name the fields (config section)")

    def __post_init__(self) -> None:
        self.validate()

    def _err(self, name: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.prefix}{name}: {msg}")

    def validate(self) -> None:
        """The config's ranges (copl_ray/config.py, the fields' ``bounds``) and rules, for a
        MoLEConfig built in code; only what a loaded config cannot get wrong is added here
        (``num_experts=0`` = plain LoRA, ``user_dim`` with a gate)."""
        if not all(isinstance(t, str) for t in self.target_modules):
            raise self._err(
                "target_modules", f"expected a non-empty list of names, got {self.target_modules!r}"
            )
        check_names(f"{self.prefix}target_modules", self.target_modules)
        if self.adapter_dtype not in get_args(DType):
            raise self._err(
                "adapter_dtype",
                f"expected one of {list(get_args(DType))}, got {self.adapter_dtype!r}",
            )
        if self.gate_input not in get_args(GateInput):
            choices = " or ".join(repr(c) for c in get_args(GateInput))
            raise self._err("gate_input", f"expected {choices}, got {self.gate_input!r}")
        check_fields(self, self.prefix, skip=_GATE_FIELDS if self.num_experts == 0 else frozenset())
        if self.num_experts == 0:
            return
        if self.user_dim is None or self.user_dim < 1:
            raise self._err("user_dim", f"must be >= 1 when num_experts > 0, got {self.user_dim}")
        check_top_k(self.top_k, self.num_experts, self.prefix)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_reward_config(
        cls, reward_cfg: Any, user_dim: int | None, **overrides: Any
    ) -> MoLEConfig:
        """Fields of ``copl_ray.config.RewardConfig`` → MoLEConfig; ``overrides`` win."""
        values = dict(
            target_modules=list(reward_cfg.target_modules),
            num_experts=reward_cfg.num_experts,
            rank=reward_cfg.rank,
            alpha=reward_cfg.alpha,
            dropout=reward_cfg.dropout,
            user_dim=user_dim,
            gate_hidden=reward_cfg.gate_hidden,
            top_k=reward_cfg.top_k,
            temperature=reward_cfg.temperature,
            gate_noise=reward_cfg.gate_noise,
            gate_per_module=reward_cfg.gate_per_module,
            gate_squared=reward_cfg.gate_squared,
            load_balance_coef=reward_cfg.load_balance_coef,
            gate_input=getattr(reward_cfg, "gate_input", "raw"),
            adapter_dtype=getattr(reward_cfg, "adapter_dtype", "float32"),
        )
        values.update(overrides)
        return cls(**values)
