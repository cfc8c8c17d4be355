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


@pytest.mark.parametrize(
    "message, init", [("paper", "random"), ("reference", "random"), ("paper", "spectral")]
)
def test_resume_from_saved_state_is_exact(tmp_path, message, init):
    graph, train, val = planted()
    c = cfg(epochs=4, schedule="minibatch", batch_size=40, message=message, init=init)
    straight = GNNTrainer(graph, train, val, c).fit(on_epoch=lambda r: None)
    first = GNNTrainer(graph, train, val, c)
    first.step_epoch()
    first.step_epoch()
    save_file(first.state_tensors(), str(tmp_path / "s.safetensors"))
    meta = first.state_meta()
    resumed = GNNTrainer(graph, train, val, c)
    resumed.load_state(load_file(str(tmp_path / "s.safetensors")), meta)
    resumed.fit(on_epoch=lambda r: None)
    assert resumed.init == first.init and resumed.init["init"] == init  # restored, not redone
    assert resumed.loss_curve == pytest.approx(straight.loss_curve, rel=1e-5)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k
    other = GNNTrainer(graph, train, val, cfg(dim=16))
    with pytest.raises(ValueError, match="does not match"):
        other.load_state(load_file(str(tmp_path / "s.safetensors")), meta)


@pytest.mark.parametrize("chunk", [10**6, 7])
def test_closed_form_backward_equals_autograd_of_the_loss(chunk):
    """``bpr_backward`` (sparse closed-form gradient, margins in chunks) against plain
    autograd of ``bpr_loss``, in float64: repeated pairs, a node in many pairs, and margins
    past the ±2000 clamp (zero gradient there) included."""
    from copl_ray.graph.model import bpr_backward

    gen = torch.Generator().manual_seed(3)
    e_user = torch.randn(6, 5, dtype=torch.float64, generator=gen)
    e_resp = torch.randn(9, 5, dtype=torch.float64, generator=gen)
    e_resp[8] *= 100.0  # pairs with response 8 have margins ~±10⁴: beyond the clamp
    pairs = PairIndex(
        torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 0, 5, 5]),
        torch.tensor([1, 2, 3, 4, 5, 6, 7, 0, 1, 8, 2]),
        torch.tensor([0, 3, 2, 5, 6, 7, 8, 1, 0, 0, 8]),
    )
    w = torch.randn(5, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    grads = []
    for closed_form in (False, True):
        w.grad = None
        eu, er = torch.tanh(e_user @ w) * 60.0, e_resp @ w  # a non-leaf, like the GNN's
        if closed_form:
            from copl_ray.graph.model import score_margin

            assert (score_margin(eu, er, pairs).abs() > 2000).sum() >= 2
            loss = bpr_backward(eu, er, pairs, 1e-3, chunk)
        else:
            full = bpr_loss(eu, er, pairs, 1e-3)
            full.backward()
            loss = float(full.detach())
        grads.append((loss, w.grad.clone()))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-12)
    assert torch.allclose(grads[1][1], grads[0][1], rtol=1e-10, atol=1e-12)
    assert grads[0][1].abs().max() > 1e-3  # a real gradient was compared


def test_trainer_steps_are_the_same_whatever_the_loss_chunk():
    graph, train, val = planted()
    runs = []
    for chunk in (10**6, 7):
        torch.manual_seed(0)
        trainer = GNNTrainer(graph, train, val, cfg(edge_dropout=0.0, l2=1e-3, loss_chunk=chunk))
        runs.append(
            (trainer.train_epoch(), [p.detach().clone() for p in trainer.model.parameters()])
        )
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


def test_weight_lr_scale_sets_the_layer_weights_lr_and_tables_keep_lr():
    graph, train, val = planted()
    trainer = GNNTrainer(graph, train, val, cfg(lr=0.02, weight_lr_scale=0.125))
    tables, weights = trainer.optimizer.param_groups
    assert {id(p) for p in tables["params"]} == {
        id(trainer.model.user_emb),
        id(trainer.model.resp_emb),
    }
    assert len(tables["params"]) + len(weights["params"]) == len(list(trainer.model.parameters()))
    before = [p.detach().clone() for p in weights["params"]]
    trainer.train_epoch()  # warm-up and cosine scale both groups alike
    assert tables["lr"] / weights["lr"] == pytest.approx(8.0)
    assert any(not torch.equal(a, p) for a, p in zip(before, weights["params"]))


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
