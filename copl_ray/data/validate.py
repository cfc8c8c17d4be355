"""Input validation shared by every loader: one error type, messages that name the place.

A :class:`DataError` message always says *where*: ``file``, ``row`` (0-based data row)
and ``column``, or the config field (``data.path``) that is wrong. The CLI prints it
without a traceback and exits 2. Problems that affect single rows and can be skipped
safely are *counted drops* in ``DataSummary.drops`` instead (never silent).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from copl_ray.config import short_repr


class DataError(ValueError):
    """Bad input data or data config; the message names file/row/column or config field."""


def where(file: str | Path | None = None, row: int | None = None, column: str | None = None) -> str:
    parts = []
    if file is not None:
        parts.append(f"file {str(file)!r}")
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)


def resolve_path(path: str | None, field: str = "data.path", must_exist: bool = True) -> Path:
    """Resolve a config path against the current working directory (the rule of
    copl_ray.config.absolute_path, which the loaded config already applied); clear error
    if absent."""
    from copl_ray.config import absolute_path

    if path is None or str(path).strip() == "":
        raise DataError(f"{field}: not set (required for this data source)")
    p = Path(absolute_path(str(path)))
    if must_exist and not p.exists():
        raise DataError(f"{field}: {str(path)!r} does not exist (resolved to {p})")
    return p


def check_columns(
    df: pd.DataFrame,
    file: str | Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
) -> None:
    """Missing or unexpected columns are errors (an unexpected column is usually a typo)."""
    cols = list(df.columns)
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(
            f"{where(file)}: missing column(s) {missing}; expected {list(required)}"
            + (f" (optional {list(optional)})" if optional else "")
            + f", found {short_repr(cols, 200)}"
        )
    extra = [c for c in cols if c not in required and c not in optional]
    if extra:
        raise DataError(
            f"{where(file)}: unexpected column(s) {short_repr(extra, 200)}; allowed "
            f"{list(required) + list(optional)}"
        )


def check_string_column(df: pd.DataFrame, file: str | Path, column: str) -> None:
    """Every value must be a str (null handled separately): wrong types name the first bad row."""
    values = df[column].to_numpy(dtype=object)
    bad = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str) and v == v]
    if bad:
        i = bad[0]
        raise DataError(
            f"{where(file, i, column)}: expected text, got {type(values[i]).__name__} "
            f"{short_repr(values[i])} ({len(bad)} such row(s))"
        )


def too_long_mask(df: pd.DataFrame, columns: Sequence[str], max_chars: int) -> pd.Series:
    """Rows where any of ``columns`` holds a text longer than ``max_chars`` characters."""
    mask = pd.Series(False, index=df.index)
    for c in columns:
        mask |= df[c].map(lambda v: isinstance(v, str) and len(v) > max_chars)
    return mask


def null_or_empty_mask(series: pd.Series) -> pd.Series:
    s = series.astype(object)
    return s.isna() | s.map(lambda v: isinstance(v, str) and v.strip() == "")


def duplicated_unordered(
    df: pd.DataFrame, first: str, second: str, by: Sequence[str] = ()
) -> np.ndarray:
    """Rows repeating an earlier row's ``by`` values and ``{first, second}`` in either order.

    E.g. ``by=("user_id", "prompt")`` on ``chosen, rejected``: the same user judging the
    same two responses again (whichever won); the first occurrence is kept (``False``).
    """
    lo = np.minimum(df[first], df[second])
    hi = np.maximum(df[first], df[second])
    keys = pd.DataFrame({**{f"by_{c}": df[c] for c in by}, "lo": lo, "hi": hi})
    return keys.duplicated().to_numpy()


def check_utf8(path: Path) -> None:
    """Non-UTF-8 bytes are an error naming the line (1-based) and byte offset."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"file {str(path)!r}, line {line}: not valid UTF-8 (byte {e.start}: "
            f"{raw[e.start : e.start + 1]!r}); re-encode the file as UTF-8"
        ) from None


def read_records(path: Path) -> list[dict]:
    """Rows of a parquet / JSONL / JSON / CSV file as dicts (CSV: all values text)."""
    import json

    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"file {str(path)!r}: does not exist")
    if not path.is_file():
        raise DataError(f"file {str(path)!r}: not a file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"file {str(path)!r}: cannot read parquet: {e}") from None
    if suffix in (".jsonl", ".json"):
        check_utf8(path)
        # utf-8-sig: a byte-order mark (Windows editors, Excel exports) is read as one, as
        # pandas does for CSV, instead of becoming an invalid first JSON line
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"file {str(path)!r}: invalid JSON: {e}") from None
        else:
            rows = []
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"file {str(path)!r}, line {i + 1}: invalid JSON: {e}"
                    ) from None
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(
                f"{where(path, bad)}: expected a JSON object, got {short_repr(rows[bad])}"
            )
        return rows
    if suffix == ".csv":
        check_utf8(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(f"file {str(path)!r}: cannot parse CSV: {e}") from None
        return df.astype(object).where(df.notna(), None).to_dict("records")
    raise DataError(
        f"file {str(path)!r}: unsupported format {suffix!r} (use .parquet, .jsonl, .json or .csv)"
    )
