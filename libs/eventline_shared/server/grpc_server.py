"""How every Eventline service serves gRPC.

``mapping_errors`` is the one place that turns exceptions into statuses; it
also applies each method's request size limit (before decoding) and bounds how
long a streaming reply may wait for its client to read. ``WrappingServer``
applies it, and the other handler wrappers (metrics, API keys), to each handler
once, when the servicer is registered: nothing runs per call but the wrappers. ``Server`` runs a server
with health checking, reflection, explicit message size limits and a graceful
shutdown on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeAlias, TypeVar

import asyncpg
import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from eventline_shared.environment import ConfigError
from eventline_shared.errors import (
    Aborted,
    DeadlineExceeded,
    EventlineError,
    FieldViolation,
    InvalidArgument,
    ReplyTooLarge,
    ResourceExhausted,
)
from eventline_shared.observability import logs
from eventline_shared.observability.dependencies import DependencyMonitor, health_name
from eventline_shared.observability.logs import current_call as _current_call
from eventline_shared.paging import MAX_REPLY_BYTES
from eventline_shared.server import workers
from eventline_shared.server.config import CommonSettings
from eventline_shared.server.handlers import HandlerWrapper, writing_stream
from eventline_shared.server.operations import Gauges, Operations
from eventline_shared.storage import database
from eventline_shared.streams import stream

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Requests and replies larger than this are refused with RESOURCE_EXHAUSTED.

A service lowers the limit of its requests method by method (``Server``'s
``max_request_bytes``); this is the limit of the methods that declare none.
"""

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]

Context: TypeAlias = Any
"""A servicer's call context, ``grpc.aio.ServicerContext`` (grpcio ships no type information)."""


