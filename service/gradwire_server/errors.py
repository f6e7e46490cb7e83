"""Domain errors: the one place where what went wrong is named.

Training, export, inference and storage code raise these; servicers never catch
them. One interceptor (``interceptors.py``) maps each class to a gRPC status via
``STATUS_CODES``. Anything else that escapes a handler is logged with its
traceback and answered INTERNAL with a generic message.
"""

from __future__ import annotations

import errno
import os
import re
import shutil


class GradwireError(Exception):
    """Base class of every error a client may see."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.description = message  # without the field path: google.rpc.BadRequest's description
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)

    def field_violations(self) -> list[tuple[str, str]]:
        """(field path, description) pairs, sent as google.rpc.BadRequest details."""
        return [(self.field, self.description)] if self.field else []


class InvalidArgument(GradwireError):
    """The request is malformed; ``field`` names the offending field path."""


class NotFound(GradwireError):
    """A named resource does not exist."""


class ModelGone(NotFound):
    """A model deleted while a request that had resolved its name was under way (its row went after
    the name was read, or its ONNX file before its session loaded). The name may mean another model
    by now: the request resolves it once more (`serving.retry_if_gone`)."""


class AlreadyExists(GradwireError):
    """A resource with that name already exists."""


class FailedPrecondition(GradwireError):
    """The resource is not in a state that allows the operation."""


class ResourceExhausted(GradwireError):
    """A size, budget or queue limit would be exceeded."""


class DeadlineExceeded(GradwireError):
    """A time limit ran out (a job past GRADWIRE_MAX_JOB_SECONDS)."""


class Unauthenticated(GradwireError):
    """The call carries no valid credentials."""


class Unimplemented(GradwireError):
    """A method of a protocol gradwire speaks that it does not serve; the message says what does."""


class DataLoss(GradwireError):
    """Stored data can no longer be read (a file damaged on disk)."""


class Cancelled(GradwireError):
    """The operation was cancelled (used inside the worker)."""


class Internal(GradwireError):
    """A bug or an unexpected failure; the message is safe to show."""


# What a failed allocation says: torch's CPU allocator ("can't allocate memory"), CUDA's ("out of
# memory"), onnxruntime's (std::bad_alloc while it loads a model; "Failed to allocate memory for
# requested buffer of size N" from its arena while it runs one).
_ALLOCATION_TEXTS = ("can't allocate memory", "out of memory", "bad_alloc", "failed to allocate memory")
_ALLOCATION_SIZE_RE = re.compile(r"tried to allocate (\d+) bytes|Tried to allocate ([\d.]+ [KMGT]?i?B)|buffer of size (\d+)")


def failed_allocation(exc: BaseException) -> str | None:
    """When ``exc`` is an allocation that failed (Python's MemoryError; a RuntimeError of torch's
    CPU allocator or of CUDA; onnxruntime's own exception types), what failed, as
    " (an allocation of 2.93 GiB failed)", or "" when the message does not say; None for any other
    exception."""
    if not isinstance(exc, MemoryError):
        if not (isinstance(exc, RuntimeError) or type(exc).__module__.startswith("onnxruntime")):
            return None
        if not any(text in str(exc).lower() for text in _ALLOCATION_TEXTS):
            return None
    found = _ALLOCATION_SIZE_RE.search(str(exc))
    if found is None:
        return ""
    size = found.group(2) or f"{int(found.group(1) or found.group(3)) / 2**30:.2f} GiB"
    return f" (an allocation of {size} failed)"


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it came from or was raised while handling, is a file system
    out of space: ENOSPC or EDQUOT, or SQLite's "database or disk is full". (torch's checkpoint
    writer reports a full disk as `RuntimeError: ... unexpected pos ...`, raised while handling the
    OSError.)"""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if type(exc).__module__ == "sqlite3" and "database or disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# What to do about a data directory short of space (`disk_full_error`, an upload refused beforehand)
FREE_DISK_ADVICE = "free some (delete datasets, models or finished jobs) or give it a larger disk, then try again"


def disk_full_error(data_dir: str | os.PathLike[str]) -> ResourceExhausted:
    """What a client hears when the data directory's file system is full (`disk_full`)."""
    try:
        free = f"{shutil.disk_usage(data_dir).free / 2**20:.1f} MiB free"
    except OSError:
        free = "its free space unknown"
    return ResourceExhausted(f"the server's disk is full ({free} where it keeps its data): {FREE_DISK_ADVICE}")


def enum_name(enum_type, value: int) -> str:
    """An enum value's name for a message, or its number when the schema has none: proto3 enums
    accept any number, and ``Name`` raises on an unknown one."""
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def field_path(*parts: str | int) -> str:
    """Join path parts: field_path("network", "layers", 3, "dense", "units") ->
    "network.layers[3].dense.units"."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out


# google.rpc.Code numbers for each error class: the one table from which both the
# gRPC status of an answer and the `error` of a failed job are chosen.
CODES: dict[type[GradwireError], int] = {
    Cancelled: 1,
    InvalidArgument: 3,
    DeadlineExceeded: 4,
    NotFound: 5,
    AlreadyExists: 6,
    ResourceExhausted: 8,
    FailedPrecondition: 9,
    Unimplemented: 12,
    Internal: 13,
    DataLoss: 15,
    Unauthenticated: 16,
}
INTERNAL_CODE = 13


def code_of(error: BaseException) -> int:
    """google.rpc.Code number for an exception; INTERNAL for anything not ours."""
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]
    return INTERNAL_CODE
