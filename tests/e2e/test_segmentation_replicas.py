"""Service-to-service calls spread over every replica: two real segmentation processes, the
campaign service's own channel and audience client, and each replica's /metrics counting what
it served: no mock anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from eventline.segmentation.v1 import segmentation_pb2 as seg
from google.protobuf import timestamp_pb2

from eventline_campaigns.audience import Audience
from eventline_shared.security import client_channels
from tests.conftest import service_env
from tests.integration.test_load_balancing import SEGMENTATION
from tests.integration.test_metrics import scrape, value
from tests.processes import ServiceProcess, free_port


@pytest.fixture
async def two_segmentation_replicas(
    db_url: str, stream_key: str, tmp_path: Path
) -> AsyncIterator[list[tuple[ServiceProcess, int]]]:
    replicas = []
    for _ in range(2):
        metrics_port = free_port()
        env = service_env(db_url, stream_key, EVENTLINE_SEGMENTATION_METRICS_PORT=str(metrics_port))
        replicas.append((ServiceProcess("segmentation", env, tmp_path).start(), metrics_port))
    try:
        await asyncio.gather(*(process.serving() for process, _ in replicas))
        yield replicas
    finally:
        for process, _ in replicas:
            process.kill()


async def test_campaigns_channel_spreads_match_calls_over_both_segmentation_replicas(
    two_segmentation_replicas: list[tuple[ServiceProcess, int]], db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO customers (customer_id) VALUES ('c1')")
    target = ",".join(process.address for process, _ in two_segmentation_replicas)
    served_before = [
        value(await asyncio.to_thread(scrape, port), "eventline_rpcs_total",
              grpc_service=SEGMENTATION, grpc_method="MatchCustomer", grpc_code="OK")
        for _, port in two_segmentation_replicas
    ]  # fmt: skip
    audience_filter = seg.Filter(event=seg.EventCondition(name="signed_up"))
    now = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    # Exactly the channel the campaign service opens to EVENTLINE_SEGMENTATION_ADDR.
    async with client_channels.client_channel(
        client_channels.channel_target(target, "EVENTLINE_SEGMENTATION_ADDR"), None
    ) as channel:
        audience = Audience(channel)
        for _ in range(1000):
            assert await audience.match(audience_filter, "c1", {}, now, trigger_event_id="e1") is False
    served = [
        value(await asyncio.to_thread(scrape, port), "eventline_rpcs_total",
              grpc_service=SEGMENTATION, grpc_method="MatchCustomer", grpc_code="OK") - before
        for (_, port), before in zip(two_segmentation_replicas, served_before, strict=True)
    ]  # fmt: skip
    assert sum(served) == 1000
    assert all(350 <= count <= 650 for count in served), served
