"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from tests.conftest import service_env
from tests.faults import TcpProxy
from tests.processes import ServiceProcess

T = TypeVar("T")


# --- The whole suite as processes, for the clients' tests ---


@dataclass
class Suite:
    """Ingestion, segmentation and campaigns, each its own process, as deployed."""

    ingestion: ServiceProcess
    segmentation: ServiceProcess
    campaigns: ServiceProcess

    @property
    def target(self) -> str:
        """Where clients send events: the ingestion service."""
        return self.ingestion.address


StartSuite = Callable[..., AbstractAsyncContextManager[Suite]]


@pytest.fixture
def start_suite(db_url: str, stream_key: str, redis_client: Any, tmp_path: Path) -> StartSuite:
    """``async with start_suite(credentials=…, **env) as suite``: the three services with
    ``env`` added to each one's environment (TLS and auth settings, say); ``credentials``
    reach them when they serve TLS. Stopped (SIGKILL) afterwards."""

    @asynccontextmanager
    async def start(credentials: grpc.ChannelCredentials | None = None, **env: str) -> AsyncIterator[Suite]:
        common = service_env(db_url, stream_key, **env)
        segmentation = ServiceProcess("segmentation", common, tmp_path, credentials)
        ingestion = ServiceProcess("ingestion", common, tmp_path, credentials)
        campaigns_env = {
            **common,
            "EVENTLINE_SEGMENTATION_ADDR": segmentation.address,
            "EVENTLINE_CAMPAIGNS_SINK_DIR": str(tmp_path / "sink"),
        }
        campaigns = ServiceProcess("campaigns", campaigns_env, tmp_path, credentials)
        suite = Suite(ingestion, segmentation, campaigns)
        try:
            for process in (segmentation, ingestion, campaigns):
                process.start()
            await asyncio.gather(segmentation.serving(), ingestion.serving(), campaigns.serving())
            yield suite
        finally:
            for process in (campaigns, ingestion, segmentation):
                process.kill()

    return start


async def through_a_cut_connection(
    suite: Suite, db: Any, send: Callable[[str], Awaitable[T]], cut_after: int = 5_000
) -> T:
    """Run ``send(target)`` through a TCP proxy to ingestion, and once ``cut_after`` events
    are stored drop every connection (new ones are accepted again at once). Fails unless
    the cut came before the end and the client reconnected."""
    proxy = await TcpProxy("127.0.0.1", suite.ingestion.port).start()
    try:
        sending = asyncio.ensure_future(send(f"127.0.0.1:{proxy.port}"))
        deadline = asyncio.get_running_loop().time() + 120
        while not await db.fetchval("SELECT count(*) >= $1 FROM customer_events", cut_after):
            assert not sending.done(), "the client finished (or failed) before the cut"
            assert asyncio.get_running_loop().time() < deadline, "nothing arrived"
            await asyncio.sleep(0.05)
        proxy.cut()
        proxy.restore()
        result = await sending
    finally:
        await proxy.close()
    assert proxy.accepted >= 2, "the client never reconnected"
    return result


async def assert_each_event_once(db: Any, redis_client: Any, stream_key: str, ids: list[str]) -> None:
    """Event ``ids[i]`` is stored once with context seq = i, nothing else is stored, and each
    is published on the stream exactly once."""
    assert len(set(ids)) == len(ids)
    rows = await db.fetch("SELECT event_id, (context->>'seq')::int AS seq FROM customer_events")
    assert {row["event_id"]: row["seq"] for row in rows} == {event_id: i for i, event_id in enumerate(ids)}
    assert len(rows) == len(ids)
    deadline = asyncio.get_running_loop().time() + 60
    while await redis_client.xlen(stream_key) < len(ids):
        assert asyncio.get_running_loop().time() < deadline, "not every event was published"
        await asyncio.sleep(0.05)
    published = [fields[b"event_id"].decode() for _, fields in await redis_client.xrange(stream_key)]
    assert sorted(published) == sorted(ids)
