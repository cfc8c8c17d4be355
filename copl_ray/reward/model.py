"""PersonalRewardModel: frozen backbone + MoLE adapters + linear ``score`` head.

``f(u, x) = score(pool(h(x; W0 + ΔW_u)))`` where ``h`` are the final hidden states
(position ids from the attention mask, so left and right padding give the same score),
``pool`` is ``reward.pooling`` (copl_ray/reward/pooling.py: the last non-pad token for
decoders, ``[CLS]`` or the masked mean for encoders) and ``ΔW_u`` the MoLE update gated by
the user (copl_ray/mole). Variants
(docs/method.md §3):

- ``copl``    — MoLE (M experts of rank r + shared) gated by the frozen GNN embedding ``e_u``;
- ``uniform`` — one LoRA of rank ``baseline_rank``, no user input (Oracle = one per group);
- ``no_gnn``  — MoLE gated by a free learnable table ``nn.Embedding(n_users, user_dim)``;
- ``no_mole`` — ``e_u`` → Linear → one extra input token prepended (via ``inputs_embeds``),
  plus one LoRA of rank ``baseline_rank``;
- ``i2e``, ``i2e_proxy``, ``pal``, ``pref``, ``lore`` — the personalised baselines, a free
  row per seen user read as an input token or by a user head (copl_ray/reward/baselines.py).

``reward.adapted_layers = k`` puts the adapters in the top ``k`` transformer layers only and
runs the frozen layers below once per text, cached (copl_ray/reward/frozen_cache.py; same
scores and gradients). Token variants (no_mole, i2e, i2e_proxy) feed the user into the first
layer, so they keep the full forward (adapters still only in the top ``k``).

Baseline LoRAs keep the scaling ``α/r`` of the MoLE (their α is ``alpha·baseline_rank/rank``).
Batching of pairs: pass ``[chosen_1..B, rejected_1..B]`` (2B rows) with ``B`` users; the
gate (and its training noise) is computed once per user and shared by both rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from copl_ray.mole import MoLEConfig, MoLEModel
from copl_ray.reward.backbone import (
    DTYPES,
    TINY_GEMMA,
    backbone_from_config,
    backbone_path,
    build_backbone,
    load_tokenizer,
    tokenize_texts,
)
from copl_ray.reward.baselines import (
    FROZEN_ARCHITECTURES,
    HEAD_ARCHITECTURES,
    TOKEN_ARCHITECTURES,
    ProxyMix,
    UserHead,
    VPLHead,
    init_user_rows,
    user_row_dim,
)
from copl_ray.reward.frozen_cache import FrozenLowerLayers, adapted_module_names, cache_bytes
from copl_ray.reward.pooling import last_token_index, pool, position_ids_of, resolve_pooling
from copl_ray.variants import ARCHITECTURES, COPL, I2E_PROXY, NO_GNN, VPL
from copl_ray.variants import variant as variant_of

__all__ = ["PersonalRewardModel", "btl_loss", "last_token_index", "trim_padding"]

# The saved folder (``PersonalRewardModel.save``)::
#
#     reward_config.json   {"format", "variant", "user_dim", "n_users", "reward": {...},
#                           "backbone", "backbone_config" (config-built backbones only),
#                           "backbone_weights_included", "pooling"}
#     model.safetensors    adapters, gates, head, user table/projection
#                          (+ "mole.model.*" frozen weights when the backbone is config-built)
#     tokenizer/           when the model has a tokenizer
FORMAT = "copl-ray-reward/1"
CONFIG_FILE = "reward_config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_PREFIX = "mole.model."


def btl_loss(scores_chosen: torch.Tensor, scores_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry–Luce loss ``mean(−log σ(c − r))``."""
    return -F.logsigmoid(scores_chosen.float() - scores_rejected.float()).mean()


def trim_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the columns where every row is padding (right-padded rows).

    Exact: with causal attention no position attends to a later one, and the pooling reads
    non-pad tokens only, so the scores do not depend on how far the rows were padded.
    """
    width = int(attention_mask.sum(1).max())
    return input_ids[:, :width], attention_mask[:, :width]


def _is_trainable_key(key: str) -> bool:
    return not key.startswith(BACKBONE_PREFIX) or "lora_" in key


def _user_input(architecture: str) -> str:
    """What the architecture's forward takes for a user: ``graph`` (``user_emb``),
    ``table`` (``user_index``) or ``none`` (copl_ray/variants.py)."""
    return variant_of(architecture).user_input


def _as_tensor(x: Any, device: torch.device) -> torch.Tensor:
    """A tensor stays where the caller put it (the training batch is on the worker's
    device); numpy input is copied (it may be a read-only view) onto ``device``."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.array(x)).to(device)


