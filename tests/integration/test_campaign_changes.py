"""Changing a campaign while its system-event fan-out runs (issue 10, item 5).

The fan-out runs on one replica, the changes arrive at another: the stop signal
is the campaign's row in PostgreSQL, not anything in memory (the fan-out's
replica does not even poll for changes during the test). The SMTP server
accepts messages only when the test allows them, so the fan-out is held at
known points instead of raced.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from google.protobuf import field_mask_pb2

from tests.conftest import CampaignsEnv, SmtpInbox
from tests.support import add_email_customers, eventually, system_campaign, wait_for_entries

pytestmark = pytest.mark.slow


def email(subject: str) -> campaigns_pb2.Action:
    return campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject=subject, text_body="Back in stock"))


@pytest.fixture
async def replicas(campaigns_env: CampaignsEnv, redis_client: Any) -> AsyncIterator[Any]:
    """(the replica that fans out, a stub of another replica); the first never polls for changes."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    worker_env = campaigns_env(
        EVENTLINE_CAMPAIGNS_POLL_S="3600",
        EVENTLINE_PROVIDER_TIMEOUT_S="300",  # messages wait for the test's permits
        EVENTLINE_CAMPAIGNS_FANOUT_BATCH="1000",
    )
    async with running(Settings.from_env(campaigns_env()), consume=False) as other:
        async with running(Settings.from_env(worker_env), consume=False) as worker:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
                yield worker, campaigns_pb2_grpc.CampaignServiceStub(channel)


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM deliveries"))


async def reach(db: asyncpg.Connection, at_least: int) -> None:
    async def reached() -> bool:
        return await count(db) >= at_least

    await eventually(reached, 60, f"the fan-out did not record {at_least} deliveries")


async def start_fan_out(
    worker: Any, stub: Any, ingestion: Any, redis_client: Any, stream_key: str
) -> tuple[str, Any]:
    created = await stub.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=system_campaign("Restock", email("Old subject")))
    )
    campaign_id = created.campaign.campaign_id
    await stub.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))
    await worker.cache.refresh()  # the worker learns of the campaign, and of nothing after this
    await ingestion.TrackSystemEvent(
        ingestion_pb2.TrackSystemEventRequest(event_id="restock-1", name="Restock")
    )
    await wait_for_entries(redis_client, stream_key, 1)
    return campaign_id, asyncio.ensure_future(worker.consumer.drain())


def subjects_by_delivery(inbox: SmtpInbox) -> dict[int, str]:
    found: dict[int, str] = {}
    for message in inbox.messages:
        delivery = int(re.fullmatch(r"<delivery-(\d+)@.*>", message["Message-ID"]).group(1))  # type: ignore[union-attr]
        assert delivery not in found, "a delivery was sent twice"
        found[delivery] = message["Subject"]
    return found


async def test_update_then_archive_during_a_20000_customer_fan_out(  # type: ignore[no-untyped-def]
    replicas,
    db: asyncpg.Connection,
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
    smtp_server: SmtpInbox,
    redis_client: Any,
    stream_key: str,
) -> None:
    """The issue's scenario: UpdateCampaign (new subject) at 3,000 recorded deliveries and
    ArchiveCampaign at 4,000. Every delivery recorded after the update has the new subject;
    nothing is recorded after the archive returns; what was recorded before is sent once."""
    worker, stub = replicas
    await add_email_customers(db, "c", 20_000)
    smtp_server.hold()
    campaign_id, fan_out = await start_fan_out(worker, stub, ingestion, redis_client, stream_key)

    await reach(db, 2000)  # batch 1 is being sent (held), batch 2 recorded
    smtp_server.allow(1000)
    await reach(db, 3000)  # batch 2 is being sent (held), batch 3 recorded, batch 4 rendered
    assert await count(db) == 3000
    changed = campaigns_pb2.Campaign(campaign_id=campaign_id, actions=[email("New subject")])
    await stub.UpdateCampaign(
        campaigns_pb2.UpdateCampaignRequest(
            campaign=changed, update_mask=field_mask_pb2.FieldMask(paths=["actions"])
        )
    )
    smtp_server.allow(2000)  # batches 2 and 3 go out; batch 4 was rendered before the update
    await reach(db, 4000)
    archived = await stub.ArchiveCampaign(campaigns_pb2.ArchiveCampaignRequest(campaign_id=campaign_id))
    assert archived.campaign.state == campaigns_pb2.CAMPAIGN_STATE_ARCHIVED
    at_archive = await count(db)
    smtp_server.allow(20_000)
    await fan_out

    assert await count(db) == at_archive, "deliveries were recorded after ArchiveCampaign returned"
    assert at_archive in (4000, 5000)  # at most the batches already in the pipeline
    assert dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")) == {2: at_archive}
    subjects = subjects_by_delivery(smtp_server)
    assert len(subjects) == at_archive
    in_order = [subjects[d] for d in sorted(subjects)]
    assert in_order == ["Old subject"] * 3000 + ["New subject"] * (at_archive - 3000)
    fan_outs = await db.fetch("SELECT done FROM campaign_fanouts")
    assert [r["done"] for r in fan_outs] == [True]


async def test_pause_stops_a_fan_out_for_good(  # type: ignore[no-untyped-def]
    replicas,
    db: asyncpg.Connection,
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
    smtp_server: SmtpInbox,
    redis_client: Any,
    stream_key: str,
) -> None:
    """PauseCampaign: nothing more is recorded once it returns; activating the campaign again does
    not resume the interrupted fan-out (a campaign reacts to events received while it is active)."""
    worker, stub = replicas
    await add_email_customers(db, "c", 6000)
    smtp_server.hold()
    campaign_id, fan_out = await start_fan_out(worker, stub, ingestion, redis_client, stream_key)
    await reach(db, 2000)
    await stub.PauseCampaign(campaigns_pb2.PauseCampaignRequest(campaign_id=campaign_id))
    at_pause = await count(db)
    smtp_server.allow(6000)
    await fan_out
    assert await count(db) == at_pause == 2000
    await stub.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))
    await worker.cache.refresh()
    await worker.consumer.drain()
    assert await count(db) == 2000
    assert len(smtp_server.messages) == 2000
    assert dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")) == {2: 2000}
