"""The data contract: four canonical tables, the same for every source.

- ``responses``:   response_id:int64, prompt_id:int64, prompt:str, text:str
  (``text`` is the response alone; the model input is ``format_text(prompt, text)``)
- ``pairs``:       pair_id:int64, prompt_id:int64, response_a:int64, response_b:int64,
  controversial:bool (null where unknown), heldout:bool (prompt held out of the survey set),
  and one ``label_<group>:int8`` column per known preference group: +1 when the group
  prefers response_a, -1 when it prefers response_b.
- ``annotations``: user_id:str, pair_id:int64, chosen:int64, rejected:int64,
  split:str in {"survey", "val", "test"}. ``survey`` labels build the graph and train
  the models; ``val`` is the one held-back label per user used to select checkpoints;
  ``test`` pairs come from held-out prompts and are labelled by the user's own group.
  For an unseen user, ``survey`` labels are the few labels used for adaptation.
- ``users``:       user_id:str, seen:bool, group:str (null where unknown)

``DataSummary`` carries counts and drops by reason into ``summary.json`` and the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("survey", "val", "test")

RESPONSES_SCHEMA = pa.schema(
    [
        ("response_id", pa.int64()),
        ("prompt_id", pa.int64()),
        ("prompt", pa.string()),
        ("text", pa.string()),
    ]
)
ANNOTATIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("pair_id", pa.int64()),
        ("chosen", pa.int64()),
        ("rejected", pa.int64()),
        ("split", pa.string()),
    ]
)
USERS_SCHEMA = pa.schema([("user_id", pa.string()), ("seen", pa.bool_()), ("group", pa.string())])
PAIRS_BASE_COLUMNS = (
    "pair_id",
    "prompt_id",
    "response_a",
    "response_b",
    "controversial",
    "heldout",
)


def format_text(prompt: str, response: str) -> str:
    """Model input for one response, the UF-P convention."""
    return f"Human: {prompt}\n\nAssistant: {response}"


def label_column(group: str) -> str:
    return f"label_{group}"


@dataclass
class DataSummary:
    source: str
    n_users_seen: int = 0
    n_users_unseen: int = 0
    n_responses: int = 0
    n_pairs: int = 0
    n_pool_pairs: int = 0  # survey pool (non-held-out prompts) before user sampling
    n_annotations: dict[str, int] = field(default_factory=dict)  # by split
    labels_per_user: dict[str, float] = field(default_factory=dict)  # min/median/max survey+val
    controversial_share: float | None = None
    controversial_definition: str | None = None  # the rule behind pairs.controversial
    groups: list[str] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)  # reason -> count
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.drops[reason] = self.drops.get(reason, 0) + int(n)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"source: {self.source}",
            f"users: {self.n_users_seen} seen, {self.n_users_unseen} unseen; groups: {self.groups or 'unknown'}",
            f"responses: {self.n_responses}; pairs: {self.n_pairs} (survey pool {self.n_pool_pairs})",
            f"annotations: {self.n_annotations}",
            "labels per seen user (survey+val): "
            + ", ".join(f"{k} {v:g}" for k, v in self.labels_per_user.items()),
            f"controversial share of pairs: {self.controversial_share}"
            + (f" ({self.controversial_definition})" if self.controversial_definition else ""),
            "drops: " + (", ".join(f"{k}={v}" for k, v in sorted(self.drops.items())) or "none"),
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class PreferenceTables:
    responses: pd.DataFrame
    pairs: pd.DataFrame
    annotations: pd.DataFrame
    users: pd.DataFrame
    summary: DataSummary
    # source-specific side tables written as ``<name>.parquet`` beside the four (e.g. the
    # known truth of PersonalLLM's simulated users); no stage reads them
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return [c[len("label_") :] for c in self.pairs.columns if c.startswith("label_")]

    def write(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(self.responses, schema=RESPONSES_SCHEMA, preserve_index=False),
            folder / "responses.parquet",
        )
        pq.write_table(
            pa.Table.from_pandas(self.pairs, preserve_index=False), folder / "pairs.parquet"
        )
        pq.write_table(
            pa.Table.from_pandas(self.annotations, schema=ANNOTATIONS_SCHEMA, preserve_index=False),
            folder / "annotations.parquet",
        )
        pq.write_table(
            pa.Table.from_pandas(self.users, schema=USERS_SCHEMA, preserve_index=False),
            folder / "users.parquet",
        )
        for name, frame in self.extras.items():
            pq.write_table(
                pa.Table.from_pandas(frame, preserve_index=False), folder / f"{name}.parquet"
            )
        (folder / "summary.json").write_text(json.dumps(self.summary.to_dict(), indent=2))

    @classmethod
    def read(cls, folder: str | Path) -> PreferenceTables:
        folder = Path(folder)
        s = json.loads((folder / "summary.json").read_text())
        return cls(
            responses=pq.read_table(folder / "responses.parquet").to_pandas(),
            pairs=pq.read_table(folder / "pairs.parquet").to_pandas(),
            annotations=pq.read_table(folder / "annotations.parquet").to_pandas(),
            users=pq.read_table(folder / "users.parquet").to_pandas(),
            summary=DataSummary(**s),
        )


def drop_unreferenced_responses(
    responses: pd.DataFrame, pairs: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Keep only the responses some pair references, renumbered ``0..R-1`` in their order.

    ``responses.response_id`` must equal the row position. Returns ``(responses, pairs,
    remap)`` with ``pairs.response_a/b`` renumbered and ``remap[old_id]`` = the new id
    (``-1``: dropped), for other columns holding response ids (``chosen``, ``rejected``).
    """
    used = np.unique(np.r_[pairs["response_a"], pairs["response_b"]])
    remap = np.full(len(responses), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    responses = responses.iloc[used].reset_index(drop=True)
    responses["response_id"] = np.arange(len(responses), dtype=np.int64)
    pairs = pairs.assign(
        response_a=remap[pairs["response_a"]], response_b=remap[pairs["response_b"]]
    )
    return responses, pairs, remap


def keep_annotated(
    responses: pd.DataFrame, pairs: pd.DataFrame, ann: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Only the pairs some annotation references and their responses, both renumbered
    ``0..n-1`` in their order, with ``ann``'s ids (``pair_id``, ``chosen``, ``rejected``)
    mapped along. ``pairs.pair_id`` and ``responses.response_id`` must be row positions."""
    ann = ann.copy()
    used_pairs = np.unique(ann["pair_id"])
    pairs = pairs[pairs["pair_id"].isin(used_pairs)].reset_index(drop=True)
    pid_map = pd.Series(np.arange(len(pairs), dtype=np.int64), index=pairs["pair_id"])
    ann["pair_id"] = pid_map[ann["pair_id"]].to_numpy()
    pairs["pair_id"] = np.arange(len(pairs), dtype=np.int64)
    responses, pairs, rmap = drop_unreferenced_responses(responses, pairs)
    for c in ("chosen", "rejected"):
        ann[c] = rmap[ann[c].to_numpy()]
    return responses, pairs, ann
