"""The Prometheus endpoint of a live ingestion server."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import service_env


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


SERVICE = "eventline.ingestion.v1.IngestionService"


@pytest.fixture
async def metered(db_url: str, stream_key: str, redis_client: redis.Redis) -> AsyncIterator[Any]:
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    env = service_env(
        db_url, stream_key, EVENTLINE_INGESTION_METRICS_PORT="0", EVENTLINE_METRICS_INTERVAL_S="0.1"
    )
    async with running(Settings.from_env(env)) as served:
        yield served


async def test_rpcs_are_counted_by_method_and_status_with_latency(metered: Any) -> None:
    port = metered.server.operations.bound_metrics_port
    assert port > 0
    before = await asyncio.to_thread(scrape, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        for index in range(3):
            await stub.TrackCustomerEvent(
                ingestion_pb2.TrackCustomerEventRequest(event_id=f"e{index}", customer_id="c1", name="viewed")
            )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.TrackCustomerEvent(
                ingestion_pb2.TrackCustomerEventRequest(event_id="bad", customer_id="c1", name="bad-name")
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetCustomer(ingestion_pb2.GetCustomerRequest(customer_id="nobody"))
    after = await asyncio.to_thread(scrape, port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    method = {"grpc_service": SERVICE, "grpc_method": "TrackCustomerEvent"}
    assert delta("eventline_rpcs_total", **method, grpc_code="OK") == 3
    assert delta("eventline_rpcs_total", **method, grpc_code="INVALID_ARGUMENT") == 1
    assert (
        delta("eventline_rpcs_total", grpc_service=SERVICE, grpc_method="GetCustomer", grpc_code="NOT_FOUND")
        == 1
    )
    assert delta("eventline_rpc_duration_seconds_count", **method) == 4
    assert delta("eventline_rpc_duration_seconds_sum", **method) > 0
    assert delta("eventline_rpc_duration_seconds_bucket", **method, le="+Inf") == 4


async def test_stream_and_outbox_gauges(metered: Any, redis_client: redis.Redis, stream_key: str) -> None:
    await redis_client.xgroup_create(stream_key, "segmentation", id="0", mkstream=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        for index in range(4):
            await stub.TrackCustomerEvent(
                ingestion_pb2.TrackCustomerEventRequest(event_id=f"e{index}", customer_id="c1", name="viewed")
            )
    # Wait for the relay to publish, then read two entries without acknowledging them.
    for _ in range(1200):
        if await redis_client.xlen(stream_key) >= 4:
            break
        await asyncio.sleep(0.05)
    await redis_client.xreadgroup("segmentation", "worker-1", {stream_key: ">"}, count=2)

    port = metered.server.operations.bound_metrics_port
    expected = {
        ("eventline_stream_length", (("stream", stream_key),)): 4.0,
        ("eventline_stream_pending_entries", (("group", "segmentation"), ("stream", stream_key))): 2.0,
        ("eventline_stream_lag_entries", (("group", "segmentation"), ("stream", stream_key))): 2.0,
        ("eventline_outbox_backlog_rows", ()): 0.0,
    }
    version = (await redis_client.info("server"))["redis_version"]
    if int(str(version).split(".")[0]) < 7:  # XINFO GROUPS reports lag since Redis 7
        del expected[("eventline_stream_lag_entries", (("group", "segmentation"), ("stream", stream_key)))]
    seen: dict[Any, float] = {}
    for _ in range(600):
        samples = await asyncio.to_thread(scrape, port)
        seen = {key: samples.get(key, -1.0) for key in expected}
        if seen == expected:
            break
        await asyncio.sleep(0.1)
    assert seen == expected
