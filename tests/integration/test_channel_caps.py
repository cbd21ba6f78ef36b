"""Caps across campaigns (issue 14, item 6): per customer and channel, over every marketing campaign.

Real PostgreSQL, Redis, segmentation and SMTP; the campaign services take "now" from a
ManualClock the tests advance (the window slides without sleeping).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.protobuf import duration_pb2

from eventline_campaigns.service import RunningCampaigns, running
from eventline_campaigns.settings import Settings
from eventline_cli import demo_campaigns
from eventline_shared.clock import ManualClock
from tests.conftest import CampaignsEnv, SmtpInbox
from tests.support import add_email_customers, customer_event, system_campaign, violations

GRANTED = common_pb2.CONSENT_GRANTED
EMAIL = campaigns_pb2.CHANNEL_EMAIL
SENT = campaigns_pb2.DELIVERY_STATUS_SENT
SKIPPED = campaigns_pb2.DELIVERY_STATUS_SKIPPED
WEEK = dt.timedelta(days=7)
CAPPED = "channel cap: 2 e-mail messages per 7 days"


def marketing(event_name: str, *, transactional: bool = False) -> campaigns_pb2.Campaign:
    campaign = demo_campaigns.email_campaign(
        demo_campaigns.on_customer_event(event_name),
        None,
        display_name=event_name,
        subject=f"About {event_name}",
        text_body="hello {{ client.customer_id }}",
    )
    campaign.transactional = transactional
    return campaign


async def start(stub: campaigns_pb2_grpc.CampaignServiceStub, campaign: campaigns_pb2.Campaign) -> str:
    created = await stub.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
    await stub.ActivateCampaign(
        campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
    )
    return str(created.campaign.campaign_id)


async def cap_email(stub: campaigns_pb2_grpc.CampaignServiceStub, max_sends: int) -> None:
    window = duration_pb2.Duration()
    window.FromTimedelta(WEEK)
    await stub.SetChannelCaps(
        campaigns_pb2.SetChannelCapsRequest(
            caps=[campaigns_pb2.ChannelCap(channel=EMAIL, max_sends=max_sends, window=window)]
        )
    )


@asynccontextmanager
async def replica(
    env: CampaignsEnv, clock: ManualClock, name: str = "caps-a"
) -> AsyncIterator[tuple[RunningCampaigns, campaigns_pb2_grpc.CampaignServiceStub]]:
    settings = Settings.from_env(env(EVENTLINE_CAMPAIGNS_CONSUMER=name))
    async with running(settings, consume=False, clock=clock) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            yield served, campaigns_pb2_grpc.CampaignServiceStub(channel)


async def add_customer(ingestion: Any, customer_id: str) -> None:
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id=customer_id, email=f"{customer_id}@example.com", email_consent=GRANTED
            )
        )
    )


async def trigger(
    ingestion: Any, served: RunningCampaigns, customer_id: str, name: str, event_id: str
) -> None:
    reply = await ingestion.TrackCustomerEvent(customer_event(customer_id, name, event_id))
    await served.engine.handle_customer_events([reply.event])


async def outcome(stub: campaigns_pb2_grpc.CampaignServiceStub, event_id: str) -> str:
    reply = await stub.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(event_id=event_id))
    [delivery] = reply.deliveries
    return f"{campaigns_pb2.DeliveryStatus.Name(delivery.status)} {delivery.reason}".strip()


async def test_a_third_marketing_email_within_the_week_is_skipped_transactional_ones_are_not(
    campaigns_env: CampaignsEnv, ingestion: Any, smtp_server: SmtpInbox, db: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with replica(campaigns_env, clock) as (served, stub):
        await add_customer(ingestion, "ann")
        await cap_email(stub, 2)
        news = await start(stub, marketing("Visited"))
        offers = await start(stub, marketing("Browsed"))
        await start(stub, marketing("ResetRequested", transactional=True))
        await served.cache.refresh()

        await trigger(ingestion, served, "ann", "Visited", "v1")
        await trigger(ingestion, served, "ann", "Browsed", "b1")
        await trigger(ingestion, served, "ann", "ResetRequested", "r1")  # exempt, and not counted
        await trigger(ingestion, served, "ann", "Visited", "v2")
        await trigger(ingestion, served, "ann", "ResetRequested", "r2")
        assert [await outcome(stub, e) for e in ("v1", "b1", "r1", "v2", "r2")] == [
            "DELIVERY_STATUS_SENT",
            "DELIVERY_STATUS_SENT",
            "DELIVERY_STATUS_SENT",
            f"DELIVERY_STATUS_SKIPPED {CAPPED}",
            "DELIVERY_STATUS_SENT",
        ]
        await smtp_server.wait_for(4)

        # A redelivered trigger is counted once: v1 again changes nothing, b2 is still capped.
        event = (await ingestion.TrackCustomerEvent(customer_event("ann", "Visited", "v1"))).event
        await served.engine.handle_customer_events([event])
        assert await db.fetchval("SELECT count(*) FROM channel_sends WHERE customer_id = 'ann'") == 2
        await trigger(ingestion, served, "ann", "Browsed", "b2")
        assert await outcome(stub, "b2") == f"DELIVERY_STATUS_SKIPPED {CAPPED}"

        # The campaign's stats show the skip with its reason, like the other skip reasons.
        stats = await stub.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=news))
        assert (stats.sent, stats.skipped, dict(stats.reasons)) == (1, 1, {CAPPED: 1})
        stats = await stub.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=offers))
        assert (stats.sent, stats.skipped, dict(stats.reasons)) == (1, 1, {CAPPED: 1})
        await asyncio.sleep(0.1)
        assert len(smtp_server.messages) == 4


async def test_the_window_slides_with_the_service_clock(
    campaigns_env: CampaignsEnv, ingestion: Any, smtp_server: SmtpInbox
) -> None:
    clock = ManualClock()
    async with replica(campaigns_env, clock) as (served, stub):
        await add_customer(ingestion, "bob")
        await cap_email(stub, 2)
        await start(stub, marketing("Visited"))
        await start(stub, marketing("Browsed"))
        await served.cache.refresh()

        await trigger(ingestion, served, "bob", "Visited", "first")
        clock.advance(dt.timedelta(days=1))
        await trigger(ingestion, served, "bob", "Browsed", "second")
        clock.advance(WEEK - dt.timedelta(days=1, seconds=1))  # one second before the first leaves the window
        await trigger(ingestion, served, "bob", "Visited", "too-soon")
        clock.advance(dt.timedelta(seconds=2))  # the first has left the window, the second not
        await trigger(ingestion, served, "bob", "Browsed", "first-left")
        await trigger(ingestion, served, "bob", "Visited", "full-again")
        clock.advance(dt.timedelta(days=1))  # the second has left too
        await trigger(ingestion, served, "bob", "Visited", "second-left")
        assert [
            await outcome(stub, e)
            for e in ("first", "second", "too-soon", "first-left", "full-again", "second-left")
        ] == [
            "DELIVERY_STATUS_SENT",
            "DELIVERY_STATUS_SENT",
            f"DELIVERY_STATUS_SKIPPED {CAPPED}",
            "DELIVERY_STATUS_SENT",
            f"DELIVERY_STATUS_SKIPPED {CAPPED}",
            "DELIVERY_STATUS_SENT",
        ]
        await smtp_server.wait_for(4)


async def test_two_replicas_sending_two_campaigns_to_one_customer_at_once_keep_the_cap(
    campaigns_env: CampaignsEnv, ingestion: Any, smtp_server: SmtpInbox
) -> None:
    clock = ManualClock()
    async with (
        replica(campaigns_env, clock, "caps-a") as (served_a, stub),
        replica(campaigns_env, clock, "caps-b") as (served_b, _),
    ):
        await add_customer(ingestion, "cid")
        await cap_email(stub, 2)
        await start(stub, marketing("Visited"))
        await start(stub, marketing("Browsed"))
        for served in (served_a, served_b):
            await served.cache.refresh()
        events = []
        for i in range(10):
            for name in ("Visited", "Browsed"):
                reply = await ingestion.TrackCustomerEvent(customer_event("cid", name, f"{name}-{i}"))
                events.append(reply.event)
        # Every trigger at once, half on each replica: alone, or in batches of four (one
        # transaction for the batch, whose own earlier messages count against its later ones).
        alone = [[event] for event in events[:8]]
        batched = [events[n : n + 4] for n in range(8, 20, 4)]
        await asyncio.gather(
            *(
                (served_a if n % 2 else served_b).engine.handle_customer_events(batch)
                for n, batch in enumerate(alone + batched)
            )
        )
        found = await stub.ListDeliveries(
            campaigns_pb2.ListDeliveriesRequest(customer_id="cid", page_size=100)
        )
        statuses = [(d.status, d.reason) for d in found.deliveries]
        assert len(statuses) == 20
        assert statuses.count((SENT, "")) == 2
        assert statuses.count((SKIPPED, CAPPED)) == 18
        await smtp_server.wait_for(2)
        await asyncio.sleep(0.2)
        assert len(smtp_server.messages) == 2


async def test_a_batch_of_triggers_counts_its_own_messages(
    campaigns_env: CampaignsEnv, ingestion: Any, smtp_server: SmtpInbox, db: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with replica(campaigns_env, clock) as (served, stub):
        for customer in ("dan", "eve"):
            await add_customer(ingestion, customer)
        await cap_email(stub, 2)
        await start(stub, marketing("Visited"))
        await start(stub, marketing("Browsed"))
        await served.cache.refresh()
        batch = [
            (await ingestion.TrackCustomerEvent(customer_event(customer, name, f"{customer}-{n}"))).event
            for n, (customer, name) in enumerate(
                [
                    ("dan", "Visited"),
                    ("eve", "Visited"),
                    ("dan", "Browsed"),
                    ("dan", "Visited"),
                    ("eve", "Browsed"),
                ]
            )
        ]
        await served.engine.handle_customer_events(batch)
        assert [await outcome(stub, e.event_id) for e in batch] == [
            "DELIVERY_STATUS_SENT",
            "DELIVERY_STATUS_SENT",
            "DELIVERY_STATUS_SENT",
            f"DELIVERY_STATUS_SKIPPED {CAPPED}",
            "DELIVERY_STATUS_SENT",
        ]
        # The same batch again (a redelivered stream entry) changes nothing and counts nothing.
        await served.engine.handle_customer_events(batch)
        assert await db.fetchval("SELECT count(*) FROM channel_sends") == 4
        await smtp_server.wait_for(4)


async def test_a_fan_out_passes_the_cap_too(
    campaigns_env: CampaignsEnv, ingestion: Any, smtp_server: SmtpInbox, db: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with replica(campaigns_env, clock) as (served, stub):
        await add_email_customers(db, "f", 3)
        await cap_email(stub, 1)
        await start(stub, marketing("Visited"))
        restock = system_campaign(
            "Restock",
            campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Back", text_body="in stock")),
        )
        restock_id = await start(stub, restock)
        await served.cache.refresh()
        await trigger(ingestion, served, "f0000", "Visited", "visit")
        reply = await ingestion.TrackSystemEvent(
            ingestion_pb2.TrackSystemEventRequest(event_id="restock-1", name="Restock")
        )
        await served.engine.handle_system_event(reply.event)
        stats = await stub.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=restock_id))
        reason = "channel cap: 1 e-mail messages per 7 days"
        assert (stats.sent, stats.skipped, dict(stats.reasons)) == (2, 1, {reason: 1})
        assert await outcome(stub, "visit") == "DELIVERY_STATUS_SENT"


async def test_caps_are_read_set_and_removed_and_bad_ones_refused(
    campaigns: campaigns_pb2_grpc.CampaignServiceStub,
) -> None:
    assert list((await campaigns.GetChannelCaps(campaigns_pb2.GetChannelCapsRequest())).caps) == []
    await cap_email(campaigns, 3)
    sms = campaigns_pb2.ChannelCap(
        channel=campaigns_pb2.CHANNEL_SMS, max_sends=1, window=duration_pb2.Duration(seconds=3600)
    )
    reply = await campaigns.SetChannelCaps(campaigns_pb2.SetChannelCapsRequest(caps=[sms]))
    assert [(c.channel, c.max_sends, c.window.seconds) for c in reply.caps] == [
        (EMAIL, 3, 7 * 86400),
        (campaigns_pb2.CHANNEL_SMS, 1, 3600),
    ]
    removed = await campaigns.SetChannelCaps(
        campaigns_pb2.SetChannelCapsRequest(caps=[campaigns_pb2.ChannelCap(channel=EMAIL)])
    )
    assert [c.channel for c in removed.caps] == [campaigns_pb2.CHANNEL_SMS]
    got = await campaigns.GetChannelCaps(campaigns_pb2.GetChannelCapsRequest())
    assert list(got.caps) == list(removed.caps)

    bad = campaigns_pb2.SetChannelCapsRequest(
        caps=[
            campaigns_pb2.ChannelCap(channel=campaigns_pb2.CHANNEL_WEBHOOK, max_sends=1),
            campaigns_pb2.ChannelCap(channel=EMAIL, max_sends=2),
            campaigns_pb2.ChannelCap(channel=EMAIL, max_sends=2, window=duration_pb2.Duration(seconds=60)),
            campaigns_pb2.ChannelCap(
                channel=campaigns_pb2.CHANNEL_PUSH, max_sends=-1, window=duration_pb2.Duration(seconds=60)
            ),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await campaigns.SetChannelCaps(bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(refused.value)) == {
        "caps[0].channel",
        "caps[1].window",
        "caps[2].channel",
        "caps[3].max_sends",
    }
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await campaigns.SetChannelCaps(campaigns_pb2.SetChannelCapsRequest())
    assert set(violations(empty.value)) == {"caps"}
