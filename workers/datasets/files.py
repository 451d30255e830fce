"""`dataset: {name: files}`: a user's table of features and labels (docs/your-data.md).

At submit, `check_files` reads the pool (and the test file), refuses what cannot train
(a missing file or column, non-numeric features, NaNs, a constant label, too few rows, a
test file without the training pool's columns), and returns the `DataFacts` every RunSpec
then carries: the feature columns, d_in, the sorted label values and a fingerprint of the
values. A worker (`load_files`, cached per process) reads only those columns, checks the
fingerprint, and builds the sets:

pool -> labels: two values -> -1, +1 (sorted order); K values -> class ids 0..K-1
     -> PCA whitening to pca_dim fitted on the training pool (optional, as for MNIST)
     -> the balanced split by data_seed (train = the first P; test = the rest, its first
        test_size, or the test file) -> label noise on the P training labels
     -> standardisation with the P training samples' mean and std (default on)
     -> every sample rescaled to norm sqrt(d) (default on).
Samples are numbered by row: the training pool 0..n-1, then the test file's rows n..n+m-1.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from schemas.datasets import DataFacts, Label
from schemas.errors import JamsweepError
from schemas.specs import DatasetSpec
from workers.datasets import tables
from workers.datasets.parity import pca_basis, pca_project
from workers.datasets.split import Dataset, Split, balanced_order, noisy_labels

NPZ_LABEL = "y"  # what messages call the labels of an NPZ file


@dataclass(frozen=True)
class FilePool:
    """One file's rows: features x (n, d) float64, labels (n,) as their values."""

    path: str
    what: str  # "train" or "test": the grid field that names the file
    x: np.ndarray
    labels: pa.Array
    features: list[str]  # [] for NPZ


# -- reading -----------------------------------------------------------------------------


def read_pool(spec: DatasetSpec, what: str, features: list[str] | None) -> FilePool:
    """The file of dataset.`what`: its label column and `features` (None: every other
    numeric column), checked for presence, type and missing values."""
    path = spec.train if what == "train" else spec.test
    assert path is not None
    if tables.kind(path) == "npz":
        x, y = tables.read_npz(path, what)
        return _checked(FilePool(path, what, x.astype(np.float64), pa.array(y), []), NPZ_LABEL)
    assert spec.label is not None  # the grid's schema requires it for tables
    table = _table(path, what, spec.label, features)
    names = [n for n in table.column_names if n != spec.label]
    x = np.empty((table.num_rows, len(names)), dtype=np.float64)
    for j, name in enumerate(names):  # column by column: no second copy of the pool
        column = table.column(name)
        if column.null_count:
            raise _missing_values(path, name, column.null_count, column.is_null())
        x[:, j] = column.to_numpy()
    labels = table.column(spec.label).combine_chunks()
    if pa.types.is_dictionary(labels.type):  # a pandas categorical: its values
        labels = labels.dictionary_decode()
    return _checked(FilePool(path, what, x, labels, names), spec.label)


def _table(path: str, what: str, label: str, features: list[str] | None) -> pa.Table:
    """The feature columns (in order) and the label column of a Parquet or CSV file; only
    those are read."""
    schema = tables.schema(path, what)
    columns = schema.names
    if label not in columns:
        raise JamsweepError(
            f"dataset.{what} {path!r} has no column {label!r} (dataset.label); its columns: "
            f"{', '.join(columns)}"
        )
    if features is None:
        features = [c for c in columns if c != label and tables.is_numeric(schema.field(c).type)]
        if not features:
            raise JamsweepError(
                f"dataset.{what} {path!r} has no numeric column besides the label {label!r}; "
                "name the features (dataset.features) or store them as numbers"
            )
    missing = [c for c in features if c not in columns]
    if missing:
        whose = " that the training pool has" if what == "test" else " (dataset.features)"
        raise JamsweepError(
            f"dataset.{what} {path!r} lacks the feature column(s) {missing}{whose}; its "
            f"columns: {', '.join(columns)}"
        )
    table = tables.read_columns(path, what, [*features, label]).select([*features, label])
    text = [f"{c} ({table.schema.field(c).type})" for c in features]
    text = [t for c, t in zip(features, text, strict=True) if not _numeric(table, c)]
    if text:
        raise JamsweepError(
            f"dataset.{what} {path!r}: feature column(s) {', '.join(text)} are not numeric; "
            "encode them as numbers or leave them out of dataset.features"
        )
    return table


def _numeric(table: pa.Table, column: str) -> bool:
    return tables.is_numeric(table.schema.field(column).type)


