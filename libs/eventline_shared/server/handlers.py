"""Wrapping method handlers: how metrics, API keys and error mapping reach every RPC.

Each of them is a ``HandlerWrapper``: given a method's full name and its
handler, it returns the handler to serve instead. ``grpc_server.Server`` applies
them once, when a servicer is registered, not on every call the way a
``grpc.aio.ServerInterceptor`` runs (an interceptor's ``intercept_service`` is
awaited per call, before the handler is even looked up). What is switched off
(API keys) wraps nothing and so costs nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

HandlerWrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""(method's full name, handler) -> the handler that serves the method."""


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


def checked_first(
    handler: grpc.RpcMethodHandler, check: Callable[[Any], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    """The handler, of the same kind and style, awaiting ``check(context)`` before each call.

    ``check`` refuses a call by aborting it (``context.abort``).
    """
    for kind, register in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        inner = getattr(handler, kind)
        if inner is not None:
            return register(
                _checking(inner, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _checking(inner: Callable[..., Any], check: Callable[[Any], Awaitable[None]]) -> Callable[..., Any]:
    """``inner`` after ``check``, in its style: an async generator stays one (grpc tells them apart)."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(context)
            async for reply in inner(request, context):
                yield reply

        return stream

    async def call(request: Any, context: Any) -> Any:
        await check(context)
        return await inner(request, context)

    return call
