"""Triton's system shared memory extension: tensors that cross a POSIX shared memory object
instead of the connection.

A client on the server's host creates a shared memory object (shm_open, or tritonclient's
``shared_memory.create_shared_memory_region``), registers it (or a part of it) under a name
with SystemSharedMemoryRegister, and then names the region in a ModelInfer input's or output's
parameters ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset") instead
of carrying the bytes: a 1,024-row request is then a few hundred bytes on the wire.

- **Registrations are the server's, across its RPC processes.** Each is a small file under
  data_dir/tmp/shm-regions/ (named by a hash of the region's name), created with an atomic
  link, so a name is registered once whichever process is asked; every process sees the others'
  registrations at its next request: a register or unregister bumps a count that every process
  maps into memory (store.ChangeCounter), and a process reads a region's file again only when
  the count has moved, so a request's lookup makes no system call. The server's start removes
  them all, as Triton's restart forgets its regions.
- **No mapping is kept.** Each request opens the object by its key, reads its input with one
  ``preadv`` straight into the array onnxruntime gets (or writes its output with ``pwrite``) and
  closes it. A file read cannot fault the way a mapping does when the client shrinks or removes
  its object meanwhile (SIGBUS, the end of the process): here that is a short read, answered as
  FAILED_PRECONDITION naming the region. Nor does the server keep a removed object's memory alive.
- **Keys name shared memory objects only**: shm_open's names ("/name": after the leading "/",
  no other), opened under /dev/shm without following links, and only regular files.

Any client that can call the server can read and write the shared memory objects the server's
user can open, which is why the extension can be turned off (GRADWIRE_SYSTEM_SHARED_MEMORY).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import stat
import threading
import uuid
from collections.abc import Iterator

import numpy as np

from . import errors, files
from .store import ChangeCounter

SHM_DIR = pathlib.Path("/dev/shm")  # where Linux's shm_open keeps its objects
REGISTRY_DIR = "shm-regions"  # under data_dir/tmp/
MAX_REGIONS = 1024
MAX_NAME_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int  # into the object
    byte_size: int


class SharedMemoryRegions:
    """The registered regions, and reads and writes through them."""

    def __init__(self, data_dir: pathlib.Path, shm_dir: pathlib.Path = SHM_DIR) -> None:
        self._dir = data_dir / files.TMP_DIR / REGISTRY_DIR
        self._shm_dir = shm_dir
        self._lock = threading.Lock()
        self._changes: ChangeCounter | None = None  # made by the first registration: until then, nothing exists
        self._known: dict[str, Region] = {}  # what this process has read, while the count stays at _seen
        self._seen = -1

    def _counter(self, create: bool = False) -> ChangeCounter | None:
        """The registrations' change count, None while no region was ever registered."""
        if self._changes is None:
            path = self._dir.with_suffix(".changes")
            with self._lock:
                if self._changes is None and (create or path.exists()):
                    self._dir.mkdir(parents=True, exist_ok=True)
                    self._changes = ChangeCounter(path)
        return self._changes

    def close(self) -> None:
        if self._changes is not None:
            self._changes.close()

    def _path(self, name: str) -> pathlib.Path:
        return self._dir / hashlib.sha256(name.encode()).hexdigest()

    # ---- registration ------------------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise errors.InvalidArgument("required: the name requests will use for the region", field="name")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise errors.InvalidArgument(f"at most {MAX_NAME_BYTES} bytes, got {len(name.encode())}", field="name")
        if byte_size <= 0:
            raise errors.InvalidArgument(f"must be > 0, got {byte_size}", field="byte_size")
        changes = self._counter(create=True)
        with self._open(key, "key") as (_, info):
            if offset + byte_size > info.st_size:
                raise errors.InvalidArgument(
                    f"offset {offset} + byte_size {byte_size} = {offset + byte_size} goes past the end of shared memory "
                    f"object {key!r}, which holds {info.st_size} bytes", field="byte_size")
        if len(self._entries()) >= MAX_REGIONS:
            raise errors.ResourceExhausted(f"{MAX_REGIONS} system shared memory regions are registered, the most a server "
                                           f"holds; unregister some first", field="name")
        record = json.dumps({"name": name, "key": key, "offset": offset, "byte_size": byte_size}).encode()
        final = self._path(name)
        staged = self._dir / f".{final.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp"  # see files.clean_leftovers_of
        staged.write_bytes(record)
        try:
            os.link(staged, final)  # atomic, and refused when the name is taken
        except FileExistsError:
            raise errors.AlreadyExists(f"a system shared memory region named {name!r} is already registered; "
                                       f"unregister it first", field="name") from None
        finally:
            staged.unlink(missing_ok=True)
        changes.bump()

    def unregister(self, name: str) -> None:
        """Forget one region, or every one when ``name`` is empty; a name not registered is no error."""
        changes = self._counter()
        if changes is None:  # none was ever registered
            return
        paths = [self._path(name)] if name else self._entries()
        for path in paths:
            path.unlink(missing_ok=True)
        changes.bump()

    def status(self, name: str) -> list[Region]:
        if name:
            return [self.lookup(name, "name")]
        regions = []
        for path in self._entries():
            with contextlib.suppress(FileNotFoundError):  # unregistered meanwhile
                regions.append(_parse(path.read_bytes()))
        return sorted(regions, key=lambda r: r.name)

    def _entries(self) -> list[pathlib.Path]:
        try:
            return [p for p in self._dir.iterdir() if not p.name.startswith(".")]
        except FileNotFoundError:
            return []

    def lookup(self, name: str, field: str) -> Region:
        """The region registered as ``name``: from this process's memory while no registration has
        changed since it read it."""
        changes = self._counter()
        if changes is None:
            raise errors.NotFound(f"no system shared memory region named {name!r} is registered", field=field)
        count = changes.value()  # before the file: a change after it moves the count again
        with self._lock:
            if count != self._seen:
                self._known.clear()
                self._seen = count
            region = self._known.get(name)
        if region is not None:
            return region
        try:
            region = _parse(self._path(name).read_bytes())
        except FileNotFoundError:
            raise errors.NotFound(f"no system shared memory region named {name!r} is registered", field=field) from None
        with self._lock:
            if self._seen == count:
                self._known[name] = region
        return region

    # ---- data ----------------------------------------------------------------------------------

    def read_into(self, region: Region, offset: int, out: np.ndarray, field: str) -> None:
        """Fill ``out`` (C-contiguous) with the region's bytes from ``offset``."""
        size = out.nbytes
        self._check_span(region, offset, size, field)
        with self._open(region.key, field, region) as (fd, _):
            got = os.preadv(fd, [memoryview(out).cast("B")], region.offset + offset) if size else 0
            if got != size:  # shrunk since registration
                raise errors.FailedPrecondition(
                    f"system shared memory region {region.name!r} ends early: shared memory object {region.key!r} now holds "
                    f"{os.fstat(fd).st_size} bytes, {size} were to be read from byte {region.offset + offset}", field=field)

    def write(self, region: Region, offset: int, data: bytes | memoryview, field: str) -> None:
        size = len(data)
        self._check_span(region, offset, size, field)
        with self._open(region.key, field, region) as (fd, info):
            end = region.offset + offset + size
            held = info.st_size
            if held < end:  # shrunk since registration: never grow the client's object
                raise errors.FailedPrecondition(
                    f"system shared memory region {region.name!r} ends early: shared memory object {region.key!r} now holds "
                    f"{held} bytes, the output needs bytes up to {end}", field=field)
            view, at = memoryview(data), region.offset + offset
            while view:
                written = os.pwrite(fd, view, at)
                if written <= 0:
                    raise errors.FailedPrecondition(f"could not write to {region.key!r} (system shared memory region "
                                                    f"{region.name!r})", field=field)
                view, at = view[written:], at + written

    @staticmethod
    def _check_span(region: Region, offset: int, size: int, field: str) -> None:
        if offset < 0:
            raise errors.InvalidArgument(f"shared_memory_offset must be >= 0, got {offset}", field=field)
        if offset + size > region.byte_size:
            raise errors.InvalidArgument(
                f"{size} bytes from offset {offset} go past the end of system shared memory region {region.name!r} "
                f"({region.byte_size} bytes)", field=field)

    @contextlib.contextmanager
    def _open(self, key: str, field: str, region: Region | None = None) -> Iterator[tuple[int, os.stat_result]]:
        """The object's file descriptor and its fstat (one per open: the checks here and the
        caller's size both read it)."""
        path = self._shm_dir / _object_name(key, field)
        what = f"shared memory object {key!r}" + (f" of system shared memory region {region.name!r}" if region else "")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            error = errors.NotFound if region is None else errors.FailedPrecondition
            raise error(f"{what} does not exist (it is created with shm_open, or tritonclient's "
                        f"create_shared_memory_region, on the server's host)", field=field) from None
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot open {what}: {exc.strerror}", field=field) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise errors.InvalidArgument(f"{what} is not a shared memory object", field=field)
            yield fd, info
        finally:
            os.close(fd)


def _object_name(key: str, field: str) -> str:
    """shm_open's name without its leading "/"s: one path component under /dev/shm, nothing else."""
    name = key.lstrip("/")  # as shm_open reads it
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name.encode()) > 255:
        raise errors.InvalidArgument(f"must name a POSIX shared memory object, as shm_open does ('/name', with no "
                                     f"other '/'), got {key!r}", field=field)
    return name


def _parse(record: bytes) -> Region:
    d = json.loads(record)
    return Region(name=d["name"], key=d["key"], offset=int(d["offset"]), byte_size=int(d["byte_size"]))


def available(shm_dir: pathlib.Path = SHM_DIR) -> bool:
    return shm_dir.is_dir()
