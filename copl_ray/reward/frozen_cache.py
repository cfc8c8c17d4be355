"""MoLE in the top ``reward.adapted_layers`` layers only, the frozen layers below computed once
per text (pure torch + transformers; no Ray).

Why: a pairwise data set names few texts many times (UKPConvArg1: ~45k training pairs over
~1,040 arguments). With adapters only in the top ``k`` of ``L`` transformer layers, the
hidden states entering layer ``L−k`` depend on the text alone (frozen weights, no user),
so :class:`FrozenLowerLayers` computes them once per unique text under ``no_grad`` and
caches them, keyed by the text's non-pad token ids; every later step runs only the top
``k`` layers (+ final norm, pooling and head), forward and backward.

Exact, not approximate: the cached rows are the non-pad positions' states, and these do
not depend on the padding (positions come from the attention mask, pad keys are masked),
so the scores and the adapter/gate gradients equal the full forward's with the same
adapters (tests/reward/test_frozen_cache.py: < 1e-5 in fp32). The lower layers run in
eval mode (no dropout): a frozen, cached layer is deterministic by construction; the
adapted top layers keep the module's train/eval mode.

The per-architecture part is small and named (:data:`ARCHITECTURES`): how to embed, the
arguments each layer takes (HF's own mask helpers and rotary module), the final norm.
Other backbones fail with one line naming ``reward.adapted_layers`` (preflight, then at
build).

The cache is bounded by ``reward.cache_max_mb`` (per process, i.e. per training worker):
when full it stops adding (a cyclic pass over more texts than fit would evict every entry
before its reuse under LRU); texts not cached are recomputed, still under ``no_grad``.
Anything that can change the frozen weights (``load_state_dict``, ``.to()``) clears it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from copl_ray.config import ConfigError
from copl_ray.reward.pooling import position_ids_of

FIELD = "reward.adapted_layers"
LayerArgs = tuple[tuple[Any, ...], dict[str, Any]]


# ----------------------------------------------------------------- architectures
def _bert_embed(model: nn.Module, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return model.embeddings(input_ids=ids, position_ids=pos)


def _bert_args(model: nn.Module, h: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor):
    """BertModel.forward's encoder call: a bidirectional padding mask, positional."""
    from transformers.masking_utils import create_bidirectional_mask

    m = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=mask)
    return (m, None), {"position_ids": pos}


def _gemma_embed(model: nn.Module, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return model.embed_tokens(ids)  # GemmaTextScaledWordEmbedding: √d scaling inside


def _gemma_args(model: nn.Module, h: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor):
    """GemmaModel.forward's layer call: causal + padding mask, rotary of the positions."""
    from transformers.masking_utils import create_causal_mask

    causal = create_causal_mask(
        config=model.config, inputs_embeds=h, attention_mask=mask, cache=None, position_ids=pos
    )
    kwargs = dict(
        attention_mask=causal,
        position_ids=pos,
        use_cache=False,
        position_embeddings=model.rotary_emb(h, position_ids=pos),
    )
    return (), kwargs


@dataclass(frozen=True)
class Architecture:
    """What a backbone's own ``forward`` does around its layer stack."""

    embed: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    layer_args: Callable[..., LayerArgs]
    final_norm: str | None  # attribute of the final norm (decoders), None = none


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(_bert_embed, _bert_args, None),
    "gemma": Architecture(_gemma_embed, _gemma_args, "norm"),
}


