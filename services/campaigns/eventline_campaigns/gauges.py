"""The campaign service's own metrics gauges: its delivery ledger by channel and status.

Refreshed with the stream gauges every EVENTLINE_METRICS_INTERVAL_S seconds while the
``/metrics`` endpoint serves (``eventline_shared.server.operations``).
"""

from __future__ import annotations

import asyncpg
from eventline.campaigns.v1 import campaigns_pb2
from prometheus_client import Gauge

DELIVERIES = Gauge(
    "eventline_deliveries", "Deliveries in the ledger, by channel and status.", ["channel", "status"]
)


def _label(
    enum: type[campaigns_pb2.Channel] | type[campaigns_pb2.DeliveryStatus], prefix: str, value: int
) -> str:
    """The label of an enum value: ``CHANNEL_EMAIL`` -> ``email``; an unknown number as itself."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


async def refresh_delivery_gauges(pool: asyncpg.Pool) -> None:
    """Set ``DELIVERIES`` from the ledger."""
    rows = await pool.fetch("SELECT channel, status, count(*) AS n FROM deliveries GROUP BY channel, status")
    for row in rows:
        DELIVERIES.labels(
            _label(campaigns_pb2.Channel, "CHANNEL_", row["channel"]),
            _label(campaigns_pb2.DeliveryStatus, "DELIVERY_STATUS_", row["status"]),
        ).set(row["n"])
