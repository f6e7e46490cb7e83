"""The SDK's one exception tree, and the one place a gRPC error becomes one of them.

    GradwireError
    ├── APIError                     the server (or the transport) answered with a status
    │   ├── InvalidArgumentError     ── OutOfRangeError
    │   ├── NotFoundError
    │   ├── AlreadyExistsError
    │   ├── FailedPreconditionError
    │   ├── ResourceExhaustedError
    │   ├── UnauthenticatedError
    │   ├── PermissionDeniedError
    │   ├── DeadlineExceededError
    │   ├── UnavailableError
    │   ├── CancelledError
    │   ├── AbortedError
    │   ├── UnimplementedError
    │   └── InternalError            (also UNKNOWN and DATA_LOSS)
    ├── TrainingFailedError          a job ended FAILED (``job.wait()``)
    └── TrainingCancelledError       a job ended CANCELLED (``job.wait()``)

Example:

    >>> import grpc, gradwire as gw
    >>> err = gw.APIError.from_status(grpc.StatusCode.INVALID_ARGUMENT,
    ...     "network.layers[3].conv2d.kernel_size: must be >= 1, got 0")
    >>> type(err).__name__, err.field
    ('InvalidArgumentError', 'network.layers[3].conv2d.kernel_size')
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

if TYPE_CHECKING:
    from gradwire._resources import TrainingJob

__all__ = [
    "FieldViolation",
    "GradwireError",
    "APIError",
    "InvalidArgumentError",
    "OutOfRangeError",
    "NotFoundError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "DeadlineExceededError",
    "UnavailableError",
    "CancelledError",
    "AbortedError",
    "UnimplementedError",
    "InternalError",
    "TrainingFailedError",
    "TrainingCancelledError",
]

# "network.layers[3].conv2d.kernel_size: must be >= 1, got 0" -> field path, then the rest.
_FIELD_RE = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): (.*)$", re.DOTALL)
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class FieldViolation(NamedTuple):
    """One entry of a ``google.rpc.BadRequest``: which field is wrong, and why."""

    field: str
    """Path of the offending field, e.g. ``"network.layers[3].dense.units"``."""
    description: str
    """What is wrong with it, e.g. ``"must be >= 1, got 0"``."""


class GradwireError(Exception):
    """Base class of every error the SDK raises on purpose."""


class APIError(GradwireError):
    """The server answered a call with a non-OK status.

    Attributes:
        code: the ``grpc.StatusCode``.
        message: the server's message, e.g.
            ``"network.layers[3].conv2d.kernel_size: must be >= 1, got 0"``.
        field: the field path the message starts with
            (``"network.layers[3].conv2d.kernel_size"``), or ``None``.
        details: the ``google.protobuf.Any`` details of a rich
            ``google.rpc.Status``, if the server sent one.
        field_violations: the ``google.rpc.BadRequest`` field violations among
            ``details``, as ``FieldViolation(field, description)`` (the server
            sends one for every error that names a field).
    """

    code: grpc.StatusCode

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str | None = None,
        details: list[Any] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field = field if field is not None else parse_field(message)
        self.details = list(details or [])
        self.field_violations = _field_violations(self.details)
        if self.field is None and self.field_violations:
            self.field = self.field_violations[0].field
        super().__init__(f"{code.name}: {message}")

    @staticmethod
    def from_status(
        code: grpc.StatusCode, message: str, *, details: list[Any] | None = None
    ) -> APIError:
        """Builds the subclass that ``code`` maps to (see ``ERRORS_BY_CODE``)."""
        cls = ERRORS_BY_CODE.get(code, APIError)
        return cls(code, message, details=details)

    def __reduce__(self) -> tuple[Any, ...]:  # keep errors picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.code, self.message), {"field": self.field, "details": self.details})


class InvalidArgumentError(APIError):
    """INVALID_ARGUMENT: the request is malformed; ``field`` names the culprit."""


class OutOfRangeError(InvalidArgumentError):
    """OUT_OF_RANGE: a value is past a valid range (e.g. a page token)."""


class NotFoundError(APIError):
    """NOT_FOUND: a named dataset, job or model does not exist."""


class AlreadyExistsError(APIError):
    """ALREADY_EXISTS: a resource with that name exists."""


class FailedPreconditionError(APIError):
    """FAILED_PRECONDITION: e.g. predicting with a model that is not ready, cancelling a finished job."""


class ResourceExhaustedError(APIError):
    """RESOURCE_EXHAUSTED: a size, budget or queue limit (or a gRPC message size limit)."""


class UnauthenticatedError(APIError):
    """UNAUTHENTICATED: missing or bad credentials."""


class PermissionDeniedError(APIError):
    """PERMISSION_DENIED: the credentials do not allow this call."""


class DeadlineExceededError(APIError):
    """DEADLINE_EXCEEDED: the call (or ``job.wait(timeout=...)``) ran past its deadline."""


class UnavailableError(APIError):
    """UNAVAILABLE: the server cannot be reached (yet); usually worth retrying."""


class CancelledError(APIError):
    """CANCELLED: the call was cancelled (not a training job; see TrainingCancelledError)."""


class AbortedError(APIError):
    """ABORTED: a concurrency conflict; retrying the whole operation may succeed."""


class UnimplementedError(APIError):
    """UNIMPLEMENTED: the server does not offer this call (version skew?)."""


class InternalError(APIError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a server bug or an unexpected failure."""


