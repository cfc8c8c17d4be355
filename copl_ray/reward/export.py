"""The per-user PEFT export of a PersonalRewardModel (its own folder format:
copl_ray/reward/model.py ``PersonalRewardModel.save``).

Per-user export (``export_user_peft``): for a fixed user the gated MoLE is an ordinary LoRA,
``ΔW = (α/r)(B_s A_s + Σ_{i∈top-k} w_i B_i A_i) = (α/r)·[B_s, w B_e][A_s; A_e]`` of rank
``(1+k)·r`` — exact (the gated blocks stack into one wider A/B pair). Written as a standard
PEFT folder::

    adapter_config.json, adapter_model.safetensors   (LoRA [+ ``score``])
    copl_reward_head.json, score.safetensors          (pooling and the score head)
    tokenizer files
    base/   the frozen backbone as an HF folder (config-built backbones; pretrained ones
            are named in adapter_config.json instead: a local folder or a hub name)

Two forms, by pooling (copl_ray/reward/pooling.py):

- ``last`` on a decoder: ``task_type="SEQ_CLS"`` with ``score`` in modules_to_save; plain
  HF reads it: ``PeftModel.from_pretrained(AutoModelForSequenceClassification
  .from_pretrained(out/"base", num_labels=1), out)``. HF pools the last non-pad token with
  arange positions, so its scores equal copl-ray's for right-padded inputs.
- any other pooling or an encoder (whose HF head is a pooler + classifier, not ours):
  ``task_type="FEATURE_EXTRACTION"`` over ``AutoModel``; the score is
  ``score.weight @ pool(last_hidden_state)`` with the pooling named in
  copl_reward_head.json. :func:`load_user_export` reads both forms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from copl_ray.reward.backbone import TINY_GEMMA, backbone_path
from copl_ray.reward.baselines import TOKEN_ARCHITECTURES
from copl_ray.reward.model import BACKBONE_PREFIX, PersonalRewardModel
from copl_ray.reward.pooling import pool

HEAD_FILE = "copl_reward_head.json"  # per-user export: {"pooling", "hf_head", "weights"}
HEAD_WEIGHTS = "score.safetensors"


def _export_skeleton(config: Any, seq_cls: bool) -> torch.nn.Module:
    """The exported base architecture on the meta device (names only, no memory):
    ``AutoModelForSequenceClassification`` or the bare ``AutoModel``."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    with torch.device("meta"):
        return (AutoModelForSequenceClassification if seq_cls else AutoModel).from_config(config)


def _export_config(model: PersonalRewardModel, seq_cls: bool) -> Any:
    config = model.backbone.config.__class__.from_dict(model.backbone.config.to_dict())
    if seq_cls:
        config.num_labels = 1
    if model.tokenizer is not None and model.tokenizer.pad_token_id is not None:
        config.pad_token_id = model.tokenizer.pad_token_id
    return config


def _hf_head_pools_like_us(model: PersonalRewardModel) -> bool:
    """True when HF's own sequence-classification head computes our score: it reads the
    last non-pad token through a linear ``score`` (decoders); else the export is a
    feature-extraction LoRA with our head and pooling beside it (:data:`HEAD_FILE`)."""
    if model.pooling != "last":
        return False
    skeleton = _export_skeleton(_export_config(model, True), True)
    return isinstance(getattr(skeleton, "score", None), torch.nn.Linear)


