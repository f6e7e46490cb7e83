"""Durable file writes: temp file + fsync + rename, so a reader never sees a partial file.

Everything under the data directory is written through here; paths are resolved
and checked to stay inside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator
from typing import BinaryIO

TMP_DIR = "tmp"
QUOTA_LOCK = "quota.lock"


def fsync_dir(path: pathlib.Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inside(root: pathlib.Path, *parts: str) -> pathlib.Path:
    """Join `parts` under `root` and refuse anything that would resolve outside it."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"path {path} escapes {root}")
    return path


def scratch_dir(data_dir: pathlib.Path) -> pathlib.Path:
    """A fresh directory under data_dir/tmp (same file system, so renames are atomic), named
    after this process (see `clean_leftovers_of`)."""
    path = inside(data_dir, TMP_DIR, f"{os.getpid()}-{uuid.uuid4().hex}")
    path.mkdir(parents=True)
    return path


def clean_leftovers_of(data_dir: pathlib.Path, pid: int) -> int:
    """Remove what process `pid`, which has died, was writing: its scratch directories (uploads in
    progress) and its temp files (a checkpoint or an export being saved); return how many.
    Both are named after the process that writes them. The server's start removes everyone's
    (`clean_scratch`); this is for a worker or RPC process that dies while the server runs."""
    count = 0
    with contextlib.suppress(FileNotFoundError):
        for child in (data_dir / TMP_DIR).iterdir():
            if child.name.startswith(f"{pid}-"):
                remove_tree(child)
                count += 1
    for stale in data_dir.rglob(f".*.{pid}-*.tmp"):
        stale.unlink(missing_ok=True)
        count += 1
    return count


@contextlib.contextmanager
def quota_lock(data_dir: pathlib.Path) -> Iterator[None]:
    """Held while a write's size is checked against the data quota and reserved, so that
    concurrent uploads, in this process or in other RPC processes, see each other's
    reservations (an flock: released by the kernel if its holder dies)."""
    with open(data_dir / QUOTA_LOCK, "ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def atomic_writer(path: pathlib.Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    On any exception the temp file is removed and `path` is left as it was. ``durable=False``
    skips the fsyncs: for what need not survive a crash, only never be seen half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")  # see clean_leftovers_of
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_dir(src: pathlib.Path, dest: pathlib.Path) -> None:
    """Atomically move a fully written directory `src` to `dest` (which must not exist)."""
    for child in src.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dest)
    fsync_dir(dest.parent)


def usage_bytes(data_dir: pathlib.Path) -> int:
    """Bytes held by every file under the data directory (SQLite, datasets, checkpoints, models)."""
    total = 0
    stack = [str(data_dir)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:  # removed meanwhile
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


def remove_tree(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def clean_scratch(data_dir: pathlib.Path) -> int:
    """Remove leftovers of writes interrupted by a crash; return how many."""
    tmp = data_dir / TMP_DIR
    count = 0
    if tmp.exists():
        for child in tmp.iterdir():
            remove_tree(child) if child.is_dir() else child.unlink(missing_ok=True)
            count += 1
    for stale in data_dir.rglob(".*.tmp"):
        stale.unlink(missing_ok=True)
        count += 1
    return count
