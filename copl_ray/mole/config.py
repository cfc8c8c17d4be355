"""Configuration of a Mixture of LoRA Experts (MoLE) adapter, peft-style.

For every wrapped ``nn.Linear`` ``W0`` and a user ``u`` with embedding ``e_u``::

    W_u = W0 + ΔW_u,   ΔW_u = (α/r) (B_s A_s + Σ_{i=1..M} w_i(e_u) B_i A_i)

one shared LoRA (``B_s A_s``) plus ``M`` experts of rank ``r``; the gate ``w(e_u)`` is
``top-k(softmax(g(e_u)/τ))`` with ``g`` a 2-layer MLP. ``M = 0`` is a plain LoRA of
rank ``r`` through the same code (the Uniform / w/o-MoLE baselines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class MoLEConfig:
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    num_experts: int = 8  # M (0 = plain LoRA, no gate)
    rank: int = 8  # r of the shared LoRA and of every expert
    alpha: float = 16.0  # scaling α/r
    dropout: float = 0.1  # on the adapter input
    user_dim: int | None = None  # gate input size; required when num_experts > 0
    gate_hidden: int = 256
    top_k: int = 1
    temperature: float = 1.0
    gate_noise: float = 0.1  # std of the logit noise while training (0 = off)
    gate_per_module: bool = False  # official code: one gate per wrapped module
    gate_squared: bool = False  # official bug B3: expert scaled by p² instead of p
    load_balance_coef: float = 0.0  # Switch loss M·Σ f_i P_i, added via model.aux_loss
    # gate input: "raw" e_u, or "standardized" (e_u − μ)/σ with μ, σ frozen from the seen
    # users (MoLEGate.standardize_inputs): users that differ by little still route apart
    gate_input: str = "raw"
    adapter_dtype: str = "float32"  # adapters/gates keep this dtype under a bf16 backbone
    prefix: str = "reward."  # how error messages name the fields (config section)

    def __post_init__(self) -> None:
        self.validate()

    def _err(self, name: str, msg: str) -> ValueError:
        return ValueError(f"{self.prefix}{name}: {msg}")

    def validate(self) -> None:
        if not self.target_modules or not all(isinstance(t, str) for t in self.target_modules):
            raise self._err(
                "target_modules", f"expected a non-empty list of names, got {self.target_modules!r}"
            )
        if self.num_experts < 0:
            raise self._err("num_experts", f"must be >= 0, got {self.num_experts}")
        if self.rank < 1:
            raise self._err("rank", f"must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise self._err("alpha", f"must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise self._err("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.adapter_dtype not in _DTYPES:
            raise self._err(
                "adapter_dtype", f"expected one of {list(_DTYPES)}, got {self.adapter_dtype!r}"
            )
        if self.gate_input not in ("raw", "standardized"):
            raise self._err(
                "gate_input", f"expected 'raw' or 'standardized', got {self.gate_input!r}"
            )
        if self.num_experts == 0:
            return
        if self.user_dim is None or self.user_dim < 1:
            raise self._err("user_dim", f"must be >= 1 when num_experts > 0, got {self.user_dim}")
        if self.gate_hidden < 1:
            raise self._err("gate_hidden", f"must be >= 1, got {self.gate_hidden}")
        if not 1 <= self.top_k <= self.num_experts:
            raise self._err(
                "top_k", f"must be in [1, num_experts={self.num_experts}], got {self.top_k}"
            )
        if self.temperature <= 0:
            raise self._err("temperature", f"must be > 0, got {self.temperature}")
        if self.gate_noise < 0:
            raise self._err("gate_noise", f"must be >= 0, got {self.gate_noise}")
        if self.load_balance_coef < 0:
            raise self._err("load_balance_coef", f"must be >= 0, got {self.load_balance_coef}")

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