def _checked(pool: FilePool, label: str) -> FilePool:
    """Refuse NaN or infinite features and missing labels, naming the file and column."""
    bad = ~np.isfinite(pool.x)
    if bad.any():
        j = int(bad.any(axis=0).argmax())
        name = pool.features[j] if pool.features else f"x[:, {j}]"
        raise _missing_values(pool.path, name, int(bad[:, j].sum()), pa.array(bad[:, j]))
    invalid = pool.labels.is_null()
    if pa.types.is_floating(pool.labels.type):
        invalid = pc.or_(invalid, pc.is_nan(pool.labels))
    if pc.any(invalid).as_py():
        n = pc.sum(invalid).as_py()
        raise _missing_values(pool.path, label, n, invalid, " (the label column)")
    return pool


def _missing_values(
    path: str, column: str, n: int, where: pa.Array, role: str = ""
) -> JamsweepError:
    first = pc.index(where, True).as_py()
    return JamsweepError(
        f"{path!r}: column {column!r}{role} has {n} missing, NaN or infinite value(s) (the "
        f"first in row {first}); fill or drop those rows"
    )


def class_ids(pool: FilePool, classes: list[Label], label: str) -> np.ndarray:
    """(n,) int64: the place of each label in the sorted `classes` of the training pool."""
    try:
        values = pa.array(classes, type=pool.labels.type)
        ids = pc.index_in(pool.labels, value_set=values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise JamsweepError(
            f"{pool.path!r}: the labels of column {label!r} ({pool.labels.type}) are not of "
            f"the training pool's kind ({exc}); store them as the training pool does"
        ) from None
    if ids.null_count:
        unknown = sorted(set(pool.labels.filter(ids.is_null()).to_pylist()), key=str)
        raise JamsweepError(
            f"{pool.path!r}: column {label!r} holds label value(s) {unknown[:5]} that the "
            f"training pool lacks (it has {classes}); a test label must be one the net learns"
        )
    return ids.to_numpy().astype(np.int64)


def fingerprint(pools: list[tuple[np.ndarray, np.ndarray]], classes: list[Label]) -> str:
    """sha256 of the classes and of each pool's features (float64) and class ids, in order."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for x, ids in pools:
        digest.update(np.asarray(x.shape, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(x, dtype=np.float64).data)  # no copy of the pool
        digest.update(np.ascontiguousarray(ids, dtype=np.int64).data)
    return digest.hexdigest()


# -- at submit: check and resolve --------------------------------------------------------


def check_files(spec: DatasetSpec) -> DataFacts:
    """Read the files of `spec`, refuse what cannot train, return its facts."""
    label = spec.label or NPZ_LABEL
    train = read_pool(spec, "train", spec.features)
    classes = sorted(pc.unique(train.labels).to_pylist())
    if len(classes) < 2:
        raise JamsweepError(
            f"dataset.train {train.path!r}: column {label!r} is constant (every row "
            f"{classes[0]!r}); a label column needs two or more values"
        )
    ids = class_ids(train, classes, label)
    pools = [(train.x, ids)]
    test = None
    if spec.test is not None:
        test = read_pool(spec, "test", train.features or None)
        if test.x.shape[1] != train.x.shape[1]:  # NPZ: x of another width
            raise JamsweepError(
                f"dataset.test {test.path!r}: x has {test.x.shape[1]} columns, the training "
                f"pool's {train.x.shape[1]}; both need the same features"
            )
        pools.append((test.x, class_ids(test, classes, label)))
    _check_split(spec, train, ids, classes, label)
    _check_pca(spec, train)
    return DataFacts(
        features=train.features,
        d_in=spec.pca_dim or train.x.shape[1],
        classes=classes,
        n_train_rows=len(train.x),
        n_test_rows=None if test is None else len(test.x),
        fingerprint=fingerprint(pools, classes),
    )


def _check_split(
    spec: DatasetSpec, train: FilePool, ids: np.ndarray, classes: list[Label], label: str
) -> None:
    counts = np.bincount(ids, minlength=len(classes))
    rarest = int(counts.argmin())
    balanced = len(classes) * int(counts[rarest])
    spare = 0 if spec.test is not None else 1  # a test set drawn from the pool needs a row
    if spec.train_size > balanced - spare:
        raise JamsweepError(
            f"dataset.train_size = {spec.train_size} is more than the {balanced - spare} rows "
            f"of {train.path!r} that a split balanced over column {label!r} can draw "
            f"({counts[rarest]} of each of its {len(classes)} values; the rarest is "
            f"{classes[rarest]!r}"
            + (")" if spare == 0 else "; one more stays for the test set)")
            + "; lower train_size, or add rows of the rarer values"
        )


def _check_pca(spec: DatasetSpec, train: FilePool) -> None:
    if spec.pca_dim is None:
        return
    d = train.x.shape[1]
    if spec.pca_dim > d:
        raise JamsweepError(
            f"dataset.pca_dim = {spec.pca_dim} exceeds the {d} feature columns of "
            f"{train.path!r}; lower pca_dim or leave it out (no PCA)"
        )
    _, e, _ = pca_basis(train.x, spec.pca_dim)
    if not e[-1] > 1e-12 * max(e[0], np.finfo(np.float64).tiny):
        rank = int((e > 1e-12 * e[0]).sum())
        raise JamsweepError(
            f"dataset.pca_dim = {spec.pca_dim}, but the features of {train.path!r} vary in "
            f"only {rank} direction(s) (the others have no variance to whiten); lower pca_dim"
        )


# -- on a worker: load -------------------------------------------------------------------


def load_files(spec: DatasetSpec) -> Dataset:
    """The sets of a resolved files `spec` (float64 on the CPU), built once per process."""
    return _files(spec.model_dump_json())


@functools.lru_cache(maxsize=2)
def _files(spec_json: str) -> Dataset:
    spec = DatasetSpec.model_validate_json(spec_json)
    facts = spec.resolved
    if facts is None:
        raise JamsweepError("a files dataset is read once its facts are resolved (at submit)")
    label = spec.label or NPZ_LABEL
    train = read_pool(spec, "train", facts.features or None)
    test = read_pool(spec, "test", facts.features or None) if spec.test is not None else None
    pools = [(p.x, class_ids(p, facts.classes, label)) for p in (train, test) if p is not None]
    if fingerprint(pools, facts.classes) != facts.fingerprint:
        raise JamsweepError(
            f"the files of the dataset ({', '.join(p for p in (spec.train, spec.test) if p)}) "
            "changed since the sweep was submitted; restore them, or submit the grid again "
            "(with --force to replace the runs made from the old contents)"
        )
    return build_sets(spec, facts, pools)


def build_sets(
    spec: DatasetSpec, facts: DataFacts, pools: list[tuple[np.ndarray, np.ndarray]]
) -> Dataset:
    """The preprocessing of the module docstring, from the pools' (x, class ids)."""
    (x, ids), test = pools[0], (pools[1] if len(pools) > 1 else None)
    if spec.pca_dim is not None:
        basis = pca_basis(x, spec.pca_dim)  # fitted on the training pool only
        x = pca_project(x, basis)
        test = None if test is None else (pca_project(test[0], basis), test[1])
    order = balanced_order(torch.from_numpy(ids), spec.data_seed)
    train_idx = order[: spec.train_size]
    if test is None:
        test_idx = order[spec.train_size :][: spec.test_size]
        x_test, ids_test = x[test_idx.numpy()], ids[test_idx.numpy()]
    else:
        x_test, ids_test = test
        test_idx = torch.arange(len(x), len(x) + len(x_test))
    x_train = torch.from_numpy(x[train_idx.numpy()])
    y_train = noisy_labels(
        _targets(ids[train_idx.numpy()], facts),
        spec.label_noise,
        spec.data_seed,
        len(facts.classes),
    )
    x_test_t = torch.from_numpy(np.ascontiguousarray(x_test))
    if spec.standardize:
        x_train, x_test_t = standardise(x_train, x_test_t)
    if spec.rescale:
        x_train, x_test_t = rescale(x_train), rescale(x_test_t)
    return Dataset(
        train=Split(x_train, y_train, train_idx),
        test=Split(x_test_t, _targets(ids_test, facts), test_idx),
    )


def _targets(ids: np.ndarray, facts: DataFacts) -> torch.Tensor:
    """What the net learns: -1 / +1 (float64) for two classes, else the class ids (int64)."""
    if len(facts.classes) == 2:
        return torch.from_numpy(np.where(ids == 1, 1.0, -1.0))
    return torch.from_numpy(ids.astype(np.int64))


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature minus the P training samples' mean, over their std (ddof 0); a feature
    constant over the training samples becomes 0 (its std is clamped, not divided by)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0).clamp_min(torch.finfo(torch.float64).eps)
    return (train - mean) / std, (test - mean) / std


def rescale(x: torch.Tensor) -> torch.Tensor:
    """Every sample (row of x (n, d)) rescaled to norm sqrt(d); an all-zero sample stays 0."""
    norms = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return x * (math.sqrt(x.shape[1]) / norms)
