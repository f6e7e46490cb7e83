"""One interceptor maps domain errors to gRPC status codes, for every RPC.

GradwireError subclasses become their status (errors.CODES) with their message;
anything else is logged with its traceback and answered INTERNAL with a generic
message, so no traceback, path or secret ever reaches a client.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import grpc

from . import errors

log = logging.getLogger("gradwire.rpc")
STATUS_BY_CODE = {code.value[0]: code for code in grpc.StatusCode}


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.GradwireError):
        context.abort(STATUS_BY_CODE[errors.code_of(exc)], exc.message)
    log.exception("unexpected error in %s", method)
    context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")


def _wrap_unary(behavior: Callable, method: str) -> Callable:
    @functools.wraps(behavior)
    def wrapper(request, context):
        try:
            return behavior(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) and not isinstance(exc, errors.GradwireError):
                raise  # context.abort() raised it: already answered
            _abort(context, exc, method)

    return wrapper


def _wrap_stream(behavior: Callable, method: str) -> Callable:
    @functools.wraps(behavior)
    def wrapper(request, context) -> Iterator:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) and not isinstance(exc, errors.GradwireError):
                raise
            _abort(context, exc, method)

    return wrapper


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, method))
        return handler
