"""Score responses for users from a finished run directory, batched across users.

One forward scores rows from many requests at once; each row carries its own user
embedding ``e_u``, which gates the MoLE per sample (batch across users,
never split a batch per user: docs/stack-notes.md S8)::

    rows   = concat_r [format_text(prompt_r, response_{r,j})]_j       (tokenised once)
    E      = concat_r repeat(e_{u_r}, n_r)                            [N, D]
    scores = f(rows, E)                                               [N]
    p(a ≻ b | u) = σ(f(u, a) − f(u, b))

Texts are tokenised by ``tokenize_texts`` (truncated and right-padded to the model's
``max_length``, ``reward.max_length`` as trained) and scored by
``PersonalRewardModel.score_rows`` — the calls training and eval make — which cuts the
all-pad tail and pools non-pad tokens only (``reward.pooling``: copl_ray/reward/pooling.py), so the padding
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


# Encoded responses: (input_ids, attention_mask), int32 [n, max_length].
Rows = tuple[np.ndarray, np.ndarray]


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
        users = require(path_in(self.run.gnn), "user embeddings from the GNN stage")
        self.users = UserEmbeddings.read(users)
        # The fast tokenizer is not safe to call from two threads at once (Rust borrow).
        self._tok_lock = threading.Lock()

    # ------------------------------------------------------------ tokenisation
    def encode(self, prompt: str, responses: list[str]) -> Rows:
        """``(input_ids, attention_mask)`` int32 ``[n, max_length]`` of ``format_text(prompt, r)``
        per response: the tokeniser call training and eval make (``tokenize_texts``)."""
        from copl_ray.reward.backbone import tokenize_texts  # loaded with the model already

        texts = [format_text(prompt, r) for r in responses]
        with self._tok_lock:
            return tokenize_texts(self.tokenizer, texts, self.max_length)

    # ----------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score_rows(self, rows: Rows, user_emb: np.ndarray) -> np.ndarray:
        """Scores ``[N]`` float32 of encoded ``rows`` for per-row user embeddings ``[N, D]``
        (a variant without a graph user input ignores them: ``score_rows`` of the model,
        which also cuts the all-pad tail)."""
        ids, mask = (torch.from_numpy(a.astype(np.int64)).to(self.device) for a in rows)
        emb = np.ascontiguousarray(user_emb, np.float32)
        out = self.model.score_rows(ids, mask, emb)
        return out.detach().float().cpu().numpy().reshape(-1)

    def score_requests(self, requests: list[tuple[np.ndarray, Rows]]) -> list[np.ndarray]:
        """One forward over many requests ``(user_emb [D], rows)``; scores split back per request."""
        sizes = [len(rows[0]) for _, rows in requests]
        embs = [
            np.broadcast_to(np.asarray(emb, np.float32), (n, emb.shape[0]))
            for (emb, _), n in zip(requests, sizes)
        ]
        rows = tuple(np.concatenate([r[k] for _, r in requests]) for k in (0, 1))
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
