"""Mixture of LoRA Experts (MoLE) gated by a user embedding — pure torch, no Ray."""

from copl_ray.mole.config import MoLEConfig
from copl_ray.mole.layer import GateOutput, MoLEGate, MoLELinear, RouteContext, expand_scale
from copl_ray.mole.model import MoLEModel, find_target_linears

__all__ = [
    "GateOutput",
    "MoLEConfig",
    "MoLEGate",
    "MoLELinear",
    "MoLEModel",
    "RouteContext",
    "expand_scale",
    "find_target_linears",
]
