"""`dataset: {name: files}`: Parquet, CSV and NPZ read alike; labels mapped in sorted order;
the paper's balanced split; PCA, standardisation and rescaling against numpy by hand; the
facts resolved at submit (d_in, outputs, N) and the run identity they give."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from schemas.errors import JamsweepError
from schemas.grid import DatasetSpec, parse_grid
from workers.data import check_dataset, load_dataset

FEATURES = ["f0", "f1", "f2", "f3"]


def pool_frame(n: int = 120, seed: int = 0, labels: tuple = ("yes", "no")) -> pd.DataFrame:
    """n rows: 4 numeric features (of different scales), a text column, and a label column
    whose values cycle through `labels`."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 3.0] + [0, 5, 0, -2])
    frame.columns = FEATURES
    frame.insert(2, "note", [f"row {i}" for i in range(n)])  # not numeric: never a feature
    frame["target"] = [labels[i % len(labels)] for i in range(n)]
    return frame


def write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        np.savez(path, x=frame[FEATURES].to_numpy(), y=frame["target"].to_numpy().astype(str))
    return str(path)


def files_spec(train: str, **kw) -> DatasetSpec:
    label = None if train.endswith(".npz") else kw.pop("label", "target")
    return DatasetSpec(name="files", train=train, label=label, **{"train_size": 60, **kw})


