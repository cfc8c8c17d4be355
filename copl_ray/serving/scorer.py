"""Score responses for users from a finished run directory, batched across users.

One forward scores rows from many requests at once; each row carries its own user
embedding ``e_u``, which gates the MoLE per sample (batch across users,
never split a batch per user: docs/stack-notes.md S8)::

    rows   = concat_r [format_text(prompt_r, response_{r,j})]_j       (tokenised once)
    E      = concat_r repeat(e_{u_r}, n_r)                            [N, D]
    scores = f(rows, E)                                               [N]
    p(a ≻ b | u) = σ(f(u, a) − f(u, b))

Texts are truncated to ``reward.max_length`` exactly like training
(``copl_ray.data.ray_data.tokenize_texts``) and right-padded only to the longest row of
the batch; the model pools non-pad tokens only (``reward.pooling``, the function the
trained model and the per-user export share: copl_ray/reward/pooling.py), so the padding
length does not change a score.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from copl_ray.artifacts import RunDir
from copl_ray.data.tables import format_text

# Variants whose forward takes the user embedding; "uniform" takes no user input.
USER_EMB_VARIANTS = ("copl", "no_mole")


class RunDirIncomplete(FileNotFoundError):
    """The run directory lacks an artifact serving needs; the message names the file."""


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise RunDirIncomplete(f"{path}: missing ({what}); run the pipeline stage that writes it")
    return path


def check_run_dir(run_dir: str | Path, model_name: str = "copl") -> None:
    """Fail before deploying when a file serving needs is missing (names the file)."""
    run = RunDir(run_dir)
    require(run.reward(model_name) / "reward_config.json", f"reward model {model_name!r}")
    require(run.gnn / "user_embeddings.parquet", "user embeddings from the GNN stage")
    require(run.gnn / "graph.json", "GNN graph used to adapt new users")
    require(run.data / "responses.parquet", "responses table of the data stage")


@dataclass
class UserRow:
    """A user the run already knows (trained seen user, or an offline-adapted unseen one)."""

    user_id: str
    embedding: np.ndarray  # [D] float32
    kind: str  # "trained" | "adapted"
    seen: bool
    n_neighbors: int
    fallback: bool


class UserTable:
    """``gnn/user_embeddings.parquet`` in memory: id -> row of one float32 matrix."""

    def __init__(self, path: Path):
        df = pq.read_table(require(path, "user embeddings from the GNN stage")).to_pandas()
        missing = {"user_id", "embedding"} - set(df.columns)
        if missing:
            raise RunDirIncomplete(f"{path}: missing column(s) {sorted(missing)}")
        self.ids = [str(u) for u in df["user_id"]]
        self.matrix = np.stack([np.asarray(e, dtype=np.float32) for e in df["embedding"]])
        self.index = {u: i for i, u in enumerate(self.ids)}
        n = len(df)
        self.kind = list(df["kind"]) if "kind" in df else ["trained"] * n
        self.seen = [bool(s) for s in df["seen"]] if "seen" in df else [True] * n
        self.n_neighbors = [int(x) for x in df["n_neighbors"]] if "n_neighbors" in df else [0] * n
        self.fallback = [bool(x) for x in df["fallback"]] if "fallback" in df else [False] * n

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, user_id: str) -> UserRow | None:
        i = self.index.get(user_id)
        if i is None:
            return None
        return UserRow(
            user_id,
            self.matrix[i],
            self.kind[i],
            self.seen[i],
            self.n_neighbors[i],
            self.fallback[i],
        )


def find_tokenizer_dir(run: RunDir, model_name: str) -> Path:
    """The tokenizer saved with the model, else the run's shared tokenizer."""
    for cand in (run.reward(model_name) / "tokenizer", run.root / "tokenizer"):
        if cand.exists():
            return cand
    raise RunDirIncomplete(
        f"{run.reward(model_name) / 'tokenizer'} (or {run.root / 'tokenizer'}): missing "
        "(tokenizer saved by the reward stage)"
    )


