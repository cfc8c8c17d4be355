"""Pooling of the backbone's hidden states into one vector per text (``reward.pooling``).

The one owner of pooling: the in-process reward model (training, eval, serving) and the
per-user PEFT export both call :func:`pool`, so a score cannot depend on the path.

- ``last``  — the last non-pad token (decoders such as Gemma: only it has read the text);
- ``first`` — the first non-pad token (BERT-style ``[CLS]``);
- ``mean``  — the masked mean over non-pad tokens (sentence-transformers' default);
- ``auto``  — a sentence-transformers folder's own pooling (``1_Pooling/config.json``),
  else ``first`` for encoder-only architectures (a masked-LM model type), else ``last``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

POOLINGS = ("last", "first", "mean")
# 1_Pooling/config.json flag -> our name (sentence-transformers' modules.json layout)
_ST_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "first",
    "pooling_mode_lasttoken": "last",
}


def _check_rows(mask: torch.Tensor) -> None:
    if (mask.sum(1) == 0).any():
        bad = (mask.sum(1) == 0).nonzero()[:, 0].tolist()
        raise ValueError(f"attention_mask: rows {bad} have no token")


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token: ``p_t = (Σ_{s≤t} m_s) − 1``,
    clamped at 0 for leading pads.

    The one rule of the full forward, the frozen-layer cache and the planner's timing: a
    text keeps the same positions however far its row is padded, which is what lets the
    cache key a text by its tokens alone.
    """
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row (left or right padding)."""
    _check_rows(attention_mask)
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (pos * attention_mask.long()).argmax(1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first position with mask 1 in each row (left or right padding)."""
    _check_rows(attention_mask)
    return attention_mask.long().argmax(1)  # argmax returns the first maximum


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str, n_prefix: int = 0
) -> torch.Tensor:
    """``[N, L, H]`` hidden states → ``[N, H]`` by ``mode`` (``last``/``first``/``mean``).

    ``n_prefix`` leading positions are not text (the ``no_mole`` user token): ``first`` and
    ``mean`` skip them; ``last`` never reaches them while a row has text.
    """
    mask = attention_mask.long()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "last":
        return hidden[rows, last_token_index(mask)]
    if n_prefix:
        mask = torch.cat([mask.new_zeros(mask.shape[0], n_prefix), mask[:, n_prefix:]], 1)
    if mode == "first":
        return hidden[rows, first_token_index(mask)]
    if mode == "mean":
        _check_rows(mask)
        m = mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1)
    raise ValueError(f"pooling: expected one of {list(POOLINGS)}, got {mode!r}")


def _sentence_transformers_pooling(folder: str | None) -> str | None:
    """The pooling a sentence-transformers folder was trained with, if it says so."""
    if not folder:
        return None
    path = Path(folder) / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    flags = json.loads(path.read_text())
    for flag, mode in _ST_MODES.items():
        if flags.get(flag):
            return mode
    return None


def resolve_pooling(pooling: str, backbone_config: Any, folder: str | None = None) -> str:
    """``reward.pooling`` with ``auto`` resolved for this backbone (module docstring)."""
    if pooling != "auto":
        return pooling
    trained = _sentence_transformers_pooling(folder)
    if trained is not None:
        return trained
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    text = backbone_config.get_text_config()
    encoder = (
        text.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not getattr(text, "is_encoder_decoder", False)
        and not getattr(text, "is_decoder", False)
    )
    return "first" if encoder else "last"