def _with_defaults(options: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``options`` and the ``SERVER_OPTIONS`` they do not set (gRPC takes the first of a repeated key)."""
    given = list(options)
    names = {name for name, _ in given}
    return [*given, *(option for option in SERVER_OPTIONS if option[0] not in names)]


def method_path(service: str, method: str) -> str:
    """The full name of a method as gRPC routes it: ``/eventline.x.v1.XService/Method``."""
    return f"/{service}/{method}"


def database_timeout(context: Context, ceiling: float) -> float:
    """The timeout for a database call made for ``context``: a little less than its time left.

    The margin lets asyncpg's timeout (which cancels the statement in
    PostgreSQL) fire before gRPC cancels the handler at the deadline itself;
    without a deadline, ``ceiling`` bounds the call.
    """
    left: float | None = context.time_remaining()
    if left is None:
        return ceiling
    return max(min(max(left - 0.05, left * 0.5), ceiling), 0.001)


def as_status(exc: BaseException, method: str, remaining_s: float | None = None) -> grpc.Status:
    """The status a client sees for ``exc``, raised while serving ``method``.

    A timeout once the client's deadline has passed is DEADLINE_EXCEEDED,
    whatever timed out (database calls get the remaining time as timeout).
    """
    error = exc if isinstance(exc, EventlineError) else None
    if error is None and isinstance(exc, TimeoutError) and remaining_s is not None and remaining_s <= 0.01:
        error = DeadlineExceeded("the deadline passed before the call completed")
    if error is None:
        # Driver errors that reach the edge: PostgreSQL's, then Redis's.
        error = database.translate(exc) or stream.translate(exc)
    if error is None:
        log.exception("unexpected error", extra={"method": method}, exc_info=exc)
        error = EventlineError("internal error")
    elif error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.warning("dependency error", extra={"method": method, "error": repr(exc)})
    return error.grpc_status()


def _decode(decode: Callable[[bytes], Any] | None, raw: bytes, limit: int | None) -> Any:
    """The request message; one protobuf cannot decode (e.g. nested past its depth limit of
    100) is INVALID_ARGUMENT, where gRPC's own decoding would answer UNKNOWN.

    A request larger than the method's ``limit`` is RESOURCE_EXHAUSTED before any
    decoding: the work a request can cost starts with its size.
    """
    if limit is not None and len(raw) > limit:
        raise ResourceExhausted(
            [FieldViolation("", f"the request is {len(raw):,} bytes; this method accepts at most {limit:,}")]
        )
    if decode is None:
        return raw
    try:
        return decode(raw)
    except DecodeError as exc:
        raise InvalidArgument([FieldViolation("", f"the request cannot be decoded: {exc}")]) from None


def _encode(encode: Callable[[Any], bytes] | None, reply: Any) -> bytes:
    """The reply message as sent; one a client would refuse for its size is RESOURCE_EXHAUSTED.

    The last line of defence of "every reply fits the client's 4 MiB default":
    list RPCs cut their pages by bytes and writes refuse what they could not
    echo before storing anything, so this only turns a reply that would fail
    on the client into a clear error.
    """
    raw = encode(reply) if encode is not None else reply
    if len(raw) > MAX_REPLY_BYTES:
        raise ReplyTooLarge(
            f"the reply would be {len(raw):,} bytes, more than the {MAX_REPLY_BYTES:,} a reply may hold; "
            "ask for less (a smaller page_size)"
        )
    return bytes(raw)


def _written(write: asyncio.Future[None]) -> None:
    # A write left pending (the stream stalled, or the call was cancelled) fails when the
    # call ends: nothing to report.
    if not write.cancelled():
        write.exception()


async def _write(context: grpc.aio.ServicerContext[Any, Any], reply: Any, idle_s: float | None) -> Any:
    """Write one reply of a stream; returns the write still pending when the client did not
    take it within ``idle_s`` (None once written).

    The pending write is not cancelled: grpc frees the message it sends only when
    the write completes (when the client reads it, or when the call ends).
    """
    if idle_s is None:
        await context.write(reply)
        return None
    write = asyncio.ensure_future(context.write(reply))
    write.add_done_callback(_written)  # also when this handler is cancelled while it waits
    await asyncio.wait({write}, timeout=idle_s)
    if not write.done():
        return write
    write.result()
    return None


def _wrap(
    handler: grpc.RpcMethodHandler, method: str, limit: int | None, stream_idle_s: float | None
) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer
    encode = handler.response_serializer
    writer = writing_stream(handler)
    if handler.unary_unary or writer:
        inner_unary = writer or handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            _current_call.set(context)
            try:
                reply = await inner_unary(_decode(decode, raw, limit), context)
                # A writing stream's replies go through context.write and its serializer.
                return None if writer else _encode(encode, reply)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await context.abort_with_status(as_status(exc, method, context.time_remaining()))

        if writer:
            return grpc.unary_stream_rpc_method_handler(
                unary, request_deserializer=None, response_serializer=handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            unary,
            # Decoded and encoded in ``unary``, where a bad message or a reply too large is a clean error.
            request_deserializer=None,
            response_serializer=None,
        )
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def stream(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            """Writes the handler's replies itself, so that a client that stops reading cannot
            hold the call (and what the handler holds) for longer than ``stream_idle_s``."""
            _current_call.set(context)
            failure: grpc.Status | None = None
            stalled: Any = None
            replies: AsyncIterator[Any] | None = None
            try:
                replies = inner_stream(_decode(decode, raw, limit), context)
                if stream_idle_s is not None:
                    # Sent on their own, so that the status can follow a write still pending.
                    await context.send_initial_metadata(())
                while failure is None:
                    try:
                        reply = await anext(replies)
                    except StopAsyncIteration:
                        break
                    stalled = await _write(context, _encode(encode, reply), stream_idle_s)
                    if stalled is not None:
                        failure = as_status(
                            Aborted(
                                f"the client read nothing for {stream_idle_s:g} s, so the stream was "
                                "ended; resume it from the last reply received"
                            ),
                            method,
                        )
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                if _is_grpc_internal(exc):
                    raise  # a write failed because the call ended: grpc handles it
                failure = as_status(exc, method, context.time_remaining())
            finally:
                aclose = getattr(replies, "aclose", None)
                if aclose is not None:
                    await aclose()  # releases what the handler holds before the status is sent
            if failure is not None:
                # Queued behind a pending write, the status reaches the client after the
                # replies it has not read.
                await context.abort_with_status(failure)
            return
            yield  # never reached: makes this an async generator, the style the wrappers outside wrap

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=None,
            response_serializer=None,
        )
    return handler


def _is_grpc_internal(exc: BaseException) -> bool:
    """Errors grpc raises from a write when the call has ended (not the handler's)."""
    return type(exc).__module__.startswith("grpc._cython")


def mapping_errors(
    max_request_bytes: Mapping[str, int] | None = None, stream_idle_s: float | None = None
) -> HandlerWrapper:
    """Wraps each method's handler so that every exception becomes a google.rpc.Status, the
    request is size-checked and decoded (and the reply encoded) where a failure is a clean
    error, and the call is marked for logs. The innermost wrapper: it wraps the servicer's own
    handler."""
    limits = dict(max_request_bytes or {})

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return _wrap(handler, method, limits.get(method), stream_idle_s)

    return wrap


class _WrappedHandlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler (what generated code registers) whose handlers are wrapped, each once."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrapped: Callable[[str, Any], Any]) -> None:
        self._inner = inner
        self._wrapped = wrapped

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else self._wrapped(details.method, handler)


class WrappingServer(grpc.aio.Server):  # type: ignore[misc]
    """A grpc.aio server that wraps every handler registered on it with ``wrappers``, once, at
    registration, instead of running interceptors on every call.

    The generated ``add_XServicer_to_server`` functions, health and reflection
    register on it as on any grpc.aio server.
    """

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[HandlerWrapper]) -> None:
        self._server = server
        self._wrappers = list(wrappers)
        self._wrapped_by_method: dict[str, grpc.RpcMethodHandler] = {}

    def _wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of ``method`` wrapped (a method has one handler: wrapped the first time)."""
        found = self._wrapped_by_method.get(method)
        if found is None:
            found = handler
            for wrap in self._wrappers:
                found = wrap(method, found)
            self._wrapped_by_method[method] = found
        return found

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedHandlers(each, self._wrapped) for each in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._wrapped(method_path(service_name, name), handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return int(self._server.add_secure_port(address, server_credentials))

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(await self._server.wait_for_termination(timeout))


LIVENESS_HEALTH_NAME = "eventline.liveness"
"""A grpc.health.v1 name that is SERVING while the process answers, whatever its dependencies
(NOT_SERVING once it shuts down): what a liveness probe asks, so that an outage of PostgreSQL
restarts no replica. Readiness follows ``""``."""


def _health_status(serving: bool) -> int:
    return int(
        health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )


class Server:
    """A gRPC server with health checking and reflection, started and stopped as a unit.

    Health: ``""`` and each of ``service_names`` are SERVING while every
    required dependency of ``dependencies`` is up, NOT_SERVING otherwise and
    from the start of a shutdown; each dependency is reported under its own
    name too (``eventline.dependency.<name>``), and ``LIVENESS_HEALTH_NAME``
    is SERVING until the shutdown. Watch streams every change.

    ``max_request_bytes`` maps a method's full name (``method_path``) to the
    largest request it accepts, checked before decoding; methods not named there
    accept up to ``MAX_MESSAGE_BYTES``. With ``stream_idle_s``, a streaming reply
    that its client leaves unread for that long ends with ABORTED, releasing
    what the handler held.
    """

    def __init__(
        self,
        service_names: Iterable[str],
        *,
        options: Iterable[tuple[str, Any]] = (),
        settings: CommonSettings | None = None,
        dependencies: DependencyMonitor | None = None,
        max_request_bytes: Mapping[str, int] | None = None,
        stream_idle_s: float | None = None,
        pool: asyncpg.Pool | None = None,
        gauges: Sequence[Gauges] = (),
    ) -> None:
        # With settings: metrics, API keys (checked on ``pool``, the service's) and TLS as configured
        # (see eventline_shared.server.operations), the service's own ``gauges``, and the maximum
        # connection age (CommonSettings.server_options).
        self.operations = (
            Operations(settings, pool=pool, gauges=gauges) if settings is not None else None
        )
        # No interceptor runs per call: every handler is wrapped once, when it is registered.
        self.server = WrappingServer(
            grpc.aio.server(options=_with_defaults([*options, *(settings.server_options() if settings else ())])),
            [
                mapping_errors(max_request_bytes, stream_idle_s),
                *(self.operations.wrappers() if self.operations else ()),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self.dependencies = dependencies
        self._health_follower: asyncio.Task[None] | None = None

    def bind(self, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if credentials is None and self.operations is not None:
            credentials = self.operations.credentials()
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        return self.port

    async def start(self) -> None:
        if self.operations is not None:
            await self.operations.start()
        if self.dependencies is not None:
            await self.dependencies.start()  # the first health status answered is a probed one
        await self._report_health()
        await self.server.start()
        if self.dependencies is not None:
            self._health_follower = asyncio.create_task(self._follow_dependencies())

    async def _report_health(self) -> None:
        monitor = self.dependencies
        await self.health.set(LIVENESS_HEALTH_NAME, _health_status(True))
        for name in ["", *self.service_names]:
            await self.health.set(name, _health_status(monitor is None or monitor.serving))
        if monitor is not None:
            for dependency in monitor.dependencies:
                await self.health.set(
                    health_name(dependency.name), _health_status(monitor.up(dependency.name))
                )

    async def _follow_dependencies(self) -> None:
        assert self.dependencies is not None
        while True:
            await self.dependencies.changed()
            await self._report_health()

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within ``grace_s``, then stop."""
        await self.health.enter_graceful_shutdown()  # later changes of the dependencies are ignored
        await self.server.stop(grace_s)
        if self._health_follower is not None:
            self._health_follower.cancel()
            await asyncio.gather(self._health_follower, return_exceptions=True)
        if self.dependencies is not None:
            await self.dependencies.stop()
        if self.operations is not None:
            await self.operations.stop()


