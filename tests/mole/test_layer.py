"""MoLE layer on a toy MLP: the stacked-dense batch equals the per-sample formula."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from copl_ray.mole import MoLEConfig, MoLEModel


class ToyMLP(nn.Module):
    def __init__(self, d: int = 12, h: int = 20) -> None:
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)
        self.other = nn.Linear(d, d)  # not targeted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.down(torch.tanh(self.up(x))))


def make(seed: int = 0, **kw) -> MoLEModel:
    torch.manual_seed(seed)
    cfg = dict(
        target_modules=["up", "down"],
        num_experts=4,
        rank=3,
        alpha=6.0,
        dropout=0.0,
        user_dim=5,
        gate_hidden=7,
        top_k=1,
        gate_noise=0.0,
    )
    cfg.update(kw)
    m = MoLEModel(ToyMLP(), MoLEConfig(**cfg)).double()
    for _, layer in m.mole_layers():  # B is zero at init: give it values to compare
        nn.init.normal_(layer.lora_B, std=0.3)
    return m


def reference(m: MoLEModel, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Explicit per-sample loop: W_u = W0 + (α/r)(B_s A_s + Σ_i w_i B_i A_i)."""
    w_all = m.compute_gate(e).weights  # [G, B, M]

    def layer(name: str, v: torch.Tensor, b: int) -> torch.Tensor:
        lay = m.model.get_submodule(name)
        a_s, b_s = lay.block(0)
        delta = b_s @ a_s
        for i in range(lay.num_experts):
            a_i, b_i = lay.block(i + 1)
            delta = delta + w_all[lay.gate_index, b, i] * (b_i @ a_i)
        w = lay.base_layer.weight + lay.scaling * delta
        return v @ w.T + lay.base_layer.bias

    outs = []
    for b in range(x.shape[0]):
        h = torch.tanh(layer("up", x[b], b))
        outs.append(m.model.other(layer("down", h, b)))
    return torch.stack(outs)


@pytest.mark.parametrize("per_module", [False, True])
@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("squared", [False, True])
def test_batched_equals_per_sample_formula_with_grads(per_module, top_k, squared):
    m = make(gate_per_module=per_module, top_k=top_k, gate_squared=squared)
    torch.manual_seed(1)
    x = torch.randn(6, 9, 12, dtype=torch.float64)  # [B, T, d]: per-sample, all tokens
    e = torch.randn(6, 5, dtype=torch.float64)
    params = [p for p in m.parameters() if p.requires_grad]
    y = m(x, user_emb=e)
    y_ref = reference(m, x, e)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), params)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any("gate" in n for n in names) and any("lora_A" in n for n in names)
    for n, a, b in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=n)
        if "gate" in n or "lora" in n:
            assert a.abs().sum() > 0, f"{n} gets no gradient"
    # base weights frozen and without gradient
    assert not m.model.up.base_layer.weight.requires_grad
    assert not m.model.other.weight.requires_grad


def test_top1_weights_are_the_max_softmax_and_squared_switch():
    m = make(top_k=1, temperature=0.5)
    e = torch.randn(8, 5, dtype=torch.float64)
    out = m.compute_gate(e)
    p = torch.softmax(m.gate.logits(e) / 0.5, -1)
    assert out.probs.dtype == torch.float64  # never below fp32 (fp64 model here)
    expect = torch.zeros_like(p).scatter(-1, p.argmax(-1, keepdim=True), p.max(-1, True).values)
    torch.testing.assert_close(out.weights.double(), expect, rtol=1e-6, atol=1e-6)
    assert ((out.weights > 0).sum(-1) == 1).all()
    sq = make(top_k=1, temperature=0.5, gate_squared=True).compute_gate(e)
    torch.testing.assert_close(sq.weights, out.weights**2)


def test_duplicated_batch_shares_one_gate_and_noise():
    """[chosen_1..B, rejected_1..B] with B user embeddings: one noisy gate per user."""
    m = make(gate_noise=5.0)  # large noise: independent draws would disagree often
    m.train()
    x = torch.randn(4, 3, 12, dtype=torch.float64)
    e = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(3)
    y = m(torch.cat([x, x]), user_emb=e)
    torch.testing.assert_close(y[:4], y[4:])  # same input, same route, same noise
    s = m.route.scale[0]
    torch.testing.assert_close(s[:4], s[4:])
    with pytest.raises(ValueError, match="multiple"):
        m(torch.randn(5, 3, 12, dtype=torch.float64), user_emb=e)


