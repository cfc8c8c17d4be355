"""Score responses for users from a finished run directory, batched across users.

One forward scores rows from many requests at once; each row carries its own user
embedding ``e_u``, which gates the MoLE per sample (batch across users,
never split a batch per user: docs/stack-notes.md S8)::

    rows   = concat_r [format_text(prompt_r, response_{r,j})]_j       (tokenised once)
    E      = concat_r repeat(e_{u_r}, n_r)                            [N, D]
    scores = f(rows, E)                                               [N]
    p(a ≻ b | u) = σ(f(u, a) − f(u, b))

Texts are truncated to the model's ``max_length`` (``reward.max_length`` as trained) and
right-padded only to the longest row of the batch; the rows are scored by
``PersonalRewardModel.score_rows``, the path training and eval score by, which pools
non-pad tokens only (``reward.pooling``: copl_ray/reward/pooling.py), so the padding
length does not change a score. Users are the GNN stage's table
(:class:`copl_ray.graph.users.UserEmbeddings`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from copl_ray.artifacts import RunDir
from copl_ray.data.tables import format_text
from copl_ray.graph.users import UserEmbeddings, path_in
from copl_ray.variants import COPL


class RunDirIncomplete(FileNotFoundError):
    """The run directory lacks an artifact serving needs; the message names the file."""


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise RunDirIncomplete(f"{path}: missing ({what}); run the pipeline stage that writes it")
    return path


def check_run_dir(run_dir: str | Path, model_name: str = COPL) -> None:
    """Fail before deploying when a file serving needs is missing (names the file)."""
    run = RunDir(run_dir)
    require(run.reward(model_name) / "reward_config.json", f"reward model {model_name!r}")
    require(path_in(run.gnn), "user embeddings from the GNN stage")
    require(run.gnn / "graph.json", "GNN graph used to adapt new users")
    require(run.data / "responses.parquet", "responses table of the data stage")


def find_tokenizer_dir(run: RunDir, model_name: str) -> Path:
    """The tokenizer saved with the model, else the run's shared tokenizer."""
    for cand in (run.reward(model_name) / "tokenizer", run.root / "tokenizer"):
        if cand.exists():
            return cand
    raise RunDirIncomplete(
        f"{run.reward(model_name) / 'tokenizer'} (or {run.root / 'tokenizer'}): missing "
        "(tokenizer saved by the reward stage)"
    )


class RewardScorer:
    """The reward model of one run directory, scoring rows with per-row user embeddings."""

    def __init__(self, run_dir: str | Path, model_name: str = COPL, device: str = "cpu"):
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
        self.max_length = self.model.max_length
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        users = require(path_in(self.run.gnn), "user embeddings from the GNN stage")
        self.users = UserEmbeddings.read(users)
        # The fast tokenizer is not safe to call from two threads at once (Rust borrow).
        self._tok_lock = threading.Lock()

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
        """Scores ``[N]`` float32 of ``rows`` for per-row user embeddings ``[N, D]`` (a
        variant without a graph user input ignores them: ``score_rows`` of the model)."""
        ids, mask = self.pad(rows)
        emb = np.ascontiguousarray(user_emb, np.float32)
        out = self.model.score_rows(ids.to(self.device), mask.to(self.device), emb)
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