# The one table: every status but OK names its class.
ERRORS_BY_CODE: dict[grpc.StatusCode, type[APIError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


class TrainingFailedError(GradwireError):
    """A training job ended in state FAILED.

    Attributes:
        job: the ``TrainingJob`` (refreshed; ``job.proto.error`` holds the status).
        code: the failure's ``grpc.StatusCode`` (e.g. RESOURCE_EXHAUSTED, INTERNAL).
        message: the server's description of the failure.
    """

    def __init__(self, job: TrainingJob, code: grpc.StatusCode, message: str) -> None:
        self.job = job
        self.code = code
        self.message = message
        super().__init__(f"{job.name} failed: {code.name}: {message}")


class TrainingCancelledError(GradwireError):
    """A training job ended in state CANCELLED. ``job`` is the refreshed ``TrainingJob``."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        super().__init__(f"{job.name} was cancelled")


def parse_field(message: str) -> str | None:
    """The field path a message starts with, or None.

    >>> parse_field("training.batching.mini_batch.batch_size: must be >= 1, got 0")
    'training.batching.mini_batch.batch_size'
    >>> parse_field("model is not ready") is None
    True
    """
    match = _FIELD_RE.match(message)
    return match.group(1) if match else None


def status_code(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a ``google.rpc.Status.code`` number (UNKNOWN if unknown)."""
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def from_rpc_error(error: grpc.RpcError) -> APIError:
    """Converts an error raised by a gRPC call into the matching APIError subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    details = _rich_details(error)
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (message or "").lower():
        message += "; is a gradwire server running at that address? (`gradwire serve` starts one; gw.Client's target names it)"
    return APIError.from_status(code or grpc.StatusCode.UNKNOWN, message or "", details=details)


@contextlib.contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Re-raises any ``grpc.RpcError`` inside the block as an APIError, without the gRPC chain.

    The client wraps every call in this once (``Client._unary`` and friends).
    """
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def _field_violations(details: list[Any]) -> list[FieldViolation]:
    """FieldViolations of every google.rpc.BadRequest among a status's Any details."""
    out: list[FieldViolation] = []
    for detail in details:
        type_url = getattr(detail, "type_url", "")
        if not type_url.endswith("/google.rpc.BadRequest"):
            continue
        from google.rpc import error_details_pb2

        bad = error_details_pb2.BadRequest()
        try:
            detail.Unpack(bad)
        except Exception:  # noqa: BLE001 - a malformed detail must not hide the real error
            continue
        out.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return out


def _rich_details(error: grpc.RpcError) -> list[Any]:
    """The Any details of a google.rpc.Status in the trailers, if any (best effort)."""
    try:
        trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not a grpc.Call; nothing to read
        return []
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY:
            from google.rpc import status_pb2

            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - garbage trailers must not hide the real error
                return []
            return list(status.details)
    return []
