"""Wrapping method handlers: how metrics, API keys and error mapping reach every RPC.

The wrappers themselves are here too: ``counting_calls`` (metrics of
``eventline_shared.observability.metrics``) and ``requiring_keys`` (the API-key check
of ``eventline_shared.security.api_keys``), each a context manager that every call runs
inside (``running_inside``, the one way to surround calls); ``mapping_errors``, in
``grpc_server``, decodes requests and encodes replies itself.

Each of them is a ``HandlerWrapper``: given a method's full name and its
handler, it returns the handler to serve instead. ``grpc_server.Server`` applies
them once, when a servicer is registered, not on every call the way a
``grpc.aio.ServerInterceptor`` runs (an interceptor's ``intercept_service`` is
awaited per call, before the handler is even looked up). What is switched off
(API keys) wraps nothing and so costs nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc

from eventline_shared.errors import PermissionDenied, Unauthenticated
from eventline_shared.observability.metrics import RPC_SECONDS, RPCS
from eventline_shared.security.api_keys import KeyStore, allows, required_scope

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


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)

Around = Callable[[Any], AbstractAsyncContextManager[None]]
"""Given a call's context, what each call of a wrapped handler runs inside (``async with``)."""


def running_inside(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The handler, of the same kind, style and serializers, each call running inside
    ``around(context)``: the one way a wrapper surrounds calls (``counting_calls``,
    ``requiring_keys``).

    ``around`` may refuse a call by aborting it before it yields (``context.abort_with_status``),
    and sees how the call ended: an exception raised through it, else the context's code.
    """
    for kind, register in _KINDS:
        inner = getattr(handler, kind)
        if inner is not None:
            return register(
                _inside(inner, around),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _inside(inner: Callable[..., Any], around: Around) -> Callable[..., Any]:
    """``inner`` inside ``around``, in its style: an async generator stays one (grpc tells them apart)."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async with around(context):
                async for reply in inner(request, context):
                    yield reply

        return stream

    async def call(request: Any, context: Any) -> Any:
        async with around(context):
            return await inner(request, context)

    return call


def _names(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code_of(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    return default


def counting_calls(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Wraps a method's handler to count every call by status code and observe its latency.

    Applied last (outermost), so that calls refused for their API key count too.
    """
    service, name = _names(method)
    counted = RPCS.labels(service, name, "OK")  # created up front: the series exists from the start
    latency = RPC_SECONDS.labels(service, name)

    class Counting:
        """One call, counted when it ends. A class rather than ``@asynccontextmanager``: it
        runs on every call, and costs a third of a generator-based one."""

        __slots__ = ("context", "started")

        def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            self.context = context
            self.started = 0.0

        async def __aenter__(self) -> None:
            self.started = time.perf_counter()

        async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
            latency.observe(time.perf_counter() - self.started)
            failure = None
            if kind is not None:
                failure = "CANCELLED" if issubclass(kind, asyncio.CancelledError) else "UNKNOWN"
            code = _code_of(self.context, failure or "OK")
            (counted if code == "OK" else RPCS.labels(service, name, code)).inc()

    return running_inside(handler, Counting)


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def requiring_keys(store: KeyStore) -> HandlerWrapper:
    """Wraps each method's handler so that a call needs a key with the RPC's scope; health stays open.

    The check runs before the request is decoded: a refused call costs no decoding.
    """

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        needed = required_scope(method)
        if needed is None:
            return handler

        @asynccontextmanager
        async def checking(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            token = _bearer(context.invocation_metadata())
            if not token:
                await context.abort_with_status(
                    Unauthenticated("an API key is required (authorization: Bearer …)").grpc_status()
                )
            scopes = await store.scopes(token)
            if scopes is None:
                await context.abort_with_status(
                    Unauthenticated("the API key is unknown or revoked").grpc_status()
                )
            assert scopes is not None
            if not allows(scopes, needed):
                await context.abort_with_status(
                    PermissionDenied(f"the API key lacks the {needed!r} scope for this RPC").grpc_status()
                )
            yield

        return running_inside(handler, checking)

    return wrap
