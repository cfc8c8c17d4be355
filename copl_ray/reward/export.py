"""Persistence of PersonalRewardModel and the per-user PEFT export.

Saved folder (``save``)::

    reward_config.json   {"format", "variant", "user_dim", "n_users", "reward": {...},
                          "backbone", "backbone_config" (config-built backbones only),
                          "backbone_weights_included"}
    model.safetensors    adapters, gates, head, user table/projection
                         (+ "mole.model.*" frozen weights when the backbone is config-built)
    tokenizer/           when the model has a tokenizer

Per-user export (``export_user_peft``): for a fixed user the gated MoLE is an ordinary LoRA,
``ΔW = (α/r)(B_s A_s + Σ_{i∈top-k} w_i B_i A_i) = (α/r)·[B_s, w B_e][A_s; A_e]`` of rank
``(1+k)·r`` — exact (ANCHORS.md §A7.2). Written as a standard PEFT folder::

    adapter_config.json, adapter_model.safetensors   (LoRA + ``score`` as modules_to_save)
    tokenizer files
    base/   AutoModelForSequenceClassification(num_labels=1) folder (config-built backbones;
            hub backbones are named in adapter_config.json instead)

Load with ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
out/"base", num_labels=1), out)``. HF pools the last non-pad token with arange positions,
so its scores equal copl-ray's for right-padded inputs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from copl_ray.reward.backbone import (
    TINY_GEMMA,
    backbone_from_config,
    build_backbone,
    load_tokenizer,
)

if TYPE_CHECKING:
    from copl_ray.reward.model import PersonalRewardModel

FORMAT = "copl-ray-reward/1"
CONFIG_FILE = "reward_config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_PREFIX = "mole.model."


def _is_trainable_key(key: str) -> bool:
    return not key.startswith(BACKBONE_PREFIX) or "lora_" in key


def save_reward_model(model: PersonalRewardModel, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rc = model.reward_cfg
    include_backbone = rc.backbone == TINY_GEMMA
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if include_backbone or _is_trainable_key(k)
    }
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "variant": model.variant,
        "user_dim": model.user_dim,
        "n_users": model.n_users,
        "reward": dataclasses.asdict(rc),
        "backbone": rc.backbone,
        "backbone_config": model.backbone.config.to_dict() if include_backbone else None,
        "backbone_weights_included": include_backbone,
    }
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out / "tokenizer")
    return out


def load_reward_model(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> PersonalRewardModel:
    from copl_ray.config import config_from_dict
    from copl_ray.reward.model import PersonalRewardModel

    d = Path(model_dir)
    if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists():
        raise FileNotFoundError(
            f"{d}: not a copl-ray reward model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    meta = json.loads((d / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / CONFIG_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    rc = config_from_dict({"reward": meta["reward"]}).reward
    tokenizer = load_tokenizer(d / "tokenizer") if (d / "tokenizer").exists() else None
    if meta["backbone_weights_included"]:
        backbone = backbone_from_config(meta["backbone_config"], rc.backbone_dtype)
    else:
        backbone = build_backbone(rc, tokenizer)
    model = PersonalRewardModel(
        backbone, rc, meta["variant"], meta["user_dim"], meta["n_users"], tokenizer
    )
    state = load_file(str(d / WEIGHTS_FILE))
    result = model.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if _is_trainable_key(k) or meta["backbone_weights_included"]
    ]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{d / WEIGHTS_FILE}: missing {missing[:5]} / unexpected "
            f"{result.unexpected_keys[:5]} tensors (of {len(missing)} / "
            f"{len(result.unexpected_keys)})"
        )
    return model.to(device).eval()


def _seq_cls_skeleton(config: Any) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` on the meta device (names only, no memory)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def _seq_cls_config(model: PersonalRewardModel) -> Any:
    config = model.backbone.config.__class__.from_dict(model.backbone.config.to_dict())
    config.num_labels = 1
    if model.tokenizer is not None and model.tokenizer.pad_token_id is not None:
        config.pad_token_id = model.tokenizer.pad_token_id
    return config


@torch.no_grad()
def export_user_peft(
    model: PersonalRewardModel,
    user_emb: torch.Tensor | None,
    out_dir: str | Path,
    user_index: int | None = None,
) -> Path:
    """Write one user's reward model as a standard PEFT LoRA folder (module docstring)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    if model.variant == "no_mole":
        raise ValueError(
            "export_user_peft: variant 'no_mole' feeds the user as an input token; "
            "it has no per-user LoRA form"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mole = model.mole
    dev = model.score.weight.device
    if model.variant == "no_gnn":
        if user_index is None:
            raise ValueError("export_user_peft: variant 'no_gnn' needs user_index")
        user_emb = model.user_table.weight[user_index][None]
    elif model.variant == "copl":
        if user_emb is None:
            raise ValueError("export_user_peft: variant 'copl' needs user_emb")
        user_emb = model.gate_input(user_emb.reshape(1, -1).to(dev), None)
    lora = (
        mole.user_lora(user_emb)
        if mole.gate is not None
        else {
            name: (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
            for name, layer in mole.mole_layers()
        }
    )
    rank = next(iter(lora.values()))[0].shape[0]

    config = _seq_cls_config(model)
    skeleton = _seq_cls_skeleton(config)
    prefix = skeleton.base_model_prefix
    if not isinstance(getattr(skeleton, "score", None), torch.nn.Linear):
        raise ValueError(
            f"export_user_peft: {type(skeleton).__name__} has no linear `score` "
            "head on the last token; export supports decoder backbones only"
        )
    short_targets = sorted({n.rsplit(".", 1)[-1] for n in lora})
    lcfg = LoraConfig(
        r=rank,
        lora_alpha=rank * mole.cfg.scaling,
        lora_dropout=0.0,
        target_modules=short_targets,
        modules_to_save=["score"],
        bias="none",
        task_type="SEQ_CLS",
    )
    keys = list(get_peft_model_state_dict(get_peft_model(skeleton, lcfg)).keys())
    base_dtype = next(model.backbone.parameters()).dtype
    tensors: dict[str, torch.Tensor] = {}
    for key in keys:
        if key.endswith(("lora_A.weight", "lora_B.weight")):
            module = key.removeprefix(f"base_model.model.{prefix}.").rsplit(".", 2)[0]
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
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )

    if model.reward_cfg.backbone == TINY_GEMMA:
        base = _write_base_folder(model, config, out / "base")
        lcfg.base_model_name_or_path = str(base.resolve())
    else:
        lcfg.base_model_name_or_path = model.reward_cfg.backbone
    lcfg.save_pretrained(str(out))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    return out


def _write_base_folder(model: PersonalRewardModel, config: Any, base_dir: Path) -> Path:
    """The frozen config-built backbone + head as an AutoModelForSequenceClassification folder."""
    from transformers import AutoModelForSequenceClassification

    seq = AutoModelForSequenceClassification.from_config(config, dtype=model.backbone.dtype)
    base_state = {
        k.removeprefix(BACKBONE_PREFIX).replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if k.startswith(BACKBONE_PREFIX) and "lora_" not in k
    }
    getattr(seq, seq.base_model_prefix).load_state_dict(base_state, strict=True)
    seq.score.weight.copy_(model.score.weight.to(seq.score.weight.dtype))
    seq.save_pretrained(base_dir)
    return base_dir