def reward_max_length(model_dir: Path, model) -> int:
    """``max_length`` the model was trained with (reward_config.json), else the model's cfg."""
    cfg_path = model_dir / "reward_config.json"
    if cfg_path.exists():
        d = json.loads(cfg_path.read_text())
        for node in (d, d.get("reward", {}), d.get("reward_cfg", {}), d.get("config", {})):
            if isinstance(node, dict) and isinstance(node.get("max_length"), int):
                return int(node["max_length"])
    for attr in ("reward_cfg", "cfg", "config"):
        v = getattr(getattr(model, attr, None), "max_length", None)
        if isinstance(v, int):
            return v
    raise RunDirIncomplete(f"{cfg_path}: no max_length found for the reward model")


class RewardScorer:
    """The reward model of one run directory, scoring rows with per-row user embeddings."""

    def __init__(self, run_dir: str | Path, model_name: str = "copl", device: str = "cpu"):
        from copl_ray.reward.backbone import load_tokenizer
        from copl_ray.reward.model import PersonalRewardModel

        self.run = RunDir(run_dir)
        self.model_name = model_name
        model_dir = require(self.run.reward(model_name), f"reward model {model_name!r}")
        self.device = torch.device(device)
        self.model = PersonalRewardModel.load(model_dir).to(self.device).eval()
        self.variant = str(getattr(self.model, "variant", model_name))
        self.tokenizer = load_tokenizer(find_tokenizer_dir(self.run, model_name))
        self.tokenizer.padding_side = "right"
        self.max_length = reward_max_length(model_dir, self.model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.users = UserTable(self.run.gnn / "user_embeddings.parquet")
        # The fast tokenizer is not safe to call from two threads at once (Rust borrow).
        self._tok_lock = threading.Lock()

    @property
    def uses_user(self) -> bool:
        return self.variant in USER_EMB_VARIANTS

    # ------------------------------------------------------------ tokenisation
    def encode(self, prompt: str, responses: list[str]) -> list[list[int]]:
        """Token ids of ``format_text(prompt, r)`` for each response, truncated, unpadded."""
        texts = [format_text(prompt, r) for r in responses]
        with self._tok_lock:
            enc = self.tokenizer(texts, max_length=self.max_length, truncation=True)
        return [list(ids) for ids in enc["input_ids"]]

    def pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest row: ``(input_ids, attention_mask)`` long ``[N, L]``."""
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    # ----------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score_rows(self, rows: list[list[int]], user_emb: np.ndarray) -> np.ndarray:
        """Scores ``[N]`` float32 of ``rows`` for per-row user embeddings ``[N, D]``."""
        ids, mask = self.pad(rows)
        kwargs = {}
        if self.uses_user:
            kwargs["user_emb"] = torch.from_numpy(np.ascontiguousarray(user_emb, np.float32)).to(
                self.device
            )
        out = self.model(ids.to(self.device), mask.to(self.device), **kwargs)
        return out.detach().float().cpu().numpy().reshape(-1)

    def score_requests(
        self, requests: list[tuple[np.ndarray, list[list[int]]]]
    ) -> list[np.ndarray]:
        """One forward over many requests ``(user_emb [D], rows)``; scores split back per request."""
        rows: list[list[int]] = []
        embs: list[np.ndarray] = []
        sizes = []
        for emb, req_rows in requests:
            rows.extend(req_rows)
            embs.append(np.broadcast_to(np.asarray(emb, np.float32), (len(req_rows), emb.shape[0])))
            sizes.append(len(req_rows))
        scores = self.score_rows(rows, np.concatenate(embs, axis=0))
        return np.split(scores, np.cumsum(sizes)[:-1])

    def score(self, user_emb: np.ndarray, prompt: str, responses: list[str]) -> np.ndarray:
        """In-process scoring of one request (the reference the HTTP path must match)."""
        return self.score_requests([(user_emb, self.encode(prompt, responses))])[0]

    def warmup(self) -> None:
        """One forward so the first request does not pay lazy initialisation."""
        emb = self.users.matrix[0] if len(self.users) else np.zeros(1, np.float32)
        self.score(emb, "warm-up", ["a", "b"])


def response_index(responses: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Exact ``(prompt, text) -> response_id``; duplicates keep the smallest id."""
    df = responses.sort_values("response_id", kind="stable")
    out: dict[tuple[str, str], int] = {}
    for p, t, rid in zip(df["prompt"], df["text"], df["response_id"]):
        out.setdefault((str(p), str(t)), int(rid))
    return out
