"""The campaign service's own API key for calling segmentation (issue 10, item 13).

With authentication on and no key, nothing was said at start and CreateCampaign
with an audience answered UNAVAILABLE "segmentation: UNAUTHENTICATED" - a code
clients retry, for a configuration mistake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg

from eventline_shared.security import api_keys
from eventline_shared.streams import stream
from tests.conftest import CampaignsEnv, service_env
from tests.support import customer_event, wait_until

AUDIENCE_CAMPAIGN = campaigns_pb2.Campaign(
    display_name="Buyers",
    trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ping")),
    audience=seg.Filter(event=seg.EventCondition(name="order_placed")),
    actions=[campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Hi", text_body="x"))],
)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def secured_segmentation(db_url: str, stream_key: str) -> AsyncIterator[Any]:
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    env = service_env(db_url, stream_key, EVENTLINE_AUTH="true", EVENTLINE_AUTH_CACHE_S="0")
    async with running(Settings.from_env(env)) as served:
        yield served


@pytest.mark.parametrize("key", ["revoked", "ingest only", "none, auth off here"])
async def test_a_refused_service_key_is_a_clear_failed_precondition(  # type: ignore[no-untyped-def]
    campaigns_env: CampaignsEnv, secured_segmentation, db: asyncpg.Connection, redis_client, key: str
) -> None:
    """Segmentation refuses the campaign service's key: CreateCampaign with an audience answers
    FAILED_PRECONDITION naming the setting to fix (never UNAVAILABLE, which clients retry)."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    _, admin = await api_keys.create_key(db, "ops", ["admin"])
    extra = {"EVENTLINE_SEGMENTATION_ADDR": f"127.0.0.1:{secured_segmentation.port}"}
    if key == "revoked":
        revoked_id, token = await api_keys.create_key(db, "campaigns", ["read"])
        await api_keys.revoke_key(db, revoked_id.key_id)
        extra |= {"EVENTLINE_AUTH": "true", "EVENTLINE_AUTH_CACHE_S": "0", "EVENTLINE_SERVICE_API_KEY": token}
    elif key == "ingest only":
        _, token = await api_keys.create_key(db, "campaigns", ["ingest"])
        extra |= {"EVENTLINE_AUTH": "true", "EVENTLINE_AUTH_CACHE_S": "0", "EVENTLINE_SERVICE_API_KEY": token}
    async with running(Settings.from_env(campaigns_env(**extra)), consume=False) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateCampaign(
                    campaigns_pb2.CreateCampaignRequest(campaign=AUDIENCE_CAMPAIGN), metadata=bearer(admin)
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "EVENTLINE_SERVICE_API_KEY" in (refused.value.details() or "")
            assert "read scope" in (refused.value.details() or "")
            assert await served.engine.audience.check_access() is False  # what the service logs at start
            assert await db.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_valid_service_key_reaches_a_secured_segmentation(  # type: ignore[no-untyped-def]
    campaigns_env: CampaignsEnv, secured_segmentation, db: asyncpg.Connection, redis_client
) -> None:
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    _, admin = await api_keys.create_key(db, "ops", ["admin"])
    _, token = await api_keys.create_key(db, "campaigns", ["read"])
    env = campaigns_env(
        EVENTLINE_SEGMENTATION_ADDR=f"127.0.0.1:{secured_segmentation.port}",
        EVENTLINE_AUTH="true",
        EVENTLINE_SERVICE_API_KEY=token,
    )
    async with running(Settings.from_env(env), consume=False) as served:
        assert await served.engine.audience.check_access() is True
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
            created = await stub.CreateCampaign(
                campaigns_pb2.CreateCampaignRequest(campaign=AUDIENCE_CAMPAIGN), metadata=bearer(admin)
            )
            assert created.campaign.audience == AUDIENCE_CAMPAIGN.audience


async def test_deliveries_wait_while_segmentation_refuses_the_key(  # type: ignore[no-untyped-def]
    campaigns_env: CampaignsEnv,
    secured_segmentation,
    ingestion,
    db: asyncpg.Connection,
    redis_client,
    stream_key,
) -> None:
    """A refused key is not the entries' fault: they are retried in place (more often than
    EVENTLINE_CAMPAIGNS_MAX_ATTEMPTS) and never dead-lettered, as during an outage."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    _, token = await api_keys.create_key(db, "campaigns", ["read"])
    segmentation = f"127.0.0.1:{secured_segmentation.port}"
    keyed = campaigns_env(EVENTLINE_SEGMENTATION_ADDR=segmentation, EVENTLINE_SERVICE_API_KEY=token)
    async with running(Settings.from_env(keyed), consume=False) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
            created = await stub.CreateCampaign(
                campaigns_pb2.CreateCampaignRequest(campaign=AUDIENCE_CAMPAIGN)
            )
            await stub.ActivateCampaign(
                campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
            )
    await db.execute(
        "INSERT INTO customers (customer_id, email, email_consent) VALUES ('c1', 'c1@example.com', 1)"
    )
    keyless = campaigns_env(EVENTLINE_SEGMENTATION_ADDR=segmentation)
    async with running(Settings.from_env(keyless)) as served:
        await ingestion.TrackCustomerEvent(customer_event("c1", "Ping"))

        def refusals() -> int:
            return sum("SegmentationRefused" in error for error in served.consumer.errors)

        await wait_until(lambda: refusals() >= 4, 60, "the refused entry was not retried")
        assert await redis_client.xlen(stream.dead_letter_key(stream_key)) == 0
        assert (await redis_client.xpending(stream_key, "campaigns"))["pending"] == 1
        assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