def architecture(config: Any) -> Architecture:
    """The :class:`Architecture` of a backbone config; unsupported → one-line ConfigError."""
    text = config.get_text_config()
    arch = ARCHITECTURES.get(text.model_type)
    if arch is None or getattr(text, "is_decoder", False) and text.model_type == "bert":
        raise ConfigError(
            f"{FIELD}: the frozen-layer cache supports {', '.join(ARCHITECTURES)} backbones, "
            f"not {text.model_type!r}; leave it null (all layers adapted)"
        )
    return arch


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, blocks) of the transformer layer stack: the ``nn.ModuleList`` of
    ``num_hidden_layers`` entries (``encoder.layer`` in BERT, ``layers`` in Gemma)."""
    n = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise ConfigError(f"{FIELD}: {type(model).__name__} has no list of {n} layers")


def adapted_module_names(model: nn.Module, targets: list[str], k: int | None) -> list[str]:
    """Full names of the ``targets`` linears MoLE wraps: all of them (``k`` None), else
    those inside the top ``k`` layers. ``k`` above the layer count fails in one line."""
    from copl_ray.mole import find_target_linears

    names = find_target_linears(model, targets)
    if k is None:
        return names
    architecture(model.config)
    prefix, layers = layer_stack(model)
    if not 1 <= k <= len(layers):
        raise ConfigError(
            f"{FIELD}: {k} adapted layers, but the backbone has {len(layers)} "
            f"(expected 1..{len(layers)} or null)"
        )
    top = tuple(f"{prefix}.{i}." for i in range(len(layers) - k, len(layers)))
    kept = [n for n in names if n.startswith(top)]
    if not kept:
        raise ConfigError(f"{FIELD}: no reward.target_modules {targets} in the top {k} layers")
    return kept


# ------------------------------------------------------------------------ cache
class HiddenCache:
    """``key -> [T_i, H]`` hidden states of one text's non-pad positions, at most
    ``max_bytes`` in all; stops adding when full (module docstring). Counts hits/misses."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.store)

    def get(self, key: bytes) -> torch.Tensor | None:
        return self.store.get(key)

    def put(self, key: bytes, value: torch.Tensor) -> bool:
        size = value.numel() * value.element_size() + len(key)
        if key in self.store or self.nbytes + size > self.max_bytes:
            return False
        self.store[key] = value
        self.nbytes += size
        return True

    def clear(self) -> None:
        self.store.clear()
        self.nbytes = 0


def cache_bytes(reward_cfg: Any) -> int:
    """``reward.cache_max_mb`` in bytes: the cap of one process's cache."""
    return int(getattr(reward_cfg, "cache_max_mb", 512.0) * 2**20)


def row_keys(input_ids: torch.Tensor, mask: torch.Tensor) -> list[bytes]:
    """One key per row: its non-pad token ids as int64 (so left/right padding and int32 or
    int64 batches share a key)."""
    ids, keep = input_ids.detach().cpu().long(), mask.detach().cpu().bool()
    return [ids[i][keep[i]].numpy().tobytes() for i in range(ids.shape[0])]


