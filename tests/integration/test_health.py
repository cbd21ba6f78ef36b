"""grpc.health.v1 on every service: Watch streams, and the status follows the dependencies.

Faults are real: PostgreSQL and Redis are cut through the TCP proxy of
``tests/faults.py``, and a real Redis Cluster node that holds no slot answers
MOVED. Probes run every 50 ms here; every wait is for a status to arrive,
with a generous deadline.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis import exceptions as redis_errors

from eventline_shared.dev import embedded
from eventline_shared.dev.embedded_cluster import cluster_node_port, start_cluster_node
from eventline_shared.observability.dependencies import health_name
from eventline_shared.server.grpc_server import LIVENESS_HEALTH_NAME
from tests.conftest import REDIS_URL, CampaignsEnv, service_env
from tests.faults import TcpProxy
from tests.support import customer_event

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

SERVICE_NAMES = {
    "ingestion": "eventline.ingestion.v1.IngestionService",
    "segmentation": "eventline.segmentation.v1.SegmentationService",
    "campaigns": "eventline.campaigns.v1.CampaignService",
}
FAST_PROBES = {"EVENTLINE_HEALTH_PROBE_INTERVAL_S": "0.05"}


class Watched:
    """A Watch stream of one health name and the statuses it has sent so far."""

    def __init__(self, health: health_pb2_grpc.HealthStub, name: str) -> None:
        self.health = health
        self.name = name
        self.call = health.Watch(health_pb2.HealthCheckRequest(service=name))
        self.seen: list[int] = []

    async def check(self) -> int:
        """What Check answers for the same name."""
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=self.name), timeout=10)
        return int(reply.status)

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


@asynccontextmanager
async def watching(port: int, *names: str) -> AsyncIterator[list[Watched]]:
    """Watch streams of ``names`` on the service at ``port``, cancelled on exit (so it can stop at once)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [Watched(health, name) for name in names]
        try:
            yield watches
        finally:
            for watch in watches:
                watch.call.cancel()


@asynccontextmanager
async def running(service: str, env: dict[str, str]) -> AsyncIterator[int]:
    """The service, in this process, with its background work (relay, consumer) on; its port."""
    served = importlib.import_module(f"eventline_{service}.service")
    settings = importlib.import_module(f"eventline_{service}.settings")
    async with served.running(settings.Settings.from_env(env)) as running_service:
        yield running_service.port


def environment(
    service: str, campaigns_env: CampaignsEnv, db_url: str, stream_key: str, **extra: str
) -> dict[str, str]:
    """The service's environment in this test, with fast probes; campaigns get their real neighbours."""
    if service == "campaigns":
        return campaigns_env(**FAST_PROBES, **extra)
    return service_env(db_url, stream_key, **FAST_PROBES, **extra)


async def test_watch_streams_serving_on_every_service(
    ingestion_server: Any, segmentation_server: Any, campaigns_server: Any
) -> None:
    """Issue 10, item 7: Watch answered INTERNAL on all three services."""
    for service, served in (
        ("ingestion", ingestion_server),
        ("segmentation", segmentation_server),
        ("campaigns", campaigns_server),
    ):
        names = ["", SERVICE_NAMES[service], health_name("postgresql"), LIVENESS_HEALTH_NAME]
        async with watching(served.port, *names, "no.such.Service") as watches:
            *known, unknown = watches
            for watch in known:
                await watch.until(SERVING)
                assert await watch.check() == SERVING
            await unknown.until(SERVICE_UNKNOWN)
            assert unknown.seen == [SERVICE_UNKNOWN]


@pytest.mark.parametrize("service", ["ingestion", "segmentation", "campaigns"])
async def test_postgresql_cut_is_not_serving_on_watch_and_check_until_it_returns(
    service: str, campaigns_env: CampaignsEnv, db_url: str, stream_key: str, redis_client: redis.Redis
) -> None:
    """Every service needs PostgreSQL: NOT_SERVING while it is unreachable, SERVING once it is back.

    The liveness name stays SERVING all along: a liveness probe must not restart a replica for
    an outage that a restart cannot fix.
    """
    proxy, proxied_url = await TcpProxy.in_front_of(db_url)
    env = environment(service, campaigns_env, db_url, stream_key, EVENTLINE_DATABASE_URL=proxied_url)
    names = ["", SERVICE_NAMES[service], health_name("postgresql")]
    try:
        async with (
            running(service, env) as port,
            watching(port, *names) as watches,
            watching(port, LIVENESS_HEALTH_NAME) as (liveness,),
        ):
            for watch in [*watches, liveness]:
                await watch.until(SERVING)
            proxy.cut()
            for watch in watches:
                await watch.until(NOT_SERVING)
                assert await watch.check() == NOT_SERVING
            assert await liveness.check() == SERVING
            proxy.restore()
            for watch in watches:
                await watch.until(SERVING)
                assert await watch.check() == SERVING
    finally:
        await proxy.close()


