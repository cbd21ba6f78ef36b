"""Prometheus metrics, and what every server gets from its configuration.

``counting_calls`` counts RPCs by service, method and status code and observes
their latency. ``Operations`` bundles what ``grpc_server.Server`` adds to every
service from ``CommonSettings``: counting calls, the API-key
check (``eventline_shared.security.api_keys``), TLS credentials, and the ``/metrics`` HTTP
endpoint (on EVENTLINE_<SERVICE>_METRICS_PORT; off when unset) with gauges that
are refreshed every EVENTLINE_METRICS_INTERVAL_S seconds: stream length,
pending entries and lag per consumer group, outbox backlog (ingestion) and
deliveries by channel and status (campaigns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from eventline_shared.security.api_keys import KeyStore, requiring_keys
from eventline_shared.server.handlers import HandlerWrapper, writing_stream

if TYPE_CHECKING:
    from eventline_shared.server.config import CommonSettings

log = logging.getLogger(__name__)

RPCS = Counter(
    "eventline_rpcs",  # exported as eventline_rpcs_total
    "RPCs handled, by gRPC service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "eventline_rpc_duration_seconds",
    "Time from receiving an RPC to its status, by gRPC service and method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STREAM_LENGTH = Gauge("eventline_stream_length", "Entries in the event stream.", ["stream"])
STREAM_PENDING = Gauge(
    "eventline_stream_pending_entries",
    "Entries delivered to a consumer group and not yet acknowledged.",
    ["stream", "group"],
)
STREAM_LAG = Gauge(
    "eventline_stream_lag_entries",
    "Entries of the stream a consumer group has not read yet.",
    ["stream", "group"],
)
OUTBOX_BACKLOG = Gauge("eventline_outbox_backlog_rows", "Outbox rows not yet published to the stream.")
DELIVERIES = Gauge(
    "eventline_deliveries", "Deliveries in the ledger, by channel and status.", ["channel", "status"]
)

DEPENDENCY_UP = Gauge(
    "eventline_dependency_up",
    "1 while a dependency of the service answers its probes and real work, 0 while it does not.",
    ["dependency"],
)

CHANNELS = {1: "email", 2: "sms", 3: "push"}
DELIVERY_STATUSES = {1: "pending", 2: "sent", 3: "failed", 4: "skipped"}


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

    def record(context: grpc.aio.ServicerContext[Any, Any], started: float, failure: str | None) -> None:
        latency.observe(time.perf_counter() - started)
        code = _code_of(context, failure or "OK")
        (counted if code == "OK" else RPCS.labels(service, name, code)).inc()

    writer = writing_stream(handler)
    if handler.unary_unary or writer:
        inner = writer or handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            failure: str | None = None
            try:
                return await inner(request, context)
            except asyncio.CancelledError:
                failure = "CANCELLED"
                raise
            except BaseException:
                failure = "UNKNOWN"
                raise
            finally:
                record(context, started, failure)

        register = grpc.unary_stream_rpc_method_handler if writer else grpc.unary_unary_rpc_method_handler
        return register(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failure: str | None = None
            try:
                async for reply in inner_stream(request, context):
                    yield reply
            except asyncio.CancelledError:
                failure = "CANCELLED"
                raise
            except BaseException:
                failure = "UNKNOWN"
                raise
            finally:
                record(context, started, failure)

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class Operations:
    """Metrics endpoint, API keys and TLS for one server, from its ``CommonSettings``."""

    def __init__(self, service_names: Sequence[str], settings: CommonSettings) -> None:
        from eventline_shared.security.api_keys import SecuritySettings

        self.settings = settings
        self.service_names = list(service_names)
        self.security: SecuritySettings = getattr(settings, "security", None) or SecuritySettings()
        self.metrics_port: int | None = getattr(settings, "metrics_port", None)
        self.keys: KeyStore | None = None
        self._pool: Any = None
        self._http: Any = None
        self._probes: asyncio.Task[None] | None = None
        self.bound_metrics_port = 0

    def wrappers(self) -> list[HandlerWrapper]:
        """What wraps every method's handler, innermost first (see ``eventline_shared.server.handlers``)."""
        found: list[HandlerWrapper] = []
        if self.security.auth:
            found.append(requiring_keys(lambda: self.keys))
        found.append(counting_calls)
        return found

    def credentials(self) -> grpc.ServerCredentials | None:
        return self.security.server_credentials()

    async def start(self) -> None:
        if self.security.auth:
            import asyncpg

            self._pool = await asyncpg.create_pool(self.settings.database_url, min_size=1, max_size=4)
            self.keys = KeyStore(self._pool, self.security.auth_cache_s)
        if self.metrics_port is not None:
            self._http, _ = start_http_server(self.metrics_port, addr=self.settings.host)
            self.bound_metrics_port = int(self._http.server_port)
            log.info("metrics serving", extra={"metrics_port": self.bound_metrics_port})
            self._probes = asyncio.create_task(self._refresh_gauges())

    async def stop(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        if self._http is not None:
            await asyncio.to_thread(self._http.shutdown)
            self._http.server_close()
        if self._pool is not None:
            await self._pool.close()

    async def _refresh_gauges(self) -> None:
        import asyncpg

        from eventline_shared.streams import stream

        interval = float(getattr(self.settings, "metrics_interval_s", 15.0))
        names = " ".join(self.service_names).lower()
        client = stream.connect(self.settings.redis_url)
        connection: asyncpg.Connection | None = None
        try:
            while True:
                for key in self.settings.stream_layout.keys:
                    with contextlib.suppress(Exception):
                        await refresh_stream_gauges(client, key)
                try:
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(self.settings.database_url, timeout=5)
                    if "ingestion" in names:
                        OUTBOX_BACKLOG.set(await connection.fetchval("SELECT count(*) FROM event_outbox"))
                    if "campaigns" in names:
                        await refresh_delivery_gauges(connection)
                except Exception as exc:
                    log.debug("metrics probe failed", extra={"error": repr(exc)})
                await asyncio.sleep(interval)
        finally:
            await client.aclose()
            if connection is not None:
                await connection.close()


async def refresh_stream_gauges(client: Any, stream_key: str) -> None:
    STREAM_LENGTH.labels(stream_key).set(await client.xlen(stream_key))
    if not await client.exists(stream_key):
        return
    for group in await client.xinfo_groups(stream_key):
        name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
        STREAM_PENDING.labels(stream_key, name).set(group.get("pending", 0) or 0)
        lag = group.get("lag")
        if lag is not None:
            STREAM_LAG.labels(stream_key, name).set(lag)


async def refresh_delivery_gauges(connection: Any) -> None:
    if await connection.fetchval("SELECT to_regclass('deliveries') IS NULL"):
        return
    rows = await connection.fetch(
        "SELECT channel, status, count(*) AS n FROM deliveries GROUP BY channel, status"
    )
    for row in rows:
        DELIVERIES.labels(
            CHANNELS.get(row["channel"], str(row["channel"])),
            DELIVERY_STATUSES.get(row["status"], str(row["status"])),
        ).set(row["n"])