@contextmanager
def _eval_mode(modules: list[nn.Module]) -> Iterator[None]:
    """Modules in eval mode for the block (cached states must not depend on dropout)."""
    flags = [(m, m.training) for top in modules for m in top.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, was in flags:
            m.training = was


class FrozenLowerLayers:
    """Runs a backbone as (cached frozen lower layers) + (top ``k`` layers, adapted).

    Holds the backbone by reference (not a submodule: no state-dict keys of its own).
    """

    def __init__(self, backbone: nn.Module, k: int, max_bytes: int) -> None:
        self.backbone, self.arch = backbone, architecture(backbone.config)
        _, layers = layer_stack(backbone)
        self.lower, self.top = list(layers[: len(layers) - k]), list(layers[len(layers) - k :])
        self.cache = HiddenCache(max_bytes)
        self.lower_calls = 0  # forwards through the lower layers (tests, benchmarks)

    def _run(self, layers: list[nn.Module], h: torch.Tensor, mask, pos) -> torch.Tensor:
        args, kwargs = self.arch.layer_args(self.backbone, h, mask, pos)
        for layer in layers:
            h = layer(h, *args, **kwargs)
        return h

    @torch.no_grad()
    def lower_states(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor):
        """Hidden states entering the first adapted layer (eval mode, no graph)."""
        self.lower_calls += 1
        with _eval_mode([self.backbone]):
            h = self.arch.embed(self.backbone, ids, pos)
            return self._run(self.lower, h, mask, pos)

    def _fill(self, ids, mask, pos, keys: list[bytes]) -> dict[bytes, torch.Tensor]:
        """Cached states of every row: hits from the cache, misses computed in one
        sub-batch (each unique text once, all-pad columns cut) and offered to the cache."""
        found: dict[bytes, torch.Tensor] = {}
        todo: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            hit = found.get(key)
            if hit is None:
                hit = self.cache.get(key)
            if hit is not None:
                found[key] = hit
            elif key not in todo:
                todo[key] = i
        self.cache.hits += len(keys) - sum(keys.count(k) for k in todo)
        self.cache.misses += sum(keys.count(k) for k in todo)
        if todo:
            rows = torch.tensor(list(todo.values()), device=ids.device)
            sub = mask[rows]
            cols = sub.any(0).nonzero()[:, 0]
            span = slice(int(cols[0]), int(cols[-1]) + 1)
            h = self.lower_states(ids[rows, span], sub[:, span], pos[rows, span])
            keep = sub[:, span].bool()
            for j, key in enumerate(todo):
                found[key] = h[j][keep[j]].clone()
                self.cache.put(key, found[key])
        return found

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """Cache the rows' texts ahead of training (e.g. every unique text once, in
        batches); returns how many texts are cached now."""
        mask = attention_mask.long()
        pos = position_ids_of(mask)
        self._fill(input_ids, mask, pos, row_keys(input_ids, mask))
        return len(self.cache)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``[N, T, H]`` (the backbone's ``last_hidden_state`` at every
        non-pad position; pad positions hold values no pooling reads)."""
        keys = row_keys(ids, mask)
        found = self._fill(ids, mask, pos, keys)
        first = found[keys[0]]
        h = first.new_zeros(*ids.shape, first.shape[-1])
        h[mask.bool()] = torch.cat([found[k] for k in keys])
        if torch.is_grad_enabled() and any(
            getattr(layer, "gradient_checkpointing", False) and layer.training for layer in self.top
        ):
            h.requires_grad_()  # reentrant checkpointing back-propagates only from such inputs
        h = self._run(self.top, h, mask, pos)
        if self.arch.final_norm:
            h = getattr(self.backbone, self.arch.final_norm)(h)
        return h


# ------------------------------------------------------------- computed once per run
def precompute_states(
    frozen: FrozenLowerLayers,
    encode: Callable[[list[str]], tuple],
    texts: list[str],
    path,
    batch: int = 64,
) -> int:
    """Every text's frozen lower-layer states, computed once and written to ``path``
    (safetensors: ``ids.{i}`` int64 tokens, ``states.{i}`` ``[T_i, H]``).

    Why a file: each training worker of each model would otherwise fill its own cache
    (on UKPConvArg1: 1,038 texts × 5 layers, ~4 min a model on 2 cores); the reward stage
    computes the states once and every worker reads them (:func:`load_states`).
    ``encode(texts) -> (input_ids, attention_mask)`` must be the training tokenisation.
    Texts are processed shortest first, so a batch pads little; it stops once the states
    fill ``frozen``'s cap (no worker could hold more). Returns the text count.
    """
    from safetensors.torch import save_file

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch):
        ids, mask = (
            torch.as_tensor(x).long()
            for x in encode([texts[i] for i in order[start : start + batch]])
        )
        frozen.prefill(ids, mask)  # the cache's own path: each distinct text once, capped
        if any(frozen.cache.get(k) is None for k in row_keys(ids, mask)):
            break  # the cap is reached: no worker could hold more (reward.cache_max_mb)
    tensors: dict[str, torch.Tensor] = {}
    for n, (key, state) in enumerate(frozen.cache.store.items()):
        tensors[f"ids.{n}"] = torch.frombuffer(bytearray(key), dtype=torch.int64)
        tensors[f"states.{n}"] = state.contiguous()
    save_file(tensors, str(path))
    return len(frozen.cache)


def load_states(frozen: FrozenLowerLayers, path) -> int:
    """Offer every state of a :func:`precompute_states` file to ``frozen``'s cache (up to
    its cap); returns how many texts are cached afterwards."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        n = sum(1 for k in f.keys() if k.startswith("ids."))
        for i in range(n):
            key = f.get_tensor(f"ids.{i}").numpy().tobytes()
            if frozen.cache.get(key) is None and not frozen.cache.put(
                key, f.get_tensor(f"states.{i}")
            ):
                break  # the cache is full
    return len(frozen.cache)