async def test_redis_cut_takes_campaigns_out_and_leaves_ingestion_accepting_events(
    campaigns_env: CampaignsEnv, db_url: str, stream_key: str, redis_client: redis.Redis
) -> None:
    """Campaigns cannot work without the stream: NOT_SERVING. Ingestion keeps accepting events into
    its outbox: it stays SERVING and reports Redis under its own health name."""
    from eventline.ingestion.v1 import ingestion_pb2_grpc

    proxy, proxied_url = await TcpProxy.in_front_of(REDIS_URL)
    redis_name = health_name("redis")
    try:
        async with (
            running(
                "ingestion",
                environment("ingestion", campaigns_env, db_url, stream_key, EVENTLINE_REDIS_URL=proxied_url),
            ) as ingestion_port,
            running(
                "campaigns",
                environment("campaigns", campaigns_env, db_url, stream_key, EVENTLINE_REDIS_URL=proxied_url),
            ) as campaigns_port,
            watching(ingestion_port, "", SERVICE_NAMES["ingestion"]) as ingestion,
            watching(ingestion_port, redis_name) as (ingestion_redis,),
            watching(campaigns_port, "", SERVICE_NAMES["campaigns"], redis_name) as campaigns,
            grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_port}") as channel,
        ):
            for watch in (*ingestion, ingestion_redis, *campaigns):
                await watch.until(SERVING)
            proxy.cut()
            for watch in (ingestion_redis, *campaigns):
                await watch.until(NOT_SERVING)
                assert await watch.check() == NOT_SERVING
            # Ingestion still takes events (into the outbox) and stays in rotation.
            await ingestion_pb2_grpc.IngestionServiceStub(channel).TrackCustomerEvent(
                customer_event("c1", "A", "while-redis-is-down"), timeout=10
            )
            for watch in ingestion:
                assert await watch.check() == SERVING
            proxy.restore()
            for watch in (ingestion_redis, *campaigns):
                await watch.until(SERVING)
                assert await watch.check() == SERVING
    finally:
        await proxy.close()


@pytest.fixture
async def slotless_cluster_node(tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a real Redis Cluster node that holds no hash slot, so it answers MOVED for every
    key (and PONG to PING): two cluster-enabled servers, the first holding every slot."""
    binary = embedded.find_redis_server()
    ports = [cluster_node_port(), cluster_node_port()]
    processes: list[subprocess.Popen[bytes]] = []
    owner, slotless = (redis.Redis(port=port) for port in ports)
    try:
        for port in ports:
            processes.append(start_cluster_node(binary, port, tmp_path))
        await eventually(owner.ping, "the first cluster node did not start")
        await eventually(slotless.ping, "the second cluster node did not start")
        await owner.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        await slotless.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])

        async def redirects() -> bool:
            try:
                await slotless.exists("any-key")
            except redis_errors.MovedError:
                return True
            return False

        await eventually(redirects, "the slotless node never learned who holds the slots")
        yield f"redis://127.0.0.1:{ports[1]}/0"
    finally:
        await owner.aclose()
        await slotless.aclose()
        for process in processes:
            if process.poll() is None:
                process.terminate()
            await asyncio.to_thread(process.wait)


async def eventually(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    """Await ``condition()`` until it is true (errors count as false); fail with ``what`` after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            if await condition():
                return
        except (redis_errors.RedisError, OSError):
            pass
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_redis_cluster_node_answering_moved_is_not_serving_for_campaigns_and_visible_on_ingestion(
    campaigns_env: CampaignsEnv, db_url: str, stream_key: str, slotless_cluster_node: str
) -> None:
    """Issue 10, item 7: with every publish answered MOVED, ingestion and campaigns stayed SERVING.
    The node answers PING, so only a probe of the stream's own key (and the failing work) shows it."""
    from eventline.ingestion.v1 import ingestion_pb2_grpc

    node = redis.Redis.from_url(slotless_cluster_node)
    try:
        assert await node.ping()
        with pytest.raises(redis_errors.MovedError):
            await node.exists(stream_key)
    finally:
        await node.aclose()
    moved = {"EVENTLINE_REDIS_URL": slotless_cluster_node}
    redis_name = health_name("redis")
    async with (
        running(
            "ingestion", environment("ingestion", campaigns_env, db_url, stream_key, **moved)
        ) as ingestion_port,
        running(
            "campaigns", environment("campaigns", campaigns_env, db_url, stream_key, **moved)
        ) as campaigns_port,
        watching(ingestion_port, "", redis_name) as (ingestion, ingestion_redis),
        watching(campaigns_port, "", redis_name) as campaigns,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_port}") as channel,
    ):
        # An event makes the relay try (and fail) to publish: the real work is refused too.
        await ingestion_pb2_grpc.IngestionServiceStub(channel).TrackCustomerEvent(
            customer_event("c1", "A", "into-the-outbox"), timeout=10
        )
        await ingestion_redis.until(NOT_SERVING)
        assert await ingestion_redis.check() == NOT_SERVING
        for watch in campaigns:
            await watch.until(NOT_SERVING)
            assert await watch.check() == NOT_SERVING
        await ingestion.until(SERVING)
        assert await ingestion.check() == SERVING
