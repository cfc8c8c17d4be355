"""Run directories on local disk or behind a URI that ``pyarrow.fs`` understands.

Stages always read and write a *local* :class:`~copl_ray.artifacts.RunDir`. When the
user names a URI (``s3://bucket/runs/x``, ``gs://...``, ``hdfs://...``, ``file:///...``)
the pipeline works in a local staging folder and mirrors it::

    local = staging_dir(uri)          # stable per URI, so an interrupted run resumes
    pull(uri, local)                  # fetch what an earlier run left (markers included)
    ... run a stage into local ...
    push(local, uri)                  # after every stage: a crash loses at most one stage

Copies go through ``pyarrow.fs.copy_files`` (multi-threaded, any pyarrow filesystem).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RunDirError(ValueError):
    """The run directory (path or URI) cannot be used; the message names it."""


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` strings (``file://`` included), False for plain paths."""
    return bool(_URI.match(str(path)))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a URI; RunDirError when pyarrow rejects it."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # ArrowInvalid, ArrowNotImplementedError, OSError (credentials)
        raise RunDirError(f"run dir {uri!r}: pyarrow.fs cannot open it: {e}") from None


def staging_dir(uri: str, base: str | os.PathLike | None = None) -> Path:
    """A local folder that mirrors ``uri``; the same URI always maps to the same folder."""
    root = Path(base or os.environ.get("COPL_STAGING_DIR") or Path(tempfile.gettempdir()))
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9_.-]", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:40]
    path = root / "copl_ray_staging" / f"{tail}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def pull(uri: str, local: str | os.PathLike) -> bool:
    """Copy the contents of ``uri`` into ``local``; False when the URI does not exist yet."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type != pafs.FileType.Directory:
        raise RunDirError(f"run dir {uri!r} exists but is not a directory")
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path,
        str(Path(local).resolve()),
        source_filesystem=fs,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    return True


def push(local: str | os.PathLike, uri: str) -> None:
    """Copy every file under ``local`` to ``uri`` (overwriting files of the same name)."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(
        str(Path(local).resolve()),
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )


def uri_join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
