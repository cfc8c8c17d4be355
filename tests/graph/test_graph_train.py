"""Training loop: loss, schedules (one propagation per step), exact resume."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from copl_ray.config import GNNConfig
from copl_ray.graph.bipartite import PairIndex, build_graph, pair_index
from copl_ray.graph.model import bpr_loss
from copl_ray.graph.train import GNNTrainer, warmup_cosine

torch.set_num_threads(1)


def planted(n_users: int = 24, n_resp: int = 12, n_labels: int = 6, seed: int = 0):
    """Two groups with opposite taste over responses: group 0 prefers low ids."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(n_users):
        for k in range(n_labels + 1):
            a, b = torch.randperm(n_resp, generator=g)[:2].tolist()
            lo, hi = min(a, b), max(a, b)
            chosen, rejected = (lo, hi) if u % 2 == 0 else (hi, lo)
            rows.append((f"u{u}", k, chosen, rejected, "val" if k == n_labels else "survey"))
    ann = pd.DataFrame(rows, columns=["user_id", "pair_id", "chosen", "rejected", "split"])
    graph = build_graph(ann)
    return graph, pair_index(graph, ann, "survey"), pair_index(graph, ann, "val")


def cfg(**kw) -> GNNConfig:
    base = dict(
        dim=8,
        layers=2,
        epochs=6,
        lr=0.02,
        warmup_ratio=0.2,
        schedule="full",
        edge_dropout=0.1,
        eval_every=1,
    )
    return GNNConfig(**(base | kw))


def test_bpr_loss_matches_the_formula():
    eu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    er = torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 0.0]])
    pairs = PairIndex(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 2]))
    # margins: u0: 1 - 0 = 1; u1: 2 - 0 = 2
    expect = -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(2.0))) / 2
    assert bpr_loss(eu, er, pairs) == pytest.approx(float(expect))
    l2 = (1 + 2 + 1) + (4 + 1 + 4)  # ‖e_u‖² + ‖e_a‖² + ‖e_b‖² summed over the batch
    assert bpr_loss(eu, er, pairs, l2=0.1) == pytest.approx(float(expect) + 0.1 * l2)


def test_warmup_then_cosine_to_zero():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=1e-6)
    assert f(100) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("schedule, batch, steps", [("full", 1024, 1), ("minibatch", 50, None)])
def test_one_propagation_per_optimisation_step(schedule, batch, steps):
    graph, train, val = planted()
    trainer = GNNTrainer(graph, train, val, cfg(schedule=schedule, batch_size=batch, epochs=2))
    calls = []
    trainer.model.register_forward_hook(lambda *_: calls.append(trainer.model.training))
    trainer.train_epoch()
    expected = steps or math.ceil(len(train) / batch)
    assert trainer.steps_per_epoch == expected
    assert calls.count(True) == expected  # every step re-propagates the graph exactly once


def test_training_learns_the_planted_groups():
    graph, train, val = planted()
    trainer = GNNTrainer(graph, train, val, cfg(epochs=60)).fit(on_epoch=lambda r: None)
    assert trainer.loss_curve[-1] < 0.5 * trainer.loss_curve[0]
    # 24 val pairs, each labelled by a deterministic group rule: the embeddings recover it
    assert trainer.best_val >= 0.9
    assert trainer.best_epoch >= 1 and len(trainer.val_curve) == 60


@pytest.mark.parametrize("message", ["paper", "reference"])
def test_resume_from_saved_state_is_exact(tmp_path, message):
    graph, train, val = planted()
    c = cfg(epochs=4, schedule="minibatch", batch_size=40, message=message)
    straight = GNNTrainer(graph, train, val, c).fit(on_epoch=lambda r: None)
    first = GNNTrainer(graph, train, val, c)
    first.step_epoch()
    first.step_epoch()
    save_file(first.state_tensors(), str(tmp_path / "s.safetensors"))
    meta = first.state_meta()
    resumed = GNNTrainer(graph, train, val, c)
    resumed.load_state(load_file(str(tmp_path / "s.safetensors")), meta)
    resumed.fit(on_epoch=lambda r: None)
    assert resumed.loss_curve == pytest.approx(straight.loss_curve, rel=1e-5)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k
    other = GNNTrainer(graph, train, val, cfg(dim=16))
    with pytest.raises(ValueError, match="does not match"):
        other.load_state(load_file(str(tmp_path / "s.safetensors")), meta)


def test_chunked_backward_gives_the_same_gradient_as_one_backward():
    from copl_ray.graph.model import bpr_backward

    graph, train, val = planted()
    grads = []
    for chunk in (10**6, 7):
        torch.manual_seed(0)
        trainer = GNNTrainer(graph, train, val, cfg(edge_dropout=0.0, l2=1e-3))
        e_user, e_resp = trainer.model(trainer.adj)
        loss = bpr_backward(e_user, e_resp, train, 1e-3, chunk)
        grads.append((loss, [p.grad.clone() for p in trainer.model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("schedule, batch", [("full", 1024), ("minibatch", 40)])
def test_l2_reference_batch_gives_each_pair_the_strength_of_an_n_pair_batch(schedule, batch):
    """λ is summed over a step's B pairs (official); ``l2_reference_batch=N`` rescales it to
    ``λ·N/B`` so the per-pair pull on the embeddings is that of an N-pair batch whatever B
    is — a full step (B = all 144 pairs here) is no longer regularised B/N times harder."""
    graph, train, val = planted()
    plain = GNNTrainer(graph, train, val, cfg(schedule=schedule, batch_size=batch, l2=1e-3))
    ref = GNNTrainer(
        graph,
        train,
        val,
        cfg(schedule=schedule, batch_size=batch, l2=1e-3, l2_reference_batch=40),
    )
    b = len(train) if schedule == "full" else batch
    assert plain.l2 == pytest.approx(1e-3)  # default 0: the official sum, unchanged
    assert ref.l2 == pytest.approx(1e-3 * 40 / b)
    # the step's L2 term λ'·Σ_B ‖·‖² = λ·N·mean_B ‖·‖²: independent of the batch size B
    e_user, e_resp = ref.embeddings()
    sq = (
        e_user[train.user].pow(2).sum(-1)
        + e_resp[train.chosen].pow(2).sum(-1)
        + e_resp[train.rejected].pow(2).sum(-1)
    )[:b]
    assert ref.l2 * float(sq.sum()) == pytest.approx(1e-3 * 40 * float(sq.mean()), rel=1e-5)
