"""grpc.health.v1 on every service: Watch streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

SERVICE_NAMES = {
    "ingestion": "eventline.ingestion.v1.IngestionService",
    "segmentation": "eventline.segmentation.v1.SegmentationService",
    "campaigns": "eventline.campaigns.v1.CampaignService",
}


class Watched:
    """A Watch stream of one health name and the statuses it has sent so far."""

    def __init__(self, health: health_pb2_grpc.HealthStub, name: str) -> None:
        self.name = name
        self.call = health.Watch(health_pb2.HealthCheckRequest(service=name))
        self.seen: list[int] = []

    async def until(self, status: int, timeout_s: float = 30.0) -> None:
        """Read the stream until its latest status is ``status``."""

        async def read() -> None:
            while not self.seen or self.seen[-1] != status:
                reply = await self.call.read()
                assert reply is not grpc.aio.EOF, f"the Watch of {self.name!r} ended"
                self.seen.append(reply.status)

        try:
            await asyncio.wait_for(read(), timeout_s)
        except TimeoutError:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name
            raise AssertionError(
                f"{self.name!r} never became {name(status)}; seen {[name(s) for s in self.seen]}"
            ) from None


async def checked(health: health_pb2_grpc.HealthStub, name: str) -> int:
    reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
    return int(reply.status)


@asynccontextmanager
async def watching(port: int, *names: str) -> AsyncIterator[tuple[health_pb2_grpc.HealthStub, list[Watched]]]:
    """Watch streams of ``names`` on the service at ``port``, cancelled on exit (so it can stop at once)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [Watched(health, name) for name in names]
        try:
            yield health, watches
        finally:
            for watch in watches:
                watch.call.cancel()


async def test_watch_streams_serving_on_every_service(
    ingestion_server: Any, segmentation_server: Any, campaigns_server: Any
) -> None:
    """Issue 10, item 7: Watch answered INTERNAL on all three services."""
    for service, served in (
        ("ingestion", ingestion_server),
        ("segmentation", segmentation_server),
        ("campaigns", campaigns_server),
    ):
        names = ["", SERVICE_NAMES[service]]
        async with watching(served.port, *names, "no.such.Service") as (health, watches):
            *known, unknown = watches
            for watch in known:
                await watch.until(SERVING)
                assert await checked(health, watch.name) == SERVING
            await unknown.until(SERVICE_UNKNOWN)
            assert unknown.seen == [SERVICE_UNKNOWN]