def _tile(x: torch.Tensor | None, n_rows: int, what: str) -> torch.Tensor | None:
    if x is None:
        return None
    if x.shape[0] == 0 or n_rows % x.shape[0]:
        raise ValueError(f"{what}: {x.shape[0]} rows do not divide the {n_rows} input rows")
    return x.repeat(n_rows // x.shape[0], *([1] * (x.dim() - 1)))


class PersonalRewardModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        reward_cfg: Any,
        variant: str,
        user_dim: int,
        n_users: int | None = None,
        tokenizer: Any | None = None,
    ) -> None:
        super().__init__()
        if variant not in ARCHITECTURES:
            raise ValueError(f"variant: expected one of {list(ARCHITECTURES)}, got {variant!r}")
        self.user_input = _user_input(variant)
        if self.user_input == "table" and not n_users:
            raise ValueError(f"variant {variant!r} needs n_users (size of the user table)")
        self.reward_cfg, self.variant = reward_cfg, variant
        self.user_dim, self.n_users, self.tokenizer = user_dim, n_users, tokenizer
        adapter_dtype = DTYPES[reward_cfg.adapter_dtype]
        hidden = backbone.config.get_text_config().hidden_size
        folder = None if reward_cfg.backbone == TINY_GEMMA else backbone_path(reward_cfg.backbone)
        self.pooling = resolve_pooling(reward_cfg.pooling, backbone.config, folder)
        if variant in FROZEN_ARCHITECTURES and reward_cfg.frozen_pooling != "same":
            self.pooling = reward_cfg.frozen_pooling  # the frozen-feature baselines' own
        k = getattr(reward_cfg, "adapted_layers", None)
        targets = adapted_module_names(backbone, list(reward_cfg.target_modules), k)
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG untouched
            torch.manual_seed(reward_cfg.seed + 1)
            if variant in (COPL, NO_GNN):  # MoLE gated by the user
                mole_cfg = MoLEConfig.from_reward_config(
                    reward_cfg, user_dim, target_modules=targets
                )
            else:
                r = reward_cfg.baseline_rank
                mole_cfg = MoLEConfig.from_reward_config(
                    reward_cfg,
                    None,
                    target_modules=targets,
                    num_experts=0,
                    rank=r,
                    alpha=reward_cfg.alpha * r / reward_cfg.rank,
                )
            self.mole = MoLEModel(backbone, mole_cfg)
            if variant in FROZEN_ARCHITECTURES:  # the method reads frozen features (B = 0)
                for name, p in self.mole.named_parameters():
                    if "lora_" in name:
                        p.requires_grad_(False)
            self._build_user_parts(hidden, adapter_dtype, next(backbone.parameters()).device)
        # plain attribute, not a submodule: it holds the backbone by reference
        self.frozen: FrozenLowerLayers | None = None
        if k is not None and variant not in TOKEN_ARCHITECTURES:
            max_bytes = cache_bytes(reward_cfg)
            self.frozen = FrozenLowerLayers(backbone, k, max_bytes)

    def _build_user_parts(self, hidden: int, dtype: torch.dtype, dev: torch.device) -> None:
        """The score vector or user head, the free user table and the user-token projection
        of the variant (seeded by the caller)."""
        variant, k = self.variant, self.reward_cfg.num_prototypes
        self.score = self.head = self.user_table = self.user_proj = self.proxy_mix = None
        self.kl_weight = 0.0  # VPL's β_t (set_progress)
        if variant == VPL:
            self.head = VPLHead(hidden, self.user_dim, dtype, dev)
        elif variant in HEAD_ARCHITECTURES:
            self.head = UserHead(variant, hidden, k, self.user_dim, dtype, dev)
        else:
            self.score = nn.Linear(hidden, 1, bias=False, dtype=dtype, device=dev)
            nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(hidden))
        if self.user_input == "table":
            width = user_row_dim(variant, self.user_dim, k)
            self.user_table = nn.Embedding(self.n_users, width, dtype=dtype, device=dev)
            init_user_rows(self.user_table, variant)
        if variant in TOKEN_ARCHITECTURES:
            self.user_proj = nn.Linear(self.user_dim, hidden, dtype=dtype, device=dev)
        if variant == I2E_PROXY:
            self.proxy_mix = ProxyMix(k, self.user_dim, dtype, dev)

    # ----------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        reward_cfg: Any,
        variant: str,
        user_dim: int,
        n_users: int | None = None,
        tokenizer: Any | None = None,
    ) -> PersonalRewardModel:
        """Backbone from ``reward_cfg`` (:func:`build_backbone`), adapters, head; seeded."""
        return cls(
            build_backbone(reward_cfg, tokenizer), reward_cfg, variant, user_dim, n_users, tokenizer
        )

    @property
    def backbone(self) -> nn.Module:
        return self.mole.model

    def clear_cache(self) -> None:
        """Drop the cached frozen-layer states (they derive from the backbone weights)."""
        if getattr(self, "frozen", None) is not None:
            self.frozen.cache.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> PersonalRewardModel:
        self.clear_cache()  # .to(device/dtype), .half(), ...: cached states would be stale
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.clear_cache()
        return super().load_state_dict(*args, **kwargs)

    @property
    def aux_loss(self) -> torch.Tensor:
        """Extra loss of the last forward: the MoLE load-balancing term (coef·M·Σ f_i P_i;
        0 without a gate), or VPL's ``β_t·KL``."""
        if self.variant == VPL:
            return self.kl_weight * self.head.kl
        return self.mole.aux_loss

    def set_progress(self, fraction: float) -> None:
        """Training progress ``step / total``: VPL's KL weight ramps from 0 to
        ``reward.vpl_beta`` over the first ``reward.vpl_anneal`` of the steps."""
        rc = self.reward_cfg
        ramp = 1.0 if rc.vpl_anneal <= 0 else min(1.0, fraction / rc.vpl_anneal)
        self.kl_weight = rc.vpl_beta * ramp

    def expert_usage(self) -> torch.Tensor | None:
        return self.mole.expert_usage()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def gradient_checkpointing_enable(self, use_reentrant: bool = True) -> None:
        """Checkpoint the backbone layers. The frozen backbone needs its input to require
        grad for reentrant checkpointing: ``enable_input_require_grads`` does that with a
        hook (the official code made the whole embedding matrix trainable: bug B8 of
        docs/reference-code.md). Recomputation reuses the forward's route (same gates, same
        noise) and never re-runs the gate; the route detects reentrant checkpointing itself,
        so calling HF's method directly works too (RouteContext)."""
        self.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
        )
        if use_reentrant:
            self.backbone.enable_input_require_grads()

    # ----------------------------------------------------------------- routing
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def user_at_head(self) -> bool:
        """The user enters only after pooling (PAL / PReF / LoRe): ``h(x)`` is user-free."""
        return self.head is not None

    def gate_input(
        self,
        user_emb: torch.Tensor | None,
        user_index: torch.Tensor | None,
        user_row: torch.Tensor | None = None,
        user_context: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """What drives the gate / user token / user head: ``e_u`` (graph variants), the
        table row of ``user_index``, ``user_row`` given directly (a row being fitted
        for an unseen user, copl_ray/reward/fit_users.py) or VPL's latent of the user's
        ``user_context`` ``[B, C, 2H + 1]``."""
        if self.user_input == "none":
            return None
        if self.user_input == "context":
            if user_context is None:  # positional callers pass it where others pass e_u
                user_context = user_emb
            if user_context is None or user_context.dim() != 3:
                got = None if user_context is None else tuple(user_context.shape)
                raise ValueError(
                    f"variant {self.variant!r} needs user_context [B, C, 2H+1], got {got}"
                )
            return self.head.encode(user_context)
        if self.user_input == "table":
            if user_row is not None:
                width = self.user_table.embedding_dim
                if user_row.dim() != 2 or user_row.shape[1] != width:
                    raise ValueError(
                        f"user_row: expected shape [B, {width}], got {tuple(user_row.shape)}"
                    )
                return user_row
            if user_index is None:
                raise ValueError(f"variant {self.variant!r} needs user_index (LongTensor [B])")
            if user_index.numel() and (user_index.min() < 0 or user_index.max() >= self.n_users):
                raise ValueError(
                    f"user_index: values must be in [0, {self.n_users}), got "
                    f"[{int(user_index.min())}, {int(user_index.max())}]"
                )
            return self.user_table(user_index)
        if user_emb is None:
            raise ValueError(f"variant {self.variant!r} needs user_emb [B, {self.user_dim}]")
        if user_emb.dim() != 2 or user_emb.shape[1] != self.user_dim:
            raise ValueError(
                f"user_emb: expected shape [B, {self.user_dim}], got {tuple(user_emb.shape)}"
            )
        return user_emb

    def gate_weights(
        self, user_emb: torch.Tensor | None = None, user_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Expert weights without noise: ``[B, M]``, or ``[n_modules, B, M]`` per-module."""
        if self.mole.gate is None:
            raise ValueError(f"variant {self.variant!r} has no gate")
        return self.mole.gate_weights(self.gate_input(user_emb, user_index))

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        user_emb: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
        user_row: torch.Tensor | None = None,
        user_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores ``[N]`` fp32. The user input has ``B`` rows, ``N = k·B``."""
        # the user input (GNN embedding or user-table rows) is built ONCE per forward,
        # outside any checkpointed block: under ZeRO each trainable parameter must get its
        # gradient in one backward graph task (RouteContext)
        user = self.gate_input(user_emb, user_index, user_row, user_context)
        return self.head_scores(self.features(input_ids, attention_mask, user), user)

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, user: torch.Tensor | None
    ) -> torch.Tensor:
        """Pooled final hidden states ``h [N, H]``; ``user`` routes the MoLE gate or becomes
        the input token (user-free for the head and user-free variants)."""
        n = input_ids.shape[0]
        mask = attention_mask.long()
        kwargs: dict[str, Any] = {}
        token = self.variant in TOKEN_ARCHITECTURES
        if token:  # the user enters as a token, the LoRA is shared
            embed = self.backbone.get_input_embeddings()
            v = user if self.proxy_mix is None else self.proxy_mix(user)
            t = self.user_proj(_tile(v, n, "user input").to(self.user_proj.weight.dtype))
            kwargs["inputs_embeds"] = torch.cat(
                [t[:, None].to(embed.weight.dtype), embed(input_ids)], 1
            )
            mask = torch.cat([mask.new_ones(n, 1), mask], 1)
        else:
            kwargs["input_ids"] = input_ids
        position_ids = position_ids_of(mask)
        with self.mole.routed(user if self.mole.gate is not None else None, n):
            if self.frozen is not None:
                hidden = self.frozen.forward(input_ids, mask, position_ids)
            else:
                hidden = self.backbone(
                    attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs
                ).last_hidden_state
        return pool(hidden, mask, self.pooling, n_prefix=int(token))

    def head_scores(self, pooled: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor:
        """Scores ``[N]`` fp32 of pooled features: the score vector, or the user head with
        the users' rows tiled over the ``N`` rows."""
        if self.head is not None:
            return self.head(pooled, _tile(user, pooled.shape[0], "user rows")).float()
        return self.score(pooled.to(self.score.weight.dtype)).squeeze(-1).float()

    # ----------------------------------------------------------------- scoring
    @property
    def max_length(self) -> int:
        """Token length texts are truncated to, as trained (saved in reward_config.json)."""
        return int(self.reward_cfg.max_length)

    def user_inputs(
        self, user_emb: Any = None, user_index: Any = None, user_row: Any = None
    ) -> dict[str, Any]:
        """The user keyword of :meth:`forward` this variant reads (the rest is dropped):
        ``user_emb`` (graph embedding; VPL: the user's context), ``user_row`` or
        ``user_index`` (free table row)."""
        dev = self.device
        if self.user_input in ("graph", "context") and user_emb is not None:
            return {"user_emb": _as_tensor(user_emb, dev)}  # VPL: gate_input reads it as context
        if self.user_input == "table" and user_row is not None:
            return {"user_row": _as_tensor(user_row, dev)}
        if self.user_input == "table" and user_index is not None:
            return {"user_index": _as_tensor(user_index, dev)}
        return {}

    def score_rows(
        self,
        input_ids: Any,
        attention_mask: Any,
        user_emb: Any = None,
        user_index: Any = None,
        forward: Callable[..., torch.Tensor] | None = None,
        user_row: Any = None,
    ) -> torch.Tensor:
        """Scores ``[N]`` fp32 of right-padded token rows for a user input: the one path
        from tokenised rows to scores (training, eval and serving all call it).

        The all-pad tail is cut (:func:`trim_padding`, exact), and only the user input
        the variant takes is passed on (:meth:`user_inputs`), so a caller may pass both.
        ``forward`` runs the model: the DeepSpeed engine wrapping it in training (its
        hooks gather ZeRO-3 parameters), the model itself otherwise.
        """
        dev = self.device
        ids, mask = trim_padding(_as_tensor(input_ids, dev), _as_tensor(attention_mask, dev))
        kwargs = self.user_inputs(user_emb, user_index, user_row)
        return (forward or self)(ids, mask, **kwargs).float()

    def response_features(self, input_ids: Any, attention_mask: Any, batch_size: int = 256):
        """User-free pooled features ``h [R, H]`` fp32 of right-padded token rows, no
        gradient, ``batch_size`` rows per forward: what a user head (PAL / PReF / LoRe /
        VPL) reads, computed once for many users."""
        dev, out = self.device, []
        with torch.no_grad():
            for i in range(0, len(input_ids), batch_size):
                ids = _as_tensor(input_ids[i : i + batch_size], dev)
                mask = _as_tensor(attention_mask[i : i + batch_size], dev)
                out.append(self.features(*trim_padding(ids, mask), None).float())
        return torch.cat(out) if out else torch.zeros(0, 0, device=dev)

    def score_texts(
        self,
        texts: list[str],
        user_emb: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokenise with the model's tokenizer (``tokenize_texts``: the scoring paths' one
        tokeniser call) and score."""
        if self.tokenizer is None:
            raise ValueError("score_texts needs a tokenizer (build/load with one)")
        ids, mask = tokenize_texts(self.tokenizer, texts, self.max_length)
        ids, mask = (torch.from_numpy(a.astype(np.int64)) for a in (ids, mask))
        return self.score_rows(ids, mask, user_emb, user_index)

    # ----------------------------------------------------------------- persistence
    def save(self, out_dir: str | Path) -> Path:
        """``model.safetensors`` + ``reward_config.json`` (+ ``tokenizer/``): see FORMAT."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rc = self.reward_cfg
        include_backbone = rc.backbone == TINY_GEMMA
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if include_backbone or _is_trainable_key(k)
        }
        save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "variant": self.variant,
            "user_dim": self.user_dim,
            "n_users": self.n_users,
            "reward": dataclasses.asdict(rc),  # carries max_length (:attr:`max_length`)
            "backbone": rc.backbone,
            "backbone_config": self.backbone.config.to_dict() if include_backbone else None,
            "backbone_weights_included": include_backbone,
            "pooling": self.pooling,  # reward.pooling resolved for this backbone
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out / "tokenizer")
        return out

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> PersonalRewardModel:
        """What :meth:`save` wrote, on ``device``, in eval mode; a wrong folder fails naming it."""
        from copl_ray.config import config_from_dict

        d = Path(model_dir)
        if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists():
            raise FileNotFoundError(
                f"{d}: not a copl-ray reward model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        meta = json.loads((d / CONFIG_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{d / CONFIG_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}"
            )
        rc = config_from_dict({"reward": meta["reward"]}).reward
        tokenizer = load_tokenizer(d / "tokenizer") if (d / "tokenizer").exists() else None
        if meta["backbone_weights_included"]:
            backbone = backbone_from_config(meta["backbone_config"], rc.backbone_dtype)
        else:
            backbone = build_backbone(rc, tokenizer)
        model = cls(backbone, rc, meta["variant"], meta["user_dim"], meta["n_users"], tokenizer)
        result = model.load_state_dict(load_file(str(d / WEIGHTS_FILE)), strict=False)
        missing = [
            k
            for k in result.missing_keys
            if _is_trainable_key(k) or meta["backbone_weights_included"]
        ]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{d / WEIGHTS_FILE}: missing {missing[:5]} / unexpected "
                f"{result.unexpected_keys[:5]} tensors (of {len(missing)} / "
                f"{len(result.unexpected_keys)})"
            )
        return model.to(device).eval()
