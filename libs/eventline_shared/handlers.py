"""What every server interceptor needs to know to wrap a method handler."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


def writing_stream(handler: grpc.RpcMethodHandler) -> Callable[..., Awaitable[Any]] | None:
    """The handler's server-streaming function when it writes its replies with ``context.write``.

    grpc.aio serves two styles of streaming handler: an async generator that
    yields its replies, and a coroutine function that writes them and returns
    None (the health service's Watch is one). It tells them apart by the
    function itself, so a wrapper must keep the style of what it wraps: a
    writing handler is wrapped like a unary one (a coroutine taking the
    request and the context) and registered as streaming.
    """
    stream = handler.unary_stream
    return stream if stream is not None and inspect.iscoroutinefunction(stream) else None
