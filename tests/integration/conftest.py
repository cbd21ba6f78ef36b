"""Fixtures of the integration tests (services in this process) that no other tier uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2_grpc

from tests.conftest import CampaignsEnv


@pytest.fixture
async def running_campaigns(  # type: ignore[no-untyped-def]
    campaigns_env: CampaignsEnv, redis_client, ingestion_server
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    """A client of the campaign service with its consumer running, as deployed (``campaigns``
    is one whose consumer the test drains). Modules whose tests all want this one name it
    ``campaigns`` for themselves."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    env = campaigns_env(EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="30000")
    async with running(Settings.from_env(env)) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            yield campaigns_pb2_grpc.CampaignServiceStub(channel)
