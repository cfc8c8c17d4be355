"""copl_ray/mole/model.py: MoLEModel wraps the named nn.Linear modules (and only those),
freezes the backbone, and ``routed()`` sets per-sample gate scales tiled over ``k·B``
rows. A one-linear backbone with a gate forced one-hot gives outputs computable by hand:

    y = W0 x + b + (α/r) B (s_u ⊙ A x),   s_u = [1_r, w_1 1_r, ..., w_M 1_r]
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from copl_ray.config import ConfigError
from copl_ray.mole import MoLEConfig, MoLEModel
from copl_ray.mole.layer import MoLELinear
from copl_ray.mole.model import find_target_linears


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.head = nn.Linear(2, 2)  # not targeted
        self.norm = nn.LayerNorm(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def one_hot_model() -> MoLEModel:
    """r = 1, M = 2, α = 2 (scaling 2); W0 = 0, b = 0; A = I; gate z = 100·relu(e) so the
    user e = (1, 0) routes to expert 0 with weight 1 and e = (0, 1) to expert 1."""
    cfg = MoLEConfig(
        target_modules=["proj"],
        num_experts=2,
        rank=1,
        alpha=2.0,
        dropout=0.0,
        user_dim=2,
        gate_hidden=2,
        top_k=1,
    )
    m = MoLEModel(Tiny(), cfg).eval()
    with torch.no_grad():
        layer = m.model.proj
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A.copy_(torch.eye(3))
        layer.lora_B.copy_(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]))
        m.gate.w1.copy_(torch.eye(2)[None])
        m.gate.b1.zero_()
        m.gate.w2.copy_(100 * torch.eye(2)[None])
        m.gate.b2.zero_()
    return m


USERS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_wraps_only_the_named_linears_and_freezes_the_backbone():
    m = one_hot_model()
    assert m.module_names == ["proj"]
    assert isinstance(m.model.proj, MoLELinear) and isinstance(m.model.head, nn.Linear)
    assert not any(p.requires_grad for p in m.model.proj.base_layer.parameters())
    assert not m.model.head.weight.requires_grad
    assert sorted(m.adapter_state_dict()) == [
        "gate.b1",
        "gate.b2",
        "gate.w1",
        "gate.w2",
        "model.proj.lora_A",
        "model.proj.lora_B",
    ]


def test_target_errors_name_the_module():
    with pytest.raises(ConfigError, match=r"^reward.target_modules: 'norm' is a LayerNorm"):
        find_target_linears(Tiny(), ["norm"])
    with pytest.raises(ConfigError, match=r"its nn.Linear names are \['head', 'proj'\]"):
        find_target_linears(Tiny(), ["q_proj"])
    assert find_target_linears(Tiny(), ["proj", "head"]) == ["proj", "head"]


def test_one_hot_gate_output_by_hand():
    m = one_hot_model()
    x = torch.ones(2, 3)
    with torch.no_grad():
        y = m(x, user_emb=USERS)
    # user 0: s = [1, 1, 0] -> B s = (3, 30); user 1: s = [1, 0, 1] -> B s = (4, 40); ×2
    assert y.tolist() == [[6.0, 60.0], [8.0, 80.0]]
    assert m.gate_weights(USERS).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert m.expert_usage().tolist() == [[1.0, 1.0]]


def test_routed_tiles_users_over_k_times_b_rows():
    """Rows ``[chosen_1..B, rejected_1..B]``: row ``j`` uses user ``j mod B``."""
    m = one_hot_model()
    with torch.no_grad(), m.routed(lambda: USERS, 4) as gate:
        assert gate.top_idx[0].flatten().tolist() == [0, 1]
        # [G, N, (M+1)·r] scales: [1, w_0, w_1] per row
        assert m.route.scale[0].tolist() == [[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1]]
        x = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 1.0], [0, 1.0, 1.0]])
        y = m.model(x)
    assert y.tolist() == [[2.0, 20.0], [2.0, 20.0], [4.0, 40.0], [6.0, 60.0]]


def test_routed_refuses_bad_inputs():
    m = one_hot_model()
    with pytest.raises(ValueError, match="3 rows, not a multiple of the 2 user embeddings"):
        with m.routed(USERS, 3):
            pass
    with pytest.raises(ValueError, match="user_emb is required"):
        with m.routed(None, 2):
            pass


def test_plain_lora_has_no_gate_and_no_route():
    """``num_experts = 0``: y = W0 x + b + (α/r) B A x for every row, no user input."""
    m = MoLEModel(Tiny(), MoLEConfig(target_modules=["proj"], num_experts=0, rank=1, alpha=3.0))
    m.eval()
    with torch.no_grad():
        layer = m.model.proj
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.copy_(torch.tensor([1.0, -1.0]))
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0], [2.0]]))
        y = m(torch.tensor([[1.0, 2.0, 3.0]]))
    assert m.gate is None and y.tolist() == [[19.0, 35.0]]  # 3·6·(1, 2) + (1, −1)
    with pytest.raises(RuntimeError, match="no experts"):
        m.compute_gate(USERS)