def test_noise_only_in_training_and_missing_route_errors():
    m = make(gate_noise=1.0)
    e = torch.randn(3, 5, dtype=torch.float64)
    m.eval()
    assert torch.equal(m.compute_gate(e).logits, m.compute_gate(e).logits)
    m.train()
    assert not torch.equal(m.compute_gate(e).logits, m.compute_gate(e).logits)
    fresh = make()
    with pytest.raises(RuntimeError, match="without a route"):
        fresh.model(torch.randn(2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="user_emb is required"):
        fresh(torch.randn(2, 12, dtype=torch.float64))


def test_dense_warmup_routes_through_all_experts_without_noise():
    """While ``dense_routing`` is on, a TRAINING forward weights every expert by softmax(z/τ)
    with no noise (all gate logits get a gradient); eval stays top-k, and so does training
    once the warm-up is over."""
    m = make(gate_noise=1.0, temperature=0.5)
    e = torch.randn(6, 5, dtype=torch.float64)
    m.train()
    m.dense_routing = True
    g = m.compute_gate(e)
    assert g.noise is None
    assert torch.allclose(g.weights, torch.softmax(g.logits / 0.5, -1))
    assert (g.weights > 0).all()
    (g.weights * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    assert m.gate.w2.grad.abs().sum(dim=(0, 1)).gt(0).all()  # every expert's logit learns
    m.eval()
    assert (m.compute_gate(e).weights > 0).sum(-1).eq(1).all()  # eval: top-1 as configured
    m.train()
    m.dense_routing = False
    assert (m.compute_gate(e).weights > 0).sum(-1).eq(1).all()


def test_plain_lora_when_no_experts():
    m = make(num_experts=0, rank=5, user_dim=None)
    assert m.gate is None
    x = torch.randn(2, 12, dtype=torch.float64)
    lay = m.model.up
    w = lay.base_layer.weight + lay.scaling * lay.lora_B @ lay.lora_A
    torch.testing.assert_close(lay(x), x @ w.T + lay.base_layer.bias)
    assert lay.lora_A.shape == (5, 12)
    m(x)  # no user needed


def test_load_balance_loss_and_usage():
    m = make(load_balance_coef=0.5)
    e = torch.randn(32, 5, dtype=torch.float64)
    m(torch.randn(32, 12, dtype=torch.float64), user_emb=e)
    gate = m.last_gate
    # M·Σ f_i P_i is 1 when routing and probabilities are uniform, ≥ 1/… otherwise; check
    # the formula directly and that the coefficient scales it.
    f = torch.bincount(gate.top_idx[0, :, 0], minlength=4).float() / 32
    expect = 4 * (f * gate.probs[0].mean(0)).sum()
    torch.testing.assert_close(gate.balance_loss, expect)
    torch.testing.assert_close(m.aux_loss, 0.5 * expect)
    assert m.aux_loss.requires_grad
    assert m.expert_usage().sum() == 32 and m.expert_usage().shape == (1, 4)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"reward\.top_k"):
        MoLEConfig(num_experts=2, top_k=3, user_dim=4)
    with pytest.raises(ValueError, match=r"reward\.user_dim"):
        MoLEConfig(num_experts=2)
    with pytest.raises(ValueError, match=r"reward\.target_modules.*nope"):
        MoLEModel(ToyMLP(), MoLEConfig(target_modules=["nope"], num_experts=0))


def test_user_lora_export_is_exact():
    m = make(top_k=2, gate_per_module=True)
    e = torch.randn(1, 5, dtype=torch.float64)
    lora = m.user_lora(e)
    for name, (a, b) in lora.items():
        lay = m.model.get_submodule(name)
        x = torch.randn(3, lay.in_features, dtype=torch.float64)
        assert a.shape[0] == 3 * 3  # (1 + k)·r
        with m.routed(e, 3):
            y = lay(x)
        torch.testing.assert_close(y, lay.base_layer(x) + lay.scaling * (x @ a.T) @ b.T)


class Block(GradientCheckpointingLayer):
    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.up = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.up(x))


class Stack(nn.Module):
    """Three HF-style checkpointable blocks, as a decoder stack calls them."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def checkpointed_stack(seed: int, ckpt: bool) -> MoLEModel:
    torch.manual_seed(seed)
    cfg = MoLEConfig(
        target_modules=["up"], num_experts=3, rank=2, dropout=0.0, user_dim=5, gate_hidden=7
    )
    m = MoLEModel(Stack(), replace(cfg, gate_noise=0.5, load_balance_coef=0.3)).double()
    for _, layer in m.mole_layers():
        nn.init.normal_(layer.lora_B, std=0.3)
    for block in m.model.blocks:  # what transformers' gradient_checkpointing_enable sets
        block.gradient_checkpointing = ckpt
        block._gradient_checkpointing_func = partial(checkpoint, use_reentrant=True)
    return m.train()


def backward_counting_hooks(m: MoLEModel) -> dict[str, int]:
    hooks = {n: 0 for n, p in m.named_parameters() if p.requires_grad}
    for n, p in m.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda _, n=n: hooks.__setitem__(n, hooks[n] + 1))
    x = torch.randn(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()  # as HF's enable_input_require_grads makes the embeddings
    e = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)  # same gate noise in both runs
    (m(x, user_emb=e).pow(2).sum() + m.aux_loss).backward()
    return hooks


def test_reentrant_checkpointing_gate_outside_recompute():
    """Reentrant checkpointing: same gradients as without, and the gate gets ONE gradient
    hook (the recomputed blocks read a detached route; RouteSink hands its gradient back),
    the invariant DeepSpeed ZeRO reduces by."""
    plain, ckpt = checkpointed_stack(0, False), checkpointed_stack(0, True)
    hooks = [backward_counting_hooks(m) for m in (plain, ckpt)]
    assert hooks[0] == hooks[1] == dict.fromkeys(hooks[0], 1)
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, n
            torch.testing.assert_close(q.grad, p.grad, msg=n)
    assert not ckpt.route.pending  # every recomputed read was collected


def test_uncollected_route_gradient_is_an_error_not_a_silent_loss():
    m = checkpointed_stack(0, True)
    backward_counting_hooks(m)  # registers the sink hooks
    for handle in m._sink_hooks.values():  # a block whose input never met a sink
        handle.remove()
    with pytest.raises(RuntimeError, match="gate gradients .* not collected"):
        backward_counting_hooks(m)