def resolved(spec: DatasetSpec) -> DatasetSpec:
    """The spec as submit leaves it: with the facts check_dataset read from its files."""
    return spec.model_copy(update={"resolved": check_dataset(spec)})


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npz"])
def test_formats_give_the_same_facts_and_the_same_sets(tmp_path, suffix):
    frame = pool_frame()
    reference = resolved(files_spec(write(frame, tmp_path / "ref.parquet")))
    spec = resolved(files_spec(write(frame, tmp_path / f"pool{suffix}")))
    facts = spec.resolved
    assert facts is not None and reference.resolved is not None
    assert facts.classes == ["no", "yes"] and facts.n_outputs == 1
    assert facts.d_in == 4 and facts.n_train_rows == 120
    assert facts.fingerprint == reference.resolved.fingerprint  # the values, not the format
    assert facts.features == ([] if suffix == ".npz" else FEATURES)  # 'note' left out
    a, b = load_dataset(spec), load_dataset(reference)
    for part in ("train", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert torch.equal(x.index, y.index) and torch.equal(x.y, y.y)
        torch.testing.assert_close(x.x, y.x, rtol=0, atol=1e-12)  # CSV: decimal text


def test_binary_labels_map_in_sorted_order_and_the_split_is_balanced(tmp_path):
    frame = pool_frame(n=150, labels=("b", "a", "b"))  # a: 50 rows, b: 100
    spec = resolved(files_spec(write(frame, tmp_path / "p.parquet"), train_size=60, data_seed=3))
    data = load_dataset(spec)
    raw = frame["target"].to_numpy()
    for part in (data.train, data.test):
        expected = np.where(raw[part.index.numpy()] == "b", 1.0, -1.0)  # sorted: a -> -1
        np.testing.assert_array_equal(part.y.numpy(), expected)
    assert sorted(torch.unique(data.train.y, return_counts=True)[1].tolist()) == [30, 30]
    assert len(data.test) == 100 - 60  # the balanced order: 50 of each, then the rest
    assert set(data.train.index.tolist()).isdisjoint(data.test.index.tolist())
    again = load_dataset(resolved(files_spec(spec.train or "", train_size=60, data_seed=3)))
    assert torch.equal(again.train.index, data.train.index)
    other = load_dataset(resolved(files_spec(spec.train or "", train_size=60, data_seed=4)))
    assert not torch.equal(other.train.index, data.train.index)
    assert spec.resolved is not None and spec.resolved.label_map == '"a" -> -1, "b" -> +1'


def test_three_labels_are_classes_with_three_outputs(tmp_path):
    frame = pool_frame(n=90, labels=(7, 3, 5))
    spec = resolved(files_spec(write(frame, tmp_path / "p.parquet"), train_size=30))
    assert spec.resolved is not None
    assert spec.resolved.classes == [3, 5, 7] and spec.resolved.n_outputs == 3
    data = load_dataset(spec)
    ids = {3: 0, 5: 1, 7: 2}
    expected = [ids[v] for v in frame["target"].to_numpy()[data.train.index.numpy()]]
    assert data.train.y.dtype == torch.int64 and data.train.y.tolist() == expected
    (run,) = (
        parse_grid(grid_text(spec.train or "", "train_size: 30")).with_data(spec.resolved).expand()
    )
    assert run.n_outputs == 3
    assert run.n_params == 4 * 2 + 2 * 2 + 2 * 3  # d_in 4, hidden [2, 2], 3 outputs: weights


def test_standardise_then_rescale_by_hand(tmp_path):
    frame = pool_frame()
    spec = resolved(files_spec(write(frame, tmp_path / "p.parquet")))
    data = load_dataset(spec)
    x = frame[FEATURES].to_numpy()
    train = x[data.train.index.numpy()]
    mean, std = train.mean(axis=0), train.std(axis=0)

    def by_hand(rows: np.ndarray) -> np.ndarray:
        z = (rows - mean) / std  # the training samples' statistics, for both sets
        return z * 2.0 / np.linalg.norm(z, axis=1, keepdims=True)  # norm sqrt(4)

    np.testing.assert_allclose(data.train.x.numpy(), by_hand(train), atol=1e-12)
    np.testing.assert_allclose(data.test.x.numpy(), by_hand(x[data.test.index.numpy()]), atol=1e-12)
    plain = load_dataset(resolved(files_spec(spec.train or "", standardize=False, rescale=False)))
    np.testing.assert_array_equal(plain.train.x.numpy(), train)  # the file's values


def test_pca_whitening_is_fitted_on_the_whole_training_pool(tmp_path):
    frame = pool_frame(n=200)  # 100 of each label: the balanced order uses every row
    path = write(frame, tmp_path / "p.parquet")
    spec = resolved(files_spec(path, pca_dim=2, standardize=False, rescale=False))
    assert spec.resolved is not None and spec.resolved.d_in == 2
    data = load_dataset(spec)
    both = torch.cat([data.train.x, data.test.x])[
        torch.argsort(torch.cat([data.train.index, data.test.index]))
    ].numpy()
    np.testing.assert_allclose(both.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(both.T @ both / 200, np.eye(2), atol=1e-10)  # whitened
    x = frame[FEATURES].to_numpy()
    c = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)  # by hand: the top 2 directions
    projected = c @ vt[:2].T
    projected /= projected.std(axis=0)
    np.testing.assert_allclose(np.abs(both), np.abs(projected), atol=1e-9)  # up to signs


def test_a_test_file_is_the_test_set_numbered_after_the_pool(tmp_path):
    train = pool_frame(n=100)
    test = pool_frame(n=30, seed=1)[["target", *reversed(FEATURES)]]  # other column order
    test["extra"] = 1.0  # columns the pool lacks are not read
    spec = resolved(
        files_spec(write(train, tmp_path / "a.parquet"), test=write(test, tmp_path / "b.csv"))
    )
    assert spec.resolved is not None and spec.resolved.n_test_rows == 30
    data = load_dataset(spec)
    assert data.test.index.tolist() == list(range(100, 130))
    assert data.test.y.tolist() == [1.0 if t == "yes" else -1.0 for t in test["target"]]
    rows = train[FEATURES].to_numpy()[data.train.index.numpy()]
    z = (test[FEATURES].to_numpy() - rows.mean(axis=0)) / rows.std(axis=0)
    np.testing.assert_allclose(data.test.x.numpy(), z * 2 / np.linalg.norm(z, axis=1)[:, None])


def test_named_features_are_read_in_their_order(tmp_path):
    frame = pool_frame()
    spec = resolved(
        files_spec(
            write(frame, tmp_path / "p.csv"),
            features=["f3", "f0"],
            standardize=False,
            rescale=False,
        )
    )
    assert spec.resolved is not None and spec.resolved.features == ["f3", "f0"]
    data = load_dataset(spec)
    np.testing.assert_array_equal(
        data.train.x.numpy(), frame[["f3", "f0"]].to_numpy()[data.train.index.numpy()]
    )


def test_a_worker_reads_only_the_columns_it_needs(tmp_path):
    """The unused column's bytes are overwritten with garbage: reading it would fail."""
    frame = pool_frame()
    frame["blob"] = [b"\x00" * 4096] * len(frame)
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pandas(frame), path, compression="zstd")
    meta = pq.ParquetFile(path).metadata
    j = meta.schema.names.index("blob")
    chunk = meta.row_group(0).column(j)
    raw = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    raw[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(raw))
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(path, columns=["blob"])  # the file really is broken there
    data = load_dataset(resolved(files_spec(str(path))))
    assert len(data.train) == 60


def test_the_run_id_follows_the_values_not_the_files(tmp_path):
    frame = pool_frame()
    first = write(frame, tmp_path / "a.parquet")
    moved = tmp_path / "elsewhere" / "b.parquet"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    changed = frame.copy()
    changed.loc[5, "f1"] += 1e-9
    ids = {}
    for name, path in {
        "first": first,
        "moved": str(moved),
        "csv": write(frame, tmp_path / "c.csv"),
        "changed": write(changed, tmp_path / "d.parquet"),
    }.items():
        grid = parse_grid(grid_text(path))
        (run,) = grid.with_data(check_dataset(grid.dataset)).expand()
        ids[name] = run.run_id
    assert ids["first"] == ids["moved"] == ids["csv"] != ids["changed"]


