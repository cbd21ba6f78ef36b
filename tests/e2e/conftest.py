"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2_grpc

from tests.conftest import CampaignsEnv, service_env
from tests.processes import ServiceProcess


@pytest.fixture
async def campaigns(  # type: ignore[no-untyped-def]
    campaigns_env: CampaignsEnv, redis_client, ingestion_server
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    """The campaign service with its consumer running, as deployed."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    env = campaigns_env(EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="30000")
    async with running(Settings.from_env(env)) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            yield campaigns_pb2_grpc.CampaignServiceStub(channel)


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
