"""Files of a sweep: Parquet tables, checkpoints and small texts, on a local folder or any
pyarrow filesystem URI (s3://, gs://). Every write is atomic: a reader sees the whole
file or none of it.

Local writes go to a hidden temporary file beside the target ('.NAME.tmp-XXXX', which
pyarrow, pandas and duckdb skip when reading a folder), made durable (fsync) and renamed into
place. Object stores make an object visible only once its upload completes, so there a write
is direct. A finished run's files go together through `write_run_files` (one round of
fsyncs for all of them, its marker file last; its docstring gives the power-loss argument).
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.errors import JamsweepError


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it of a folder, file or URI."""
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, OSError) as exc:
            raise JamsweepError(f"cannot open results location {location!r}: {exc}") from None
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def exists(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(location: str, data: bytes) -> None:
    fs, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def create_exclusive(location: str, data: bytes) -> bool:
    """Create the file `location` holding `data` if no file is there, atomically: True if
    this call created it, False if it existed (someone else's). Readers see it whole.

    Local folders (NFS included): the bytes go to a hidden temporary file that is then
    hard-linked to the target, which fails if the target exists (link is atomic, unlike a
    check followed by a write). S3: a PUT with `If-None-Match: *` (boto3; S3 and
    compatible stores answer 412 when the object exists). Other object stores have no
    conditional write through pyarrow: there it is a check, then a write (not atomic)."""
    fs, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True
    if location.startswith("s3://"):
        return _s3_put_if_absent(location, data)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    write_bytes(location, data)
    return True


def _s3_put_if_absent(location: str, data: bytes) -> bool:
    import boto3  # only for s3:// (pyarrow has no conditional write)
    from botocore.exceptions import ClientError

    bucket, _, key = location.removeprefix("s3://").partition("/")
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return False
        raise OSError(f"cannot write {location}: {exc}") from None
    return True


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as src:
        return src.read()


def write_table(location: str, table: pa.Table) -> None:
    write_bytes(location, table_bytes(table))


# Below this many bytes in memory a table is compressed with snappy, above with zstd: zstd
# sets up a context per column (0.42 ms for a 40-row table of 6 columns, snappy 0.11 ms, for
# sizes within 5%), which a sweep of 10,000 short runs pays 30,000 times; a large table's
# bytes are what matter, and zstd's are smaller. Readers see no difference.
SMALL_TABLE_BYTES = 1 << 16


def table_bytes(table: pa.Table) -> bytes:
    """`table` as the bytes of a Parquet file."""
    sink = pa.BufferOutputStream()
    codec = "snappy" if table.nbytes < SMALL_TABLE_BYTES else "zstd"
    pq.write_table(table, sink, compression=codec)
    return sink.getvalue().to_pybytes()


# Threads for fsync: fsyncs issued at once share one journal commit (ext4's jbd2, XFS's
# log force), where one after another each waits for its own (4 files: 1.3 ms vs 2.5-13 ms
# on the 2-CPU VM's disk, depending on its load).
_SYNC = ThreadPoolExecutor(max_workers=8, thread_name_prefix="jamsweep-fsync")


def write_run_files(files: list[tuple[str, bytes]]) -> None:
    """Write a finished run's files (location, bytes); the last one is its marker (the
    metrics file, whose presence means the run finished). Each appears whole or not at all,
    after a crash or a power loss, and the marker only once the others are there.

    Locally, in three steps:
      1. every file's bytes go to its hidden temporary file, and all of them are fsync'd at
         once (one journal commit): no name points at them yet, so a crash leaves only
         hidden temporaries, which no reader opens;
      2. every file but the marker is renamed into place, then their folders are fsync'd
         (at once): the renames are durable. A rename names an inode whose data is already
         on disk, so after a power loss the name is either absent or names the whole file;
      3. the marker is renamed into place. Should a power loss undo that rename, the run
         is not finished and is trained again (its files replaced, never doubled); it
         cannot survive without the others, which were durable before it.
    Two rounds of fsyncs per run, each one commit, where writing file by file took one
    commit per file and left the order of the renames on disk to the filesystem.

    Object stores show an object once its upload completes: the files are put one after
    the other, the marker last."""
    if not files:
        return
    fs, _ = resolve(files[0][0])
    if not isinstance(fs, pafs.LocalFileSystem):
        for location, data in files:
            write_bytes(location, data)
        return
    fds: list[int] = []
    staged: list[tuple[str, str]] = []  # (temporary, target)
    try:
        for location, data in files:
            path = resolve(location)[1]
            fd, tmp = _open_temporary(path)
            fds.append(fd)
            staged.append((tmp, path))
            _write_all(fd, data)
        list(_SYNC.map(os.fsync, fds))  # 1.
        *others, (marker_tmp, marker) = staged
        for tmp, path in others:  # 2.
            os.replace(tmp, path)
        list(_SYNC.map(_fsync_dir, sorted({os.path.dirname(path) for _, path in others})))
        os.replace(marker_tmp, marker)  # 3.
    finally:
        for fd in fds:
            os.close(fd)
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _open_temporary(path: str) -> tuple[int, str]:
    """A new hidden temporary file beside `path` (its folder made if missing), open to write."""
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(tmp, flags, 0o666), tmp  # less the umask, as open() does
    except FileNotFoundError:  # the folder's first file: make it, then try again
        _make_folder(parent)
        return os.open(tmp, flags, 0o666), tmp


def _make_folder(folder: str) -> None:
    """Make `folder` and its missing parents, each one durable in its parent before any
    file goes in (a power loss that lost a new folder would lose the files renamed into it)."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it just now
            os.mkdir(made)
        _fsync_dir(os.path.dirname(made))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_table(location: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(location)
    return pq.read_table(path, filesystem=fs, columns=columns)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def delete(location: str) -> None:
    if "://" not in location:  # a local file: one system call, not pyarrow's two
        with contextlib.suppress(FileNotFoundError):
            os.unlink(location)
        return
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def list_files(folder: str, suffix: str = ".parquet") -> list[str]:
    """Every file under `folder` ending in `suffix`, hidden temporaries excluded."""
    fs, path = resolve(folder)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(suffix)
        and not i.base_name.startswith(".")
    ]
    prefix = folder.rstrip("/")
    return sorted(prefix + p[len(path.rstrip("/")) :] for p in found)


def column_by_file(folder: str, column: str) -> dict[str, object]:
    """File -> the first value of `column` in it, for the files `list_files` finds under
    `folder`, in one pyarrow dataset scan (threads, no Python loop over files). Raises
    OSError / ArrowException if any of them cannot be read."""
    import pyarrow.dataset as ds

    files = list_files(folder)
    if not files:
        return {}
    fs, root = resolve(folder)
    prefix = folder.rstrip("/")
    paths = [root.rstrip("/") + f[len(prefix) :] for f in files]  # list_files, undone
    table = ds.dataset(paths, filesystem=fs, format="parquet").to_table(
        columns=[column, "__filename"]  # __filename: pyarrow's name for each row's file
    )
    location = dict(zip(paths, files, strict=True))
    found: dict[str, object] = {}
    for path, value in zip(table["__filename"].to_pylist(), table[column].to_pylist(), strict=True):
        found.setdefault(location[path], value)
    return found


def unreadable_parquet(paths: list[str]) -> set[str]:
    """The files of `paths` that are not whole Parquet files (missing, truncated, foreign):
    each file's footer is read (a few KiB at its end; the magic bytes and the metadata),
    on threads, not its data."""
    from concurrent.futures import ThreadPoolExecutor

    def broken(location: str) -> bool:
        fs, path = resolve(location)
        try:
            with fs.open_input_file(path) as src:
                pq.read_metadata(src)
        except (OSError, pa.ArrowException):
            return True
        return False

    if not paths:
        return set()
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return {p for p, bad in zip(paths, pool.map(broken, paths), strict=True) if bad}


def move_to(location: str, target: str) -> None:
    """Move one file (on one filesystem): a rename locally, a copy then delete elsewhere."""
    fs, path = resolve(location)
    _, dest = resolve(target)
    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    fs.move(path, dest)


def list_dirs(folder: str) -> list[str]:
    """Names of the sub-folders of `folder` (none if it does not exist)."""
    fs, path = resolve(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def move_aside(folder: str) -> str:
    """Rename `folder` to FOLDER.replaced-<UTC time> (nothing is deleted); return the new name."""
    import time

    fs, path = resolve(folder)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{path.rstrip('/')}.replaced-{stamp}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(path, target)
    else:  # object stores have no folders to rename: copy every object, then delete
        pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(path)
    return f"{folder.rstrip('/')}.replaced-{stamp}"


def save_checkpoint(location: str, state: dict[str, Any]) -> None:
    write_bytes(location, checkpoint_bytes(state))


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    import torch  # here, not at the top: the CLI reads tables without paying torch's import

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_checkpoint(location: str) -> dict[str, Any] | None:
    """The saved state, or None when there is none or it cannot be read whole."""
    import torch

    if not exists(location):
        return None
    try:
        return torch.load(io.BytesIO(read_bytes(location)), weights_only=True, map_location="cpu")
    except Exception:  # a torn or foreign file is no checkpoint: start over
        return None


def check_creatable(location: str) -> None:
    """Raise JamsweepError unless `location` could be written to, leaving nothing behind
    (for a dry run): a local folder's nearest existing parent must be a folder in which a
    folder can be made (tried, and removed at once); an object store must answer."""
    if not is_local(location):
        fs, path = resolve(location)
        try:
            fs.get_file_info(path)
        except OSError as exc:
            raise JamsweepError(f"cannot reach results location {location!r}: {exc}") from None
        return
    target = Path(location.removeprefix("file://")).absolute()
    parent = next(p for p in (target, *target.parents) if p.exists())
    probe = parent / f".jamsweep-probe-{uuid.uuid4().hex[:8]}"
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is a file")
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise JamsweepError(
            f"cannot write results under {location!r} ({exc.strerror or exc}); choose a folder "
            "you can write to with --results"
        ) from None


def check_writable(location: str) -> None:
    """Raise JamsweepError unless a file can be created under `location`."""
    probe = location.rstrip("/") + f"/.jamsweep-probe-{uuid.uuid4().hex[:8]}"
    try:
        write_bytes(probe, b"")
        delete(probe)
    except OSError as exc:
        raise JamsweepError(
            f"cannot write results under {location!r} ({exc.strerror or exc}); choose a folder "
            "you can write to with --results"
        ) from None