def test_a_file_changed_after_submit_is_refused_by_the_worker(tmp_path):
    frame = pool_frame()
    path = write(frame, tmp_path / "p.parquet")
    spec = resolved(files_spec(path))
    frame.loc[0, "f0"] = 99.0
    write(frame, Path(path))
    with pytest.raises(JamsweepError, match="changed since the sweep was submitted"):
        load_dataset(spec)


def test_an_unresolved_files_run_says_so():
    grid = parse_grid(grid_text("/data/p.parquet"))
    (run,) = grid.expand()
    with pytest.raises(JamsweepError, match="not resolved"):
        _ = run.n_params


def test_files_defaults_are_part_of_the_identity_whether_written_or_not(tmp_path):
    path = write(pool_frame(), tmp_path / "p.parquet")
    implicit = parse_grid(grid_text(path))
    explicit = parse_grid(grid_text(path, "train_size: 60, standardize: true, pca_dim: null"))
    facts = check_dataset(implicit.dataset)
    assert (
        implicit.with_data(facts).expand()[0].run_id == explicit.with_data(facts).expand()[0].run_id
    )
    assert implicit.dataset.pca_dim is None and implicit.dataset.standardize is True


def grid_text(train: str, extra: str = "train_size: 60") -> str:
    return (
        "sweep: f\n"
        f"dataset: {{name: files, train: {train!r}, label: target, {extra}}}\n"
        "architectures: [{name: fc2, depth: 2, widths: [2]}]\n"
        "seeds: 1\n"
    )


def test_rescale_gives_norm_sqrt_d(tmp_path):
    data = load_dataset(resolved(files_spec(write(pool_frame(), tmp_path / "p.parquet"))))
    norms = data.train.x.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(4)))


def test_checks_the_cli_tests_do_not_cover(tmp_path):
    frame = pool_frame()
    frame.loc[4, "f2"] = np.inf
    with pytest.raises(JamsweepError, match=r"'f2' has 1 missing, NaN or infinite .* row 4"):
        check_dataset(files_spec(write(frame, tmp_path / "inf.parquet")))
    flat = pool_frame().assign(f3=lambda f: 2 * f["f0"])  # rank 3 of 4 columns
    with pytest.raises(JamsweepError, match="pca_dim = 4, but .* vary in only 3 direction"):
        check_dataset(files_spec(write(flat, tmp_path / "flat.parquet"), pca_dim=4))
    np.savez(tmp_path / "obj.npz", x=np.zeros((4, 2)), y=np.array([{}, {}, 1, 2], dtype=object))
    with pytest.raises(JamsweepError, match="obj.npz' cannot be read as NPZ"):
        check_dataset(files_spec(str(tmp_path / "obj.npz")))


def test_booleans_and_text_are_not_features_and_a_constant_feature_becomes_zero(tmp_path):
    frame = pool_frame().assign(flag=True, f1=7.0)
    spec = resolved(files_spec(write(frame, tmp_path / "p.parquet"), rescale=False))
    assert spec.resolved is not None and spec.resolved.features == FEATURES
    data = load_dataset(spec)
    assert (data.train.x[:, 1] == 0).all() and (data.test.x[:, 1] == 0).all()


def test_a_pool_is_loaded_once_per_process(tmp_path):
    spec = resolved(files_spec(write(pool_frame(), tmp_path / "p.parquet")))
    assert load_dataset(spec) is load_dataset(
        DatasetSpec.model_validate_json(spec.model_dump_json())
    )


def test_what_a_net_is_built_for_is_known_from_the_spec(tmp_path):
    """d_in and n_outputs of every dataset, as the worker's data has them (x.shape[1])."""
    path = write(pool_frame(labels=("a", "b", "c")), tmp_path / "p.parquet")
    spec = resolved(files_spec(path, pca_dim=3))
    grid = parse_grid(grid_text(path, "train_size: 60, pca_dim: 3"))
    (run,) = grid.with_data(spec.resolved).expand()
    data = load_dataset(run.dataset)
    assert run.d_in == data.train.x.shape[1] == 3 and run.n_outputs == 3
    digits = parse_grid(
        "sweep: d\ndataset: {name: digits_parity_pca, train_size: 50, pca_dim: 7}\n"
        "architectures: [{name: a, widths: [2]}]\nseeds: 1\n"
    ).expand()[0]
    assert digits.d_in == load_dataset(digits.dataset).train.x.shape[1] == 7
    cifar = parse_grid(
        "sweep: c\ndataset: {name: cifar10, root: /x, train_size: 5}\n"
        "architectures: [{kind: cnn, name: c, widths: [2]}]\nseeds: 1\n"
    ).expand()[0]
    assert (cifar.d_in, cifar.n_outputs) == (3, 10)
