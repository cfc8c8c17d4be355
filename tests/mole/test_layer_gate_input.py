"""Gate input standardization (``reward.gate_input: standardized``).

Known truth: users whose L2-normalised embeddings differ by a hair (two camps 0.02 apart on
one coordinate, cosine ~0.9998, as crowd workers who mostly agree embed) give a raw gate
nearly one input; standardized, the gate reads the camps as ±1 on that coordinate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from copl_ray.mole.layer import MoLEGate


def near_identical_users(n: int = 40, d: int = 8) -> torch.Tensor:
    base = torch.zeros(n, d)
    base[:, 0] = 1.0
    base[: n // 2, 1], base[n // 2 :, 1] = 0.01, -0.01  # two camps, 0.02 apart
    return F.normalize(base, dim=-1)


def test_standardized_gate_reads_centred_unit_rms_inputs():
    users = near_identical_users()
    gate = MoLEGate(8, 16, 4, standardized=True)
    gate.standardize_inputs(users)
    z = (users - users.mean(0)) * gate.input_scale
    assert z.mean(0).abs().max() < 1e-6
    assert z.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    # the logits are the raw MLP applied to the standardized input, exactly
    raw = MoLEGate(8, 16, 4)
    raw.load_state_dict({k: v for k, v in gate.state_dict().items() if not k.startswith("input_")})
    torch.testing.assert_close(gate.logits(users), raw.logits(z))
    # the camps now sit at ±~1 on coordinate 1: the gate's input separates them by ~2
    assert (z[:20, 1].mean() - z[20:, 1].mean()).item() > 1.9


def test_standardized_gate_separates_what_the_raw_gate_cannot():
    """Same MLP weights: the spread of logits across users is ~50x wider standardized."""
    torch.manual_seed(0)
    users = near_identical_users()
    std_gate, raw_gate = MoLEGate(8, 16, 4, standardized=True), MoLEGate(8, 16, 4)
    raw_gate.load_state_dict({k: v for k, v in std_gate.state_dict().items() if "input_" not in k})
    std_gate.standardize_inputs(users)
    spread = lambda g: g.logits(users)[0].std(0).mean().item()  # noqa: E731
    assert spread(std_gate) > 20 * spread(raw_gate)


def test_raw_gate_has_no_buffers_and_refuses_standardizing():
    gate = MoLEGate(8, 16, 4)
    assert not any(k.startswith("input_") for k in gate.state_dict())
    with pytest.raises(RuntimeError, match="gate_input: raw"):
        gate.standardize_inputs(near_identical_users())


def test_mole_config_names_a_bad_gate_input():
    from copl_ray.mole import MoLEConfig

    with pytest.raises(ValueError, match=r"reward.gate_input: expected 'raw' or 'standardized'"):
        MoLEConfig(user_dim=8, gate_input="whitened")
