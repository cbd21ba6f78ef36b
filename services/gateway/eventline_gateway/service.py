"""Wiring of the gateway: channels, backend health, the HTTP application and its server.

aiohttp serves HTTP: it is already a dependency of the suite (the campaign channels call
providers with it), its request parser is C (llhttp), and it runs on the same asyncio
loop as the grpc.aio channels, so a request costs no thread hop. Its router holds the
gateway's own routes (``/healthz``, ``/readyz``, ``/openapi.json``, and later provider
callbacks); every other path goes to the transcoder, whose routes come from the protos.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
import orjson
from aiohttp import web
from eventline.campaigns.v1 import campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2_grpc
from google.rpc import code_pb2
from prometheus_client import Counter, Histogram, start_http_server

from eventline_gateway import callbacks, errors, unsubscribe
from eventline_gateway.backends import SERVICES, Backend, open_channels
from eventline_gateway.errors import HttpError
from eventline_gateway.settings import Settings
from eventline_gateway.transcoder import Transcoder
from eventline_shared.observability import logs, tracing
from eventline_shared.observability.dependencies import DependencyMonitor
from eventline_shared.observability.metrics import LATENCY_BUCKETS
from eventline_shared.security.tls import SecuritySettings

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "eventline_http_requests",  # exported as eventline_http_requests_total
    "HTTP requests answered by the gateway, by route template, method and HTTP status.",
    ["route", "http_method", "http_status"],
)
REQUEST_SECONDS = Histogram(
    "eventline_http_request_duration_seconds",
    "Time from receiving an HTTP request to its response, by route template and method.",
    ["route", "http_method"],
    buckets=LATENCY_BUCKETS,
)

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
JSON = "application/json"


@dataclass
class Exchange:
    """What the edge middleware and the handler share about the request being served."""

    request_id: str
    route: str = ""
    """The route template, for the metrics' labels."""


_exchange: contextvars.ContextVar[Exchange] = contextvars.ContextVar("exchange")


@dataclass
class GatewayState:
    """What the routes read besides the transcoder and the backends' health."""

    deadline_s: float
    openapi: bytes
    stopping: bool = False
    """Set at the start of a shutdown: /readyz answers 503 from then on."""


TRANSCODER = web.AppKey("transcoder", Transcoder)
BACKENDS = web.AppKey("backends", DependencyMonitor)
STATE = web.AppKey("state", GatewayState)


def openapi_document() -> bytes:
    """The OpenAPI document generated from the protos (``scripts/gen_protos.py``)."""
    return resources.files("eventline_gateway").joinpath("openapi.json").read_bytes()