def _user_lora(
    model: PersonalRewardModel, user_emb: torch.Tensor | None, user_index: int | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``module name -> (A, B)`` of one user's LoRA (the gated MoLE collapsed, exact)."""
    if model.variant in TOKEN_ARCHITECTURES or model.head is not None:
        how = "as an input token" if model.head is None else "to its user head"
        raise ValueError(
            f"export_user_peft: variant {model.variant!r} feeds the user {how}; "
            "it has no per-user LoRA form"
        )
    mole = model.mole
    dev = model.device
    if model.user_input == "table":
        if user_index is None:
            raise ValueError(f"export_user_peft: variant {model.variant!r} needs user_index")
        user_emb = model.user_table.weight[user_index][None]
    elif model.user_input == "graph":
        if user_emb is None:
            raise ValueError(f"export_user_peft: variant {model.variant!r} needs user_emb")
        user_emb = model.gate_input(user_emb.reshape(1, -1).to(dev), None)
    if mole.gate is not None:
        return mole.user_lora(user_emb)
    return {
        name: (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
        for name, layer in mole.mole_layers()
    }


def _peft_tensors(
    model: PersonalRewardModel, lora: dict, keys: list[str], strip: str
) -> dict[str, torch.Tensor]:
    """PEFT state-dict ``keys`` filled from ``lora`` (+ the ``score`` head, SEQ_CLS only)."""
    base_dtype = next(model.backbone.parameters()).dtype
    tensors: dict[str, torch.Tensor] = {}
    for key in keys:
        if key.endswith(("lora_A.weight", "lora_B.weight")):
            module = key.removeprefix(strip).rsplit(".", 2)[0]
            if module not in lora:
                raise ValueError(f"export_user_peft: peft targets {module!r}, not a MoLE layer")
            a, b = lora[module]
            tensors[key] = (a if ".lora_A." in key else b).to(base_dtype)
        elif key.endswith("score.weight"):
            tensors[key] = model.score.weight.to(base_dtype)
        else:
            raise ValueError(f"export_user_peft: unexpected peft tensor {key!r}")
    if len([k for k in tensors if "lora_A" in k]) != len(lora):
        raise ValueError("export_user_peft: peft and MoLE wrap different module sets")
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _peft_targets(model: PersonalRewardModel, lora: dict) -> list[str]:
    """PEFT ``target_modules``: the leaf names (``["q_proj", "v_proj"]``) when MoLE wraps
    every module of that name, else (``reward.adapted_layers``: the top layers only) the
    full module names, which PEFT matches as suffixes in either exported skeleton."""
    if getattr(model.reward_cfg, "adapted_layers", None) is not None:
        return sorted(lora)
    return sorted({n.rsplit(".", 1)[-1] for n in lora})


@torch.no_grad()
def export_user_peft(
    model: PersonalRewardModel,
    user_emb: torch.Tensor | None,
    out_dir: str | Path,
    user_index: int | None = None,
) -> Path:
    """Write one user's reward model as a standard PEFT LoRA folder (module docstring)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    lora = _user_lora(model, user_emb, user_index)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank = next(iter(lora.values()))[0].shape[0]
    seq_cls = _hf_head_pools_like_us(model)
    config = _export_config(model, seq_cls)
    skeleton = _export_skeleton(config, seq_cls)
    lcfg = LoraConfig(
        r=rank,
        lora_alpha=rank * model.mole.cfg.scaling,
        lora_dropout=0.0,
        target_modules=_peft_targets(model, lora),
        modules_to_save=["score"] if seq_cls else None,
        bias="none",
        task_type="SEQ_CLS" if seq_cls else "FEATURE_EXTRACTION",
    )
    keys = list(get_peft_model_state_dict(get_peft_model(skeleton, lcfg)).keys())
    strip = f"base_model.model.{skeleton.base_model_prefix}." if seq_cls else "base_model.model."
    tensors = _peft_tensors(model, lora, keys, strip)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    head = {"weight": model.score.weight.detach().float().contiguous().cpu()}
    save_file(head, str(out / HEAD_WEIGHTS), metadata={"format": "pt"})
    (out / HEAD_FILE).write_text(
        json.dumps({"pooling": model.pooling, "hf_head": seq_cls, "weights": HEAD_WEIGHTS})
    )
    if model.reward_cfg.backbone == TINY_GEMMA:
        base = _write_base_folder(model, config, out / "base", seq_cls)
        lcfg.base_model_name_or_path = str(base.resolve())
    else:
        lcfg.base_model_name_or_path = backbone_path(model.reward_cfg.backbone)
    lcfg.save_pretrained(str(out))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    return out


def _write_base_folder(
    model: PersonalRewardModel, config: Any, base_dir: Path, seq_cls: bool
) -> Path:
    """The frozen config-built backbone (+ head when ``seq_cls``) as an HF model folder."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if seq_cls else AutoModel
    hf = auto.from_config(config, dtype=model.backbone.dtype)
    base_state = {
        k.removeprefix(BACKBONE_PREFIX).replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if k.startswith(BACKBONE_PREFIX) and "lora_" not in k
    }
    (getattr(hf, hf.base_model_prefix) if seq_cls else hf).load_state_dict(base_state, strict=True)
    if seq_cls:
        hf.score.weight.copy_(model.score.weight.to(hf.score.weight.dtype))
    hf.save_pretrained(base_dir)
    return base_dir


class ExportedRewardModel(torch.nn.Module):
    """A per-user export loaded back: PEFT model + copl-ray's pooling and head.

    The reader any export folder works with (SEQ_CLS or feature-extraction form); the
    pooling is :func:`copl_ray.reward.pooling.pool`, the one the trained model uses.
    """

    def __init__(self, peft_model: torch.nn.Module, meta: dict, head: torch.Tensor) -> None:
        super().__init__()
        self.peft_model, self.pooling, self.hf_head = peft_model, meta["pooling"], meta["hf_head"]
        self.register_buffer("head", head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores ``[N]`` fp32 of right-padded rows (HF positions are ``arange``)."""
        out = self.peft_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.hf_head:
            return out.logits[:, 0].float()
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        return (pooled.float() @ self.head.float().T).squeeze(-1)


def load_user_export(out_dir: str | Path) -> ExportedRewardModel:
    """Load what :func:`export_user_peft` wrote (base model from ``adapter_config.json``)."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModel, AutoModelForSequenceClassification

    out = Path(out_dir)
    meta = json.loads((out / HEAD_FILE).read_text())
    base_name = PeftConfig.from_pretrained(str(out)).base_model_name_or_path
    if meta["hf_head"]:
        base = AutoModelForSequenceClassification.from_pretrained(base_name, num_labels=1)
    else:
        base = AutoModel.from_pretrained(base_name)
    head = load_file(str(out / meta["weights"]))["weight"]
    return ExportedRewardModel(PeftModel.from_pretrained(base, str(out)).eval(), meta, head)
