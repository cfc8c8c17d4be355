"""The adapted-user store: users created over HTTP, shared by every replica.

Layout: one JSON document per user, ``<store_dir>/<user_id>.json`` (default
``store_dir = run_dir/serve/users``): the user's
:class:`~copl_ray.graph.users.UserEmbedding` record (the one user record of every stage,
``kind="created"``) and what only the store knows — the labels, timestamps, version::

    {"user_id": "new-…", "embedding": [float32 …], "seen": false, "kind": "created",
     "n_neighbors": 12, "fallback": false, "fallback_kind": "", "n_unknown": 0,
     "annotations": [{"prompt", "chosen", "rejected", "chosen_id", "rejected_id"}, …],
     "created_at": …, "updated_at": …, "version": 2}

``n_unknown`` counts labels with a response that is not in the run, as offline
adaptation does. Documents written before the record's fields were stored (no ``kind``)
still read: ``kind`` "created", ``n_unknown`` recounted as their labels with a text the
run lacks (those documents counted texts); the next refinement re-adapts and recounts.

Why this store (and not an in-replica dict, a JSONL log or sqlite):

- *Visible to every replica at once.* Replicas of one deployment share the run
  directory (one machine: the local disk; a multi-node cluster: the run dir is on
  shared storage — NFS/EFS/Filestore — exactly as the training stages require). A
  replica that misses a user in its cache re-reads the file, and a cached user is
  re-validated with one ``stat`` (mtime + size) so a refinement made on another
  replica is seen on the next request.
- *Survives replica restart and redeploy.* Nothing lives only in process memory.
- *Atomic without a server.* Each write goes to a temporary file in the same folder
  and is published with ``os.replace`` (atomic on POSIX and on NFS), so a reader sees
  the old or the new document, never half of one. A refinement's read-modify-write
  holds an exclusive ``fcntl.flock`` on ``<user_id>.lock`` so two replicas refining
  the same user concurrently cannot drop each other's labels. One file per user
  means no shared append log to lock or compact, and no sqlite (whose locking is
  unreliable on network filesystems).
- *No pickle.* Documents are JSON; float32 embeddings round-trip exactly through
  JSON doubles.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from copl_ray.graph.users import COLUMNS, CREATED, UserEmbedding

# User ids become file names: a strict alphabet keeps a request from escaping the folder.
USER_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$"
_USER_ID = re.compile(USER_ID_PATTERN)
NEW_USER_PREFIX = "new-"


class StoreError(RuntimeError):
    """The store folder or one of its documents cannot be used; the message names the file."""


@dataclass
class Annotation:
    """One label of a created user: texts as received plus the response ids they map to."""

    prompt: str
    chosen: str
    rejected: str
    chosen_id: int | None = None  # None: the text is not a response of the run's data
    rejected_id: int | None = None

    @property
    def unknown(self) -> bool:
        """A text of this label is not a response of the run (so it has no graph node)."""
        return self.chosen_id is None or self.rejected_id is None


@dataclass
class StoredUser:
    """A created user as the store keeps it: the user's record (embedding, how it was
    adapted) plus the labels it was adapted from, timestamps and a version that each
    refinement bumps."""

    user: UserEmbedding
    annotations: list[Annotation] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 1

    @property
    def user_id(self) -> str:
        return self.user.user_id

    def to_json(self) -> str:
        return json.dumps(
            {
                **self.user.to_dict(),
                "annotations": [asdict(a) for a in self.annotations],
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "version": self.version,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> StoredUser:
        d = json.loads(text)
        annotations = [Annotation(**a) for a in d.get("annotations", [])]
        if "kind" not in d:  # written before the record was stored whole: n_unknown = texts
            d["kind"] = CREATED
            d["n_unknown"] = sum(a.unknown for a in annotations)
        user = UserEmbedding.from_dict({c: d[c] for c in COLUMNS if c in d})
        return cls(
            user,
            annotations,
            float(d.get("created_at", 0.0)),
            float(d.get("updated_at", 0.0)),
            int(d.get("version", 1)),
        )


def valid_user_id(user_id: str) -> bool:
    return bool(_USER_ID.match(user_id)) and ".." not in user_id


def new_user_id() -> str:
    return f"{NEW_USER_PREFIX}{uuid.uuid4().hex[:20]}"


def prepare_store_folder(folder: str | Path) -> Path:
    """Create the store folder and prove it takes a file (a real write, not ``os.access``:
    as root every mode bit passes, yet a read-only mount or a file in the folder's place
    still refuses). Called by the app builder before deploying, so a bad folder is one
    line there instead of a replica failing its constructor in a retry loop."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker else (e.strerror or type(e).__name__)
        raise StoreError(f"user store {path}: not a writable folder: {reason}") from None
    return path


class UserStore:
    """Folder of adapted users with a stat-validated in-process cache."""

    def __init__(self, folder: str | Path):
        self.folder = prepare_store_folder(folder)
        self._cache: dict[str, tuple[tuple[int, int], StoredUser]] = {}

    def _path(self, user_id: str) -> Path:
        if not valid_user_id(user_id):
            raise KeyError(user_id)
        return self.folder / f"{user_id}.json"

    def get(self, user_id: str) -> StoredUser | None:
        """The user, or None; re-reads the file when another replica changed it."""
        if not valid_user_id(user_id):
            return None
        path = self.folder / f"{user_id}.json"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(user_id, None)
            return None
        if st.st_size == 0:  # id reserved by create(), document not published yet
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            user = StoredUser.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"user store {path}: unreadable document: {e}") from None
        self._cache[user_id] = (stamp, user)
        return user

    def put(self, user: StoredUser) -> None:
        """Publish ``user`` atomically (temp file in the same folder + os.replace)."""
        path = self._path(user.user_id)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{user.user_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(user.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._cache.pop(user.user_id, None)

    def create(self, make: Callable[[str], StoredUser]) -> StoredUser:
        """Reserve a fresh id (O_EXCL, so two replicas never hand out the same one) and store
        ``make(user_id)``."""
        for _ in range(8):
            user_id = new_user_id()
            try:
                fd = os.open(self._path(user_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.close(fd)
            try:
                user = make(user_id)
                self.put(user)
            except BaseException:
                self._path(user_id).unlink(missing_ok=True)
                raise
            return user
        raise StoreError(f"user store {self.folder}: could not reserve a fresh user id")

    @contextmanager
    def locked(self, user_id: str) -> Iterator[None]:
        """Exclusive cross-process lock for a read-modify-write of one user."""
        lock_path = self.folder / f"{user_id}.lock"
        if not valid_user_id(user_id):
            raise KeyError(user_id)
        with open(lock_path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def count(self) -> int:
        return sum(1 for p in self.folder.glob("*.json") if not p.name.startswith("."))


def now() -> float:
    return round(time.time(), 3)