def _reply(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def error_response(error: HttpError) -> web.Response:
    response = _reply(error.body(), error.http_status)
    response.headers.update(error.headers)
    if error.status.code == code_pb2.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = 'Bearer realm="eventline"'
    return response


@web.middleware
async def edge(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, errors as google.rpc.Status JSON, metrics: around every route."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else f"{random.getrandbits(64):016x}"  # not a secret
    token = logs.request_id.set(request_id)
    exchange = Exchange(request_id, _own_route(request))
    _exchange.set(exchange)
    started = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except HttpError as error:
            response = error_response(error)
        except web.HTTPRequestEntityTooLarge as too_large:
            response = error_response(
                HttpError(
                    errors.status(code_pb2.RESOURCE_EXHAUSTED, f"the body is larger than {too_large.text}"),
                    413,
                )
            )
        except web.HTTPException as http:
            code = code_pb2.NOT_FOUND if http.status == 404 else code_pb2.INVALID_ARGUMENT
            response = error_response(HttpError(errors.status(code, http.reason), http.status))
        except Exception:
            log.exception("unexpected error", extra={"path": request.path[:200]})
            response = error_response(HttpError(errors.status(code_pb2.INTERNAL, "internal error")))
        response.headers["X-Request-Id"] = request_id
        seconds, count = _request_metrics(exchange.route or "unmatched", request.method, response.status)
        seconds.observe(time.perf_counter() - started)
        count.inc()
        if response.status >= 500:
            log.warning("request failed", extra={"path": request.path[:200], "http_status": response.status})
        return response
    finally:
        logs.request_id.reset(token)


@functools.lru_cache(maxsize=1024)
def _request_metrics(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The histogram and counter children of a route, method and status: ``labels()`` looks
    them up under a lock and checks the values on every call; these are remembered (routes
    are templates, so the combinations are few; a client inventing methods only cycles the
    cache)."""
    return REQUEST_SECONDS.labels(route, method), REQUESTS.labels(route, method, str(status))


def _own_route(request: web.Request) -> str:
    """The path of a route of the gateway's own ("" for the transcoder's, which label themselves)."""
    resource = request.match_info.route.resource
    return "" if resource is None or request.match_info.route.handler is transcode else resource.canonical


def _timeout(request: web.Request, ceiling: float) -> float:
    """The call's deadline: a ``Grpc-Timeout`` header (gRPC's format, ``5S``, ``200m``) when shorter."""
    header = request.headers.get("Grpc-Timeout")
    if header is None:
        return ceiling
    found = _GRPC_TIMEOUT.fullmatch(header.strip())
    if found is None:
        raise errors.invalid("Grpc-Timeout", "must be 1 to 8 digits and a unit (H, M, S, m, u, n)")
    return min(int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)], ceiling)


def _metadata(request: web.Request) -> list[tuple[str, str]]:
    """What a call carries from its HTTP request: the client's key, the request id, the trace."""
    metadata = [("x-request-id", _exchange.get().request_id)]
    authorization = request.headers.get("Authorization")
    if authorization is not None and _HEADER_VALUE.fullmatch(authorization):
        metadata.append(("authorization", authorization))
    trace = tracing.TraceContext.parse(request.headers.get("traceparent"))
    if trace is not None:
        metadata.append(("traceparent", trace.header))
    return metadata


async def transcode(request: web.Request) -> web.Response:
    """Any path the router does not know: an RPC by its HTTP binding."""
    transcoder = request.app[TRANSCODER]
    route, match = transcoder.match(request.method, request.rel_url.raw_path)
    _exchange.get().route = route.template
    body = await request.read() if route.binding.body else b""
    message = route.request(match, request.rel_url.query, body)
    deadline_s = _timeout(request, request.app[STATE].deadline_s)
    try:
        reply = await route.call(message, metadata=_metadata(request), timeout=deadline_s)
    except grpc.aio.AioRpcError as error:
        raise errors.from_rpc_error(error, route.backend) from None
    return _reply(_dump(route.reply(reply)))


def _dump(value: Any) -> bytes:
    return orjson.dumps(value)


def _health_body(request: web.Request, ready: bool) -> dict[str, Any]:
    monitor = request.app[BACKENDS]
    return {
        "status": "SERVING" if ready else "NOT_SERVING",
        "backends": {
            backend.name: {
                "status": "SERVING" if monitor.up(backend.name) else "NOT_SERVING",
                "required": backend.required,
            }
            for backend in monitor.dependencies
        },
    }


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while the process answers (a backend's outage is no reason to restart
    it); the body shows the backends all the same."""
    return _reply(_dump(_health_body(request, True)))


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while every required backend is SERVING, 503 otherwise and from the
    start of a shutdown. ``?backend=NAME`` asks about one backend, required or not."""
    monitor = request.app[BACKENDS]
    stopping = request.app[STATE].stopping
    name = request.query.get("backend")
    if name is not None:
        if name not in SERVICES:
            raise errors.invalid("backend", f"unknown backend; known: {', '.join(SERVICES)}")
        ready = not stopping and monitor.up(name)
    else:
        ready = not stopping and monitor.serving
    return _reply(_dump(_health_body(request, ready)), 200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    return _reply(request.app[STATE].openapi)


def build_app(
    transcoder: Transcoder,
    backends: DependencyMonitor,
    settings: Settings,
    campaigns: grpc.aio.Channel | None = None,
    ingestion: grpc.aio.Channel | None = None,
) -> web.Application:
    """The HTTP application: the gateway's own routes, then every transcoded RPC."""
    app = web.Application(middlewares=[edge], client_max_size=settings.max_body_bytes)
    if ingestion is not None and settings.unsubscribe_secret:
        app[unsubscribe.UNSUBSCRIBER] = unsubscribe.Unsubscriber(
            settings.unsubscribe_secret,
            ingestion_pb2_grpc.IngestionServiceStub(ingestion),
            settings.callbacks.service_api_key,
        )
    if campaigns is not None:
        app[callbacks.CALLBACKS] = callbacks.Callbacks(
            settings.callbacks, campaigns_pb2_grpc.CampaignServiceStub(campaigns)
        )
    app[TRANSCODER] = transcoder
    app[BACKENDS] = backends
    app[STATE] = GatewayState(settings.deadline_s, openapi_document())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/callbacks/{provider}", callbacks.callback)
    app.router.add_route("GET", "/v1/unsubscribe/{token}", unsubscribe.unsubscribe)
    app.router.add_route("POST", "/v1/unsubscribe/{token}", unsubscribe.unsubscribe)
    # Last: whatever the routes above do not take is an RPC (or a clean 404/405).
    app.router.add_route("*", "/{path:.*}", transcode)
    return app


def server_ssl_context(security: SecuritySettings) -> ssl.SSLContext | None:
    """HTTPS with the suite's certificate when EVENTLINE_TLS_CERT/KEY are set; client
    certificates required under EVENTLINE_TLS_CLIENT_CA (mutual TLS)."""
    if not security.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(security.tls_cert, security.tls_key)
    if security.tls_client_ca:
        context.load_verify_locations(security.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class RunningGateway:
    app: web.Application
    port: int
    metrics_port: int
    backends: DependencyMonitor


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningGateway]:
    """The gateway, serving until the context exits; then a graceful stop."""
    common = settings.common
    security = common.security or SecuritySettings()
    channels = open_channels(settings.backends, security)
    monitor = DependencyMonitor(
        [Backend(name, channels[name], required=name in settings.required_backends) for name in SERVICES],
        interval_s=common.health_probe_interval_s,
    )
    transcoder = Transcoder.for_services(SERVICES, channels)
    app = build_app(transcoder, monitor, settings, channels["campaigns"], channels["ingestion"])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=common.shutdown_grace_s)
    metrics_server: Any = None
    try:
        await monitor.start()
        await runner.setup()
        site = web.TCPSite(
            runner,
            common.host,
            common.port,
            ssl_context=server_ssl_context(security),
            reuse_port=settings.workers > 1 or None,  # workers share the port; the kernel spreads connections
        )
        await site.start()
        port = int(runner.addresses[0][1])
        metrics_port = 0
        if common.metrics_port is not None:
            metrics_server, _ = start_http_server(common.metrics_port, addr=common.host)
            metrics_port = int(metrics_server.server_port)
        log.info(
            "gateway serving",
            extra={"port": port, "metrics_port": metrics_port, "backends": dict(settings.backends)},
        )
        yield RunningGateway(app, port, metrics_port, monitor)
    finally:
        app[STATE].stopping = True  # /readyz answers 503 from here on
        await runner.cleanup()  # stops listening, lets requests in flight finish within the grace
        await monitor.stop()
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.shutdown)
            metrics_server.server_close()
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
