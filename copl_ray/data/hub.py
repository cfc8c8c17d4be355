"""Rows of a public dataset: by Hugging Face name through ``datasets``, or from local files.

The real-data builders (TL;DR, PRISM, PersonalLLM) read the same rows either way, so the
code tested on fixture files in the hub's exact schema is the code that runs on the real
sets:

* ``data.path`` null: ``datasets.load_dataset(name, config)``, every split (offline unless
  ``COPL_ALLOW_HUB=1``: copl_ray/env.py sets ``HF_HUB_OFFLINE``; a set already in the
  local cache loads either way). A dataset that still ships a loading script (which
  ``datasets`` no longer runs) is read from the hub's parquet export
  (``refs/convert/parquet``, folder ``<config>``) instead.
* ``data.path`` a file (``.parquet`` / ``.jsonl`` / ``.json``): the rows of that file, taken
  as the builder's main config.
* ``data.path`` a folder: for config ``C`` the files ``C.parquet|jsonl|json`` at its top
  (how PRISM ships) and every data file under ``C/`` (the parquet export's
  ``C/train/0000.parquet``, or OpenAI's ``comparisons/batch*.json``); for a dataset
  without configs (``config=None``) every data file under the folder
  (PersonalLLM's ``data/train-00000-of-00001.parquet``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copl_ray.data.validate import DataError, read_records, resolve_path, where

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclass
class RowSource:
    """One file's (or one hub split's) rows; ``label`` names it in error messages."""

    label: str
    rows: list[dict]


def rows_with_columns(sources: list[RowSource], columns: tuple[str, ...]):
    """``(label, row index, row)`` of every source's rows, each checked to have ``columns``
    (a row without one is a one-line :class:`DataError` naming file and row)."""
    for src in sources:
        for i, r in enumerate(src.rows):
            missing = [c for c in columns if c not in r]
            if missing:
                raise DataError(f"{where(src.label, i)}: missing column(s) {missing}")
            yield src.label, i, r


def _data_files(folder: Path, config: str | None) -> list[Path]:
    if config is None:
        top = [folder]
        flat: list[Path] = []
    else:
        top = [folder / config]
        flat = [folder / f"{config}{s}" for s in DATA_SUFFIXES]
    found = [p for p in flat if p.is_file()]
    for d in top:
        if d.is_dir():
            found += sorted(p for p in d.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    return found


def local_rows(path: Path, config: str | None, main: bool) -> list[RowSource] | None:
    """Rows of ``config`` under a local ``data.path``; None when it has none of them."""
    if path.is_file():
        return [RowSource(str(path), read_records(path))] if main else None
    files = _data_files(path, config)
    if not files:
        return None
    return [RowSource(str(p), read_records(p)) for p in files]


def hub_rows(name: str, config: str | None) -> list[RowSource]:
    """Every split of ``name`` (``config``) through ``datasets``; one clear line if it fails."""
    import datasets

    what = f"{name!r}" + (f" (config {config!r})" if config else "")
    try:
        try:
            ds = datasets.load_dataset(name, config)
        except RuntimeError as e:  # a loading script: read the hub's parquet export
            if "scripts are no longer supported" not in str(e):
                raise
            ds = datasets.load_dataset(name, revision="refs/convert/parquet", data_dir=config)
    except Exception as e:  # offline / not cached / bad name: say which field to set
        raise DataError(
            f"data.path: not set, and dataset {what} cannot be loaded from the hub "
            f"({type(e).__name__}: {str(e)[:300]}); set COPL_ALLOW_HUB=1 to download it, or "
            "data.path to local files in its schema"
        ) from None
    splits = ds.items() if isinstance(ds, dict) else [("train", ds)]
    return [RowSource(f"{name}[{config or 'default'}/{split}]", d.to_list()) for split, d in splits]


def dataset_rows(
    path: str | None, name: str, config: str | None, main: bool = True, required: bool = True
) -> list[RowSource]:
    """The rows of dataset ``name`` / ``config`` (see the module doc for where they come
    from). ``main``: a single-file ``data.path`` holds this config. A ``required`` config
    missing from a local folder is a :class:`DataError` naming ``data.path``; an optional
    one gives ``[]``."""
    if path is None or str(path).strip() == "":
        return hub_rows(name, config)
    p = resolve_path(path, "data.path")
    found = local_rows(p, config, main)
    if found is not None:
        return found
    if not required:
        return []
    want = (
        f"{config}.parquet/.jsonl or a {config}/ folder of data files"
        if config
        else ".parquet/.jsonl data files"
    )
    raise DataError(f"data.path: {str(p)!r} has no {want} (the {name} dataset's schema)")


def sources_label(sources: list[RowSource]) -> str:
    """Where the rows came from, for a summary note (long lists cut)."""
    labels = [s.label for s in sources]
    more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
    return ", ".join(labels[:3]) + more
