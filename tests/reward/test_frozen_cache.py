"""``reward.adapted_layers``: MoLE in the top k layers, the frozen layers below computed once
per text and cached (copl_ray/reward/frozen_cache.py). The cached model must score and
back-propagate exactly like the full forward of a model with the same adapters, on BERT
(minilm) and on the tiny Gemma decoder (causal mask, rotary positions, final norm)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from copl_ray.config import ConfigError, load_config
from copl_ray.preflight import preflight
from copl_ray.reward import PersonalRewardModel, btl_loss
from copl_ray.reward.backbone import build_backbone, load_tokenizer
from copl_ray.reward.export import export_user_peft, load_user_export

USER_DIM = 8
TEXTS = [
    "Human: is coffee bad for you?\n\nAssistant: In moderation coffee is fine for most adults.",
    "Human: is coffee bad for you?\n\nAssistant: No idea.",
    "Human: how do I boil an egg?\n\nAssistant: Simmer it for nine minutes, then cool it.",
    "Human: how do I boil an egg?\n\nAssistant: Eggs are oval.",
    "Human: why is the sky blue?\n\nAssistant: Rayleigh scattering of sunlight by air.",
]
GATED = {"num_experts": 2, "top_k": 1, "gate_noise": 0.0}


@pytest.fixture(scope="module")
def minilm_tok():
    return load_tokenizer("minilm")


_PRISTINE: dict[tuple[str, int], torch.nn.Module] = {}


def _backbone(rc, tok) -> torch.nn.Module:
    """A fresh copy of the backbone (loaded once per module: the shared box is slow)."""
    key = (rc.backbone, id(tok))
    if key not in _PRISTINE:
        _PRISTINE[key] = build_backbone(rc, tok)
    return copy.deepcopy(_PRISTINE[key])


def _build(reward_cfg, backbone: str, tok, variant: str = "copl", **kw) -> PersonalRewardModel:
    """A model with trained-looking adapters (every LoRA B ~ N(0, 0.05²), seeded)."""
    if backbone == "minilm":
        kw = {"backbone": "minilm", "target_modules": ["query", "value"], **kw}
    rc = reward_cfg(**GATED, **kw)
    model = PersonalRewardModel(_backbone(rc, tok), rc, variant, USER_DIM, 5, tok)
    with torch.no_grad():
        for _, layer in model.mole.mole_layers():
            layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
    return model.eval()


def _uncached_twin(model: PersonalRewardModel) -> PersonalRewardModel:
    """The same adapters in an ordinary model (all-layer code path, no cache): targets are
    the cached model's wrapped modules by full name, weights copied from its state dict."""
    rc = dataclasses.replace(
        model.reward_cfg, adapted_layers=None, target_modules=list(model.mole.module_names)
    )
    twin = PersonalRewardModel(
        _backbone(rc, model.tokenizer), rc, model.variant, USER_DIM, 5, model.tokenizer
    )
    assert twin.frozen is None and twin.mole.module_names == model.mole.module_names
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def _batch(tok, order: list[int], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok([TEXTS[i] for i in order], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if left:  # the same rows left-padded: one roll per row
        n = mask.sum(1)
        ids = torch.stack([r.roll(int(ids.shape[1] - k)) for r, k in zip(ids, n)])
        mask = torch.stack([r.roll(int(mask.shape[1] - k)) for r, k in zip(mask, n)])
    return ids, mask


def _scores_and_grads(model, ids, mask, users):
    model.zero_grad()
    scores = model(ids, mask, users, torch.arange(users.shape[0]))
    b = ids.shape[0] // 2
    (btl_loss(scores[:b], scores[b:]) + model.aux_loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return scores.detach(), grads


def _assert_same(cached, twin, ids, mask, users) -> None:
    s1, g1 = _scores_and_grads(cached, ids, mask, users)
    s2, g2 = _scores_and_grads(twin, ids, mask, users)
    assert (s1 - s2).abs().max() < 1e-5, (s1, s2)
    assert g1.keys() == g2.keys() and any(g.abs().sum() > 0 for g in g1.values())
    for name in g1:
        assert (g1[name] - g2[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    ("backbone", "variant", "k"),
    [
        ("minilm", "copl", 1),
        ("minilm", "copl", 2),
        ("minilm", "uniform", 2),
        ("minilm", "no_gnn", 6),  # every layer adapted: the embedding output is cached
        ("tiny-gemma", "copl", 1),
        ("tiny-gemma", "uniform", 2),
        ("tiny-gemma", "no_mole", 1),  # the user token enters layer 0: full forward
    ],
)
def test_cached_scores_and_grads_equal_the_full_forward(
    reward_cfg, minilm_tok, tok, backbone, variant, k
):
    """Scores and every trainable gradient (adapters, gate, head, user table) within
    1e-5 in fp32, for a batch whose texts were cached from another batch laid out
    differently (left padding, other rows, another width) and for one half-cached."""
    tok = minilm_tok if backbone == "minilm" else tok
    model = _build(reward_cfg, backbone, tok, variant, adapted_layers=k)
    twin = _uncached_twin(model)
    users = torch.randn(2, USER_DIM, generator=torch.Generator().manual_seed(0))
    _scores_and_grads(model, *_batch(tok, [2, 3, 0, 1], left=True), users)  # fills 0..3
    for order in ([0, 2, 1, 3], [4, 0, 1, 4]):  # all cached; one new text (twice)
        _assert_same(model, twin, *_batch(tok, order), users)
    if variant != "no_mole":
        assert len(model.frozen.cache) == 5


def test_adapters_only_in_the_top_layers(reward_cfg, minilm_tok):
    model = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=2)
    assert [n for n, _ in model.mole.mole_layers()] == [
        f"encoder.layer.{i}.attention.self.{m}" for i in (4, 5) for m in ("query", "value")
    ]
    lora = [k for k in model.state_dict() if "lora_" in k]
    assert lora and all(".layer.4." in k or ".layer.5." in k for k in lora)
    assert model.frozen is not None and len(model.frozen.top) == 2
    assert _build(reward_cfg, "minilm", minilm_tok).frozen is None  # default: as before


def test_a_cached_text_runs_no_lower_layer(reward_cfg, minilm_tok):
    """The second forward of the same batch never calls the frozen layers (or the
    embeddings); a batch with one new text calls them once, on that one row."""
    model = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=1)
    rows: list[int] = []
    for module in (model.backbone.embeddings, *model.backbone.encoder.layer[:5]):
        module.register_forward_hook(lambda m, a, o: rows.append(o.shape[0]))
    users = torch.randn(2, USER_DIM)
    ids, mask = _batch(minilm_tok, [0, 1, 2, 3])
    with torch.no_grad():
        first = model(ids, mask, users)
        assert rows == [4] * 6 and model.frozen.lower_calls == 1
        rows.clear()
        assert torch.equal(model(ids, mask, users), first)
        assert rows == [] and model.frozen.lower_calls == 1
        assert (model.frozen.cache.hits, model.frozen.cache.misses) == (4, 4)
        model(*_batch(minilm_tok, [4, 1, 2, 4]), users)  # text 4 twice: computed once
        assert rows == [1] * 6 and model.frozen.lower_calls == 2
        rows.clear()  # prefill (ahead of training): only the texts not cached yet
        assert model.frozen.prefill(*_batch(minilm_tok, [0, 1, 2, 3, 4], left=True)) == 5
        assert rows == [] and model.frozen.lower_calls == 2


def test_cache_cap_stops_adding_and_stays_exact(reward_cfg, minilm_tok):
    """``reward.cache_max_mb`` bounds the cache: once full it stops adding, texts not
    cached are recomputed (no_grad) every time and score the same; 0 = no cache."""
    ids, mask = _batch(minilm_tok, [0, 1, 2, 3])
    per_token = 384 * 4  # fp32 hidden row
    two = int(mask[:2].sum()) * per_token + 2 * 8 * 64  # the first two texts and their keys
    users = torch.randn(2, USER_DIM)
    for cap_mb, cached in ((two / 2**20, 2), (0.0, 0)):
        model = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=2, cache_max_mb=cap_mb)
        twin = _uncached_twin(model)
        for calls in (1, 2):
            _assert_same(model, twin, ids, mask, users)
            assert len(model.frozen.cache) == cached
            assert model.frozen.cache.nbytes <= cap_mb * 2**20
            assert model.frozen.lower_calls == calls  # the uncached rows are recomputed


def test_weight_changes_clear_the_cache(reward_cfg, minilm_tok):
    model = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=1)
    with torch.no_grad():
        model(*_batch(minilm_tok, [0, 1]), torch.randn(1, USER_DIM))
    assert len(model.frozen.cache) == 2
    model.load_state_dict(model.state_dict())
    assert len(model.frozen.cache) == 0 and model.frozen.cache.nbytes == 0
    with torch.no_grad():
        model(*_batch(minilm_tok, [0, 1]), torch.randn(1, USER_DIM))
    model.to(torch.float32)
    assert len(model.frozen.cache) == 0


