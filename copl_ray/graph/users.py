"""A user's embedding: the one record and the one file every stage reads it through.

The GNN stage writes ``gnn/user_embeddings.parquet`` once — every seen user's trained
embedding and every unseen user's embedding adapted from their survey labels — and the
reward stage (MoLE gate input), eval (seen / unseen scoring) and serving (request
routing, and users created at request time) read the same :class:`UserEmbedding`
records through :class:`UserEmbeddings`. Nothing else opens the file.

Columns (parquet, never pickle)::

    user_id       string        the data's user id
    embedding     list<float32> [d], at the export scale the reward model sees
                                (L2-normalised when gnn.normalize_embeddings)
    seen          bool          the user's labels trained the GNN
    kind          string        "trained" (a seen user's GNN row) | "adapted" (from labels)
                                (serving's users created at request time: "created")
    n_neighbors   int32         seen users the adaptation averaged (0 for trained rows)
    fallback      bool          no positive-edge neighbour: a fallback embedding was used
    fallback_kind string        "" | "any_sign" | "mean_user"
    n_unknown     int32         the user's labels with a response that is no graph node

``n_unknown`` counts *labels* everywhere (offline adaptation and serving alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FILE_NAME = "user_embeddings.parquet"
# How a user's embedding was obtained. CREATED never reaches the file: the server adapts
# such a user at request time and keeps the record in its own store (copl_ray.serving.store).
TRAINED, ADAPTED, CREATED = "trained", "adapted", "created"

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("seen", pa.bool_()),
        ("kind", pa.string()),
        ("n_neighbors", pa.int32()),
        ("fallback", pa.bool_()),
        ("fallback_kind", pa.string()),
        ("n_unknown", pa.int32()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
OPTIONAL = {"fallback_kind": "", "n_unknown": 0}


class UserEmbeddingsError(ValueError):
    """The user-embedding file is missing or does not match the contract (message names it)."""


@dataclass
class UserEmbedding:
    """One user's embedding and how it was obtained; the record graph → reward → eval →
    serving pass along (serving's created users are the same record)."""

    user_id: str
    embedding: np.ndarray  # [d] float32, export scale
    seen: bool = False
    kind: str = ADAPTED
    n_neighbors: int = 0
    fallback: bool = False
    fallback_kind: str = ""
    n_unknown: int = 0

    def __post_init__(self) -> None:
        self.embedding = np.asarray(self.embedding, dtype=np.float32)

    def to_dict(self) -> dict:
        """JSON-ready fields (the embedding as a list of floats: float32 round-trips exactly
        through JSON doubles)."""
        return {
            "user_id": str(self.user_id),
            "embedding": [float(x) for x in self.embedding],
            "seen": bool(self.seen),
            "kind": str(self.kind),
            "n_neighbors": int(self.n_neighbors),
            "fallback": bool(self.fallback),
            "fallback_kind": str(self.fallback_kind),
            "n_unknown": int(self.n_unknown),
        }

    @classmethod
    def from_dict(cls, d: dict) -> UserEmbedding:
        """Inverse of :meth:`to_dict`; fields it lacks take the record's defaults."""
        return cls(**{c: d[c] for c in COLUMNS if c in d})


def path_in(gnn_dir: str | Path) -> Path:
    """Where the GNN stage keeps the file inside its output folder."""
    return Path(gnn_dir) / FILE_NAME


class UserEmbeddings:
    """The table in memory: ids in file order, one ``[U, d]`` float32 matrix, metadata.

    ``get`` answers one user (serving), ``matrix_for`` a batch of ids (reward / eval),
    ``select`` / ``seen`` / ``trained`` / ``adapted_unseen`` a subset and ``take`` given ids
    in order as a new table; ``concat`` joins tables (the GNN export: trained + adapted).
    """

    def __init__(self, frame: pd.DataFrame, source: str = "user embeddings") -> None:
        # Files written before these two columns existed read as "no fallback kind, none unknown".
        frame = frame.assign(**{c: v for c, v in OPTIONAL.items() if c not in frame.columns})
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise UserEmbeddingsError(f"{source}: missing column(s) {missing}")
        frame = frame.reset_index(drop=True)
        self.source = source
        self.ids = [str(u) for u in frame["user_id"]]
        if len(set(self.ids)) != len(self.ids):
            dup = frame["user_id"][frame["user_id"].duplicated()].iloc[0]
            raise UserEmbeddingsError(f"{source}: user_id {dup!r} appears more than once")
        rows = [np.asarray(e, dtype=np.float32) for e in frame["embedding"]]
        if rows and len({r.shape for r in rows}) != 1:
            raise UserEmbeddingsError(f"{source}: embeddings differ in length")
        self.matrix = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
        self.meta = frame[[c for c in COLUMNS if c != "embedding"]].copy()
        self.index = {u: i for i, u in enumerate(self.ids)}

    # ------------------------------------------------------------------ build / IO
    @classmethod
    def from_records(
        cls, records: Iterable[UserEmbedding], source: str = "users"
    ) -> UserEmbeddings:
        recs = list(records)
        frame = pd.DataFrame(
            {c: [getattr(r, c) for r in recs] for c in COLUMNS}, columns=list(COLUMNS)
        )
        return cls(frame, source)

    @classmethod
    def concat(cls, *tables: UserEmbeddings, source: str = "users") -> UserEmbeddings:
        """One table with the rows of ``tables`` in order (a user twice fails)."""
        return cls(pd.concat([t.frame() for t in tables], ignore_index=True), source)

    @classmethod
    def read(cls, path: str | Path) -> UserEmbeddings:
        """Read and validate the file; a missing file or column fails naming the path."""
        path = Path(path)
        if path.is_dir():
            path = path_in(path)
        if not path.exists():
            raise UserEmbeddingsError(f"{path}: missing (run the gnn stage)")
        return cls(pq.read_table(path).to_pandas(), str(path))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path_in(path)
        frame = self.frame()
        frame["n_neighbors"] = frame["n_neighbors"].astype(np.int32)
        frame["n_unknown"] = frame["n_unknown"].astype(np.int32)
        pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False), path)
        return path

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame in the file's column order (embedding as arrays)."""
        out = self.meta.copy()
        out.insert(1, "embedding", list(self.matrix))
        return out[list(COLUMNS)]

    # ------------------------------------------------------------------ lookups
    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1]) if self.matrix.size else 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.index

    def get(self, user_id: str) -> UserEmbedding | None:
        i = self.index.get(user_id)
        if i is None:
            return None
        row = self.meta.iloc[i]
        return UserEmbedding(
            user_id=self.ids[i],
            embedding=self.matrix[i],
            seen=bool(row["seen"]),
            kind=str(row["kind"]),
            n_neighbors=int(row["n_neighbors"]),
            fallback=bool(row["fallback"]),
            fallback_kind=str(row["fallback_kind"] or ""),
            n_unknown=int(row["n_unknown"]),
        )

    def _positions(self, user_ids: Sequence[str], what: str) -> list[int]:
        idx = [self.index.get(str(u), -1) for u in user_ids]
        if any(i < 0 for i in idx):
            first = next(u for u, i in zip(user_ids, idx) if i < 0)
            raise UserEmbeddingsError(f"{self.source}: no embedding for {what} user {first!r}")
        return idx

    def matrix_for(self, user_ids: Sequence[str], what: str = "users") -> np.ndarray:
        """``[len(user_ids), d]`` rows in the order asked; a missing id fails naming it."""
        idx = self._positions(user_ids, what)
        return self.matrix[np.asarray(idx, dtype=np.int64)] if idx else self.matrix[:0]

    def take(self, user_ids: Sequence[str], what: str = "users") -> UserEmbeddings:
        """The rows of ``user_ids`` in that order, as a new table; a missing id fails naming it."""
        return UserEmbeddings(self.frame().iloc[self._positions(user_ids, what)], self.source)

    def select(self, mask: np.ndarray | pd.Series) -> UserEmbeddings:
        """The rows where ``mask`` (over file order) holds, as a new table."""
        keep = np.asarray(mask, dtype=bool)
        frame = self.frame()[keep]
        return UserEmbeddings(frame, self.source)

    def seen(self) -> UserEmbeddings:
        return self.select(self.meta["seen"].to_numpy())

    def trained(self) -> UserEmbeddings:
        """The seen users' GNN rows (what :class:`~copl_ray.graph.artifacts.GNNArtifacts`
        adapts from)."""
        return self.select((self.meta["kind"] == TRAINED).to_numpy())

    def adapted_unseen(self) -> UserEmbeddings:
        return self.select(((~self.meta["seen"]) & (self.meta["kind"] == ADAPTED)).to_numpy())
