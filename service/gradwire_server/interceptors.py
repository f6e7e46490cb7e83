"""Interceptors: authentication first, then one that maps domain errors to gRPC status codes.

GradwireError subclasses become their status (errors.CODES) with their message,
and an error naming a field carries a google.rpc.BadRequest with its field
violation in the status details (grpcio-status); anything else is logged with
its traceback and answered INTERNAL with a generic message, so no traceback,
path or secret ever reaches a client.
"""

from __future__ import annotations

import functools
import hmac
import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors

log = logging.getLogger("gradwire.rpc")
STATUS_BY_CODE = {code.value[0]: code for code in grpc.StatusCode}
INTERNAL_MESSAGE = "internal error; the server log has the details"  # all a client hears of a bug


def rich_status(exc: errors.GradwireError) -> status_pb2.Status:
    """google.rpc.Status of a domain error, with BadRequest field violations when it names a field."""
    status = status_pb2.Status(code=errors.code_of(exc), message=exc.message)
    violations = exc.field_violations()
    if violations:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
        ]))
        status.details.append(detail)
    return status


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str, data_dir: pathlib.Path | None) -> None:
    if data_dir is not None and not isinstance(exc, errors.GradwireError) and errors.disk_full(exc):
        log.warning("%s: the disk is full (%s)", method, exc)
        exc = errors.disk_full_error(data_dir)  # not the server's bug: what to do about it
    if isinstance(exc, errors.GradwireError):
        context.abort_with_status(rpc_status.to_status(rich_status(exc)))
    log.exception("unexpected error in %s", method)
    context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _wrap_unary(behavior: Callable, method: str, data_dir: pathlib.Path | None) -> Callable:
    @functools.wraps(behavior)
    def wrapper(request, context):
        try:
            return behavior(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) and not isinstance(exc, errors.GradwireError):
                raise  # context.abort() raised it: already answered
            _abort(context, exc, method, data_dir)

    return wrapper


def _wrap_stream(behavior: Callable, method: str, data_dir: pathlib.Path | None) -> Callable:
    @functools.wraps(behavior)
    def wrapper(request, context) -> Iterator:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) and not isinstance(exc, errors.GradwireError):
                raise
            _abort(context, exc, method, data_dir)

    return wrapper


HANDLER_KINDS = ("unary_unary", "stream_unary", "unary_stream", "stream_stream")


def _replace_behavior(handler: grpc.RpcMethodHandler, make: Callable[[str, Callable], Callable]) -> grpc.RpcMethodHandler:
    """The same handler with its one behavior replaced by ``make(kind, behavior)``."""
    for kind in HANDLER_KINDS:
        behavior = getattr(handler, kind)
        if behavior:
            return handler._replace(**{kind: make(kind, behavior)})
    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Answers a domain error with its status (and field violations), a full disk under
    ``data_dir`` with RESOURCE_EXHAUSTED saying so, anything else INTERNAL with a generic message
    (logged with its traceback)."""

    def __init__(self, data_dir: pathlib.Path | None = None) -> None:
        self._data_dir = data_dir
        # method -> (registered handler, wrapped handler): wrap once, not on every call
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method.startswith(OPEN_PREFIXES):
            # grpcio-health's Watch is "experimental_non_blocking" (called with a callback, returns
            # None): wrapping it as a generator broke it (UNKNOWN). It raises no domain errors.
            return handler
        def wrap(kind: str, behavior: Callable) -> Callable:
            # a unary response is returned by the behavior, a streamed one is yielded by it
            return (_wrap_stream if kind.endswith("_stream") else _wrap_unary)(behavior, method, self._data_dir)

        return _replace_behavior(handler, wrap)


UNAUTHENTICATED_MESSAGE = "missing or invalid credentials: send the metadata 'authorization: Bearer <token>'"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # load balancers and orchestrators probe without a token


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same kind of handler, answering UNAUTHENTICATED without running the method."""

    def deny(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    return _replace_behavior(handler, lambda kind, behavior: deny)


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer tokens on every RPC except health; tokens compared in constant time.

    Every configured token is compared (no early exit), so timing reveals
    neither a token nor which one matched.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("AuthInterceptor needs at least one token")

    def authorized(self, metadata) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode()
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(presented, token)
        return ok and bool(presented)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        if self.authorized(handler_call_details.invocation_metadata):
            return handler
        return _deny(handler)