@pytest.mark.parametrize("variant", ["copl", "uniform"])
def test_reentrant_checkpointing_of_the_top_layers(reward_cfg, tok, variant):
    """Training mode with HF reentrant gradient checkpointing (ZeRO-3 presets): the cached
    input is made to require grad, so the checkpointed adapted layers still get
    gradients (uniform has no gate scale to carry them), equal to the full forward's."""
    model = _build(reward_cfg, "tiny-gemma", tok, variant, adapted_layers=1)
    twin = _uncached_twin(model)
    for m in (model, twin):
        m.gradient_checkpointing_enable(use_reentrant=True)
        m.train()
    _assert_same(model, twin, *_batch(tok, [0, 1, 2, 3]), torch.randn(2, USER_DIM))


@pytest.mark.parametrize("backbone", ["minilm", "tiny-gemma"])
def test_peft_export_targets_only_the_adapted_layers(
    reward_cfg, minilm_tok, tok, tmp_path, backbone
):
    """The per-user PEFT folder names the adapted modules in full (a leaf name would make
    PEFT wrap every layer) and scores like the cached model."""
    tok = minilm_tok if backbone == "minilm" else tok
    model = _build(reward_cfg, backbone, tok, adapted_layers=1)
    user = torch.randn(USER_DIM, generator=torch.Generator().manual_seed(2))
    out = export_user_peft(model, user, tmp_path / "u")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(model.mole.module_names)
    exported = load_user_export(out)
    wrapped = [n for n, m in exported.named_modules() if hasattr(m, "lora_A") and m.lora_A]
    top = model.mole.module_names[0].rsplit(".", 3 if backbone == "minilm" else 2)[0]
    assert wrapped and all(f"{top}." in n for n in wrapped), wrapped
    ids, mask = _batch(tok, [0, 1, 2, 3])
    with torch.no_grad():
        ours = model(ids, mask, user[None])
        theirs = exported(ids, mask)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["reward.backbone=minilm", "reward.target_modules=[query]", "reward.adapted_layers=7"],
            "reward.adapted_layers: 7 adapted layers, but the backbone has 6 (expected 1..6 "
            "or null)",
        ),
        (
            ["reward.adapted_layers=3"],
            "reward.adapted_layers: 3 adapted layers, but the backbone has 2 (expected 1..2 "
            "or null)",
        ),
        (
            ["reward.backbone=minilm", "reward.target_modules=[dense]", "reward.adapted_layers=1"],
            None,  # dense: attention output, intermediate and output linears of layer 5
        ),
    ],
)
def test_preflight_checks_adapted_layers(tmp_path, overrides, message):
    cfg = load_config("tiny", [*overrides, f"run.dir={tmp_path}"])
    if message is None:
        preflight(cfg, ["reward"])
        return
    with pytest.raises(ConfigError) as e:
        preflight(cfg, ["data", "gnn", "reward"])
    assert str(e.value) == message


