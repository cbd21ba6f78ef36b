"""Prometheus metrics: what every service counts and measures.

``RPCS`` and ``RPC_SECONDS`` count RPCs by service, method and status code and
observe their latency (``eventline_shared.server.handlers.counting_calls``
wraps every handler with them); the stream gauges (length, pending entries and
lag per consumer group) are refreshed every EVENTLINE_METRICS_INTERVAL_S
seconds while the ``/metrics`` endpoint serves (``eventline_shared.server.operations``),
with each service's own gauges (``eventline_ingestion.relay.OUTBOX_BACKLOG``,
``eventline_campaigns.gauges.DELIVERIES``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Histogram buckets (seconds) of every request-latency metric, gRPC and HTTP alike."""

RPCS = Counter(
    "eventline_rpcs",  # exported as eventline_rpcs_total
    "RPCs handled, by gRPC service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "eventline_rpc_duration_seconds",
    "Time from receiving an RPC to its status, by gRPC service and method.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
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
DEPENDENCY_UP = Gauge(
    "eventline_dependency_up",
    "1 while a dependency of the service answers its probes and real work, 0 while it does not.",
    ["dependency"],
)

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

