"""A user's file as columns: Parquet, CSV or NPZ, from a local path or an object-store URI
(pyarrow's filesystems, as workers/io.py), reading only the columns asked for.

Parquet's schema comes from its footer (no data read); a CSV's from its header and the types
pyarrow infers from its first block; an NPZ holds two arrays, x (n, d) and y (n,), read
whole (a zip has no columns to skip). Every failure
is a JamsweepError naming the file and what to do.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.errors import JamsweepError


def kind(path: str) -> str:
    """'parquet', 'csv' or 'npz', from the file name (checked by the grid's schema)."""
    return path.lower().rsplit(".", 1)[-1]


def _open(path: str, what: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `path` and the path on it, once the file is known to be there."""
    try:
        fs, inner = (
            pafs.FileSystem.from_uri(path)
            if "://" in path
            else (pafs.LocalFileSystem(), str(Path(path).absolute()))
        )
        info = fs.get_file_info(inner)
    except (pa.ArrowInvalid, OSError) as exc:
        raise JamsweepError(f"dataset.{what} {path!r} cannot be opened: {exc}") from None
    if info.type != pafs.FileType.File:
        raise JamsweepError(
            f"dataset.{what} {path!r}: no such file; check the path (relative paths are "
            "taken from the grid file's folder)"
        )
    return fs, inner


def _unreadable(path: str, what: str, exc: Exception) -> JamsweepError:
    return JamsweepError(
        f"dataset.{what} {path!r} cannot be read as {kind(path).upper()} ({exc}); write it "
        "again, or convert it to Parquet"
    )


def schema(path: str, what: str) -> pa.Schema:
    """The columns and their types, without reading the data: Parquet's footer; a CSV's
    header and the types pyarrow infers from its first block (as its reader does)."""
    fs, inner = _open(path, what)
    try:
        if kind(path) == "parquet":
            return pq.read_schema(inner, filesystem=fs)
        with fs.open_input_stream(inner) as src:
            return pacsv.open_csv(src).schema
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, what, exc) from None


def read_columns(path: str, what: str, columns: list[str]) -> pa.Table:
    """The file's `columns` as Arrow columns: nothing else is read (Parquet) or converted
    (CSV, whose text is parsed whole)."""
    fs, inner = _open(path, what)
    try:
        if kind(path) == "parquet":
            return pq.read_table(inner, filesystem=fs, columns=columns)
        with fs.open_input_stream(inner) as src:
            # an empty cell (or NA, null, ...) is a missing value, in text columns too
            convert = pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True)
            return pacsv.read_csv(src, convert_options=convert)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, what, exc) from None


def read_npz(path: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d) and y (n,) of an NPZ file, checked for shape; no pickled objects allowed."""
    fs, inner = _open(path, what)
    try:
        with fs.open_input_stream(inner) as src:
            data = src.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise JamsweepError(
                    f"dataset.{what} {path!r} has arrays {sorted(arrays.files)}, not "
                    f"{missing}: an NPZ pool holds x (n, d) and y (n,)"
                )
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError) as exc:  # not a zip, or an object array (needs pickle)
        raise _unreadable(path, what, exc) from None
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise JamsweepError(
            f"dataset.{what} {path!r}: x must be (n, d) and y (n,), got x {x.shape} and y {y.shape}"
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise JamsweepError(
            f"dataset.{what} {path!r}: x holds {x.dtype} values, not numbers; store the "
            "features as floats"
        )
    return x, y


def is_numeric(type_: pa.DataType) -> bool:
    """Integers and floats count as features (as pandas' select_dtypes('number'))."""
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)