def test_unsupported_architecture_and_bounds_fail_in_one_line(tmp_path, monkeypatch):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2).save_pretrained(
        tmp_path / "llama"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", ["reward.backbone=llama", "reward.adapted_layers=1"])
    with pytest.raises(ConfigError) as e:
        preflight(cfg, ["reward"])
    assert str(e.value) == (
        "reward.adapted_layers: the frozen-layer cache supports bert, gemma backbones, "
        "not 'llama'; leave it null (all layers adapted)"
    )
    preflight(load_config("tiny", ["reward.backbone=llama"]), ["reward"])  # null: any model
    for bad in ("reward.adapted_layers=0", "reward.cache_max_mb=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0] + ": expected a value in"):
            load_config("tiny", [bad])


@pytest.mark.parametrize("zero_stage,checkpointing", [(2, False), (3, True)])
def test_ray_train_deepspeed_trains_with_the_cache(
    ray_session, small_data_run, tmp_path, zero_stage, checkpointing
):
    """Unchanged Ray Train + DeepSpeed reward training (ZeRO-2, and ZeRO-3 with reentrant
    checkpointing of the adapted layer): the adapters of the top layer train and the saved
    model reloads with adapters there only. ZeRO-2 reads the stage's states computed once
    (frozen_states_file, every response text); ZeRO-3 lets each worker fill its cache."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from copl_ray.reward.shards import read_lookups
    from copl_ray.reward.stage import frozen_states_file, load_user_table, train_reward_model

    cfg, run, tok_dir = small_data_run(
        tmp_path,
        "gnn.dim=8",
        "reward.models=[copl]",
        "reward.adapted_layers=1",
        f"train.zero_stage={zero_stage}",
        f"train.gradient_checkpointing={str(checkpointing).lower()}",
        "train.batch_size=8",
        "train.max_steps=3",
        "train.ckpt_every=3",
        "train.eval_every=3",
        "train.lr=0.01",
    )
    users, _ = load_user_table(cfg, run, need_embeddings=False)
    table = torch.randn(len(users.user_ids), 8, generator=torch.Generator().manual_seed(0))
    lookups = read_lookups(run.data, users)
    states = None
    if zero_stage == 2:
        states = frozen_states_file(cfg, run, tok_dir, list(lookups[0]))
        assert states is not None and states.exists()
        assert frozen_states_file(cfg, run, tok_dir, []) == states  # reused, not recomputed
        with safe_open(str(states), framework="pt") as f:
            assert sum(k.startswith("ids.") for k in f.keys()) == len(set(lookups[0]))
    metrics = train_reward_model(
        cfg,
        run,
        job="copl",
        variant="copl",
        out_dir=run.reward("copl"),
        users=users,
        user_embeddings=table.numpy(),
        tokenizer_dir=tok_dir,
        lookups=lookups,
        frozen_states=states,
    )
    assert metrics["steps"] == 3 and metrics["val_accuracy"] is not None
    state = load_file(str(run.reward("copl") / "model.safetensors"))
    lora_b = [k for k in state if k.endswith("lora_B")]
    assert lora_b and all(".layers.1." in k for k in lora_b)
    assert all(state[k].abs().sum() > 0 for k in lora_b)  # B starts at 0: trained
    model = PersonalRewardModel.load(run.reward("copl"))
    assert model.frozen is not None and model.mole.module_names == [
        "layers.1.self_attn.q_proj",
        "layers.1.self_attn.v_proj",
    ]


def test_states_computed_once_load_into_another_model_exactly(reward_cfg, minilm_tok, tmp_path):
    """precompute_states writes every text's frozen states once (int32 batches, as the Ray
    Data shards carry them); a fresh model (another worker) loads them and then scores and
    back-propagates with zero lower-layer calls, exactly like its uncached twin."""
    from copl_ray.reward.backbone import tokenize_texts
    from copl_ray.reward.frozen_cache import load_states, precompute_states

    writer = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=1)
    encode = lambda t: tokenize_texts(minilm_tok, t, 64)  # noqa: E731
    path = tmp_path / "states.safetensors"
    assert precompute_states(writer.frozen, encode, TEXTS, path, batch=2) == len(TEXTS)
    reader = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=1)
    assert load_states(reader.frozen, path) == len(TEXTS)
    assert load_states(reader.frozen, path) == len(TEXTS)  # loading twice adds nothing
    ids, mask = (torch.as_tensor(x).long() for x in encode([TEXTS[i] for i in (0, 1, 3, 4)]))
    users = torch.randn(2, USER_DIM, generator=torch.Generator().manual_seed(2))
    _assert_same(reader, _uncached_twin(reader), ids, mask, users)
    assert reader.frozen.lower_calls == 0

    capped = _build(reward_cfg, "minilm", minilm_tok, adapted_layers=1, cache_max_mb=0.05)
    assert precompute_states(capped.frozen, encode, TEXTS, tmp_path / "c.st", batch=1) < len(TEXTS)