async def wait_for_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


SettingsT = TypeVar("SettingsT", bound="ServiceSettings")


class ServiceSettings(Protocol):
    """What a service's ``Settings`` offers: its common part, read from the environment."""

    @property
    def common(self) -> CommonSettings: ...


def serve_main(
    service: str,
    read_settings: Callable[[Mapping[str, str]], SettingsT],
    running: Callable[[SettingsT], AbstractAsyncContextManager[Any]],
    *,
    supervise_workers: bool = False,
) -> None:
    """``python -m eventline_<service>``: configure from the environment, serve until SIGTERM or SIGINT.

    With ``supervise_workers`` and ``EVENTLINE_<SERVICE>_WORKERS`` above 1, this process starts
    that many workers on the same port instead (``eventline_shared.server.workers``).
    """
    if supervise_workers and workers.supervising(os.environ, service):
        try:
            read_settings(os.environ)  # a bad variable stops the supervisor, not N workers
            sys.exit(workers.supervise(service, os.environ))
        except ConfigError as exc:
            sys.exit(f"eventline-{service}: {exc}")
    try:
        settings = read_settings(os.environ)
    except ConfigError as exc:
        sys.exit(f"eventline-{service}: {exc}")
    logs.configure(service, settings.common.log_level)

    async def serve() -> None:
        async with running(settings):
            # What the service built to start (modules, descriptors, pools: ~70,000 objects) lives
            # until it stops: moved out of the collector's generations, it is no longer walked by
            # every full collection, which paused the service 15-40 ms each (docs/performance.md).
            gc.collect()
            gc.freeze()
            await wait_for_signal()

    try:
        asyncio.run(serve())
    except database.SchemaBehind as exc:
        sys.exit(f"eventline-{service}: {exc}")
