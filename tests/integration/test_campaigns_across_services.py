"""Across the services: ingestion, segmentation and campaigns as real servers in this process, real
PostgreSQL, Redis and SMTP.

The campaign service consumes the stream in the background, as in production.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_cli import demo_campaigns
from tests.support import customer_event, value

GRANTED = common_pb2.CONSENT_GRANTED


@pytest.fixture
def campaigns(running_campaigns):  # type: ignore[no-untyped-def]
    """Here the campaign service consumes the stream in the background, as deployed."""
    return running_campaigns


async def upsert(ingestion, customer_id: str, **fields: object) -> None:  # type: ignore[no-untyped-def]
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(customer=common_pb2.Customer(customer_id=customer_id, **fields))  # type: ignore[arg-type]
    )


async def activate(campaigns, campaign: campaigns_pb2.Campaign) -> str:  # type: ignore[no-untyped-def]
    created = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
    campaign_id = created.campaign.campaign_id
    await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))
    return str(campaign_id)


async def settle(campaigns, campaign_id: str, expected: int) -> campaigns_pb2.GetCampaignStatsResponse:  # type: ignore[no-untyped-def]
    """Wait until the campaign has ``expected`` finished deliveries, then a little longer for extras."""
    deadline = time.monotonic() + 60  # a deadline for what must come, not a measure of speed
    while True:
        stats = await campaigns.GetCampaignStats(
            campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id)
        )
        if stats.sent + stats.failed + stats.skipped >= expected and stats.pending == 0:
            break
        assert time.monotonic() < deadline, f"deliveries did not settle: {stats}"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return await campaigns.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id))


async def test_back_in_stock_reaches_exactly_the_consenting_subscribers_once(  # type: ignore[no-untyped-def]
    ingestion, campaigns, smtp_server
) -> None:
    subscribers = {
        "ann": (42, GRANTED),
        "bob": (42, GRANTED),
        "cat": (42, common_pb2.CONSENT_DENIED),
        "dan": (7, GRANTED),
        "eve": (42, common_pb2.CONSENT_UNSPECIFIED),
    }
    for customer_id, (item_id, consent) in subscribers.items():
        await upsert(ingestion, customer_id, email=f"{customer_id}@example.com", email_consent=consent)
        await ingestion.TrackCustomerEvent(customer_event(customer_id, "StockSubscription", item_id=item_id))
    await upsert(ingestion, "fay", email="fay@example.com", email_consent=GRANTED)  # never subscribed
    campaign_id = await activate(
        campaigns,
        demo_campaigns.back_in_stock(
            display_name="Back in stock",
            html_body="<p>{{ client.eventContext.item_name }} is back in stock.</p>",
            text_body="{{ client.eventContext.item_name }} is back in stock.",
        ),
    )
    stock = ingestion_pb2.TrackSystemEventRequest(
        event_id="stock-42-1",
        name="ItemInStock",
        context={"item_id": value(42), "item_name": value("Blue kettle")},
    )
    await ingestion.TrackSystemEvent(stock)
    await ingestion.TrackSystemEvent(stock)  # a client retry: the same event id
    await smtp_server.wait_for(2)
    stats = await settle(campaigns, campaign_id, 4)
    assert sorted(m["To"] for m in smtp_server.messages) == ["ann@example.com", "bob@example.com"]
    assert {m["Subject"] for m in smtp_server.messages} == {"Blue kettle is back"}
    assert (stats.sent, stats.skipped) == (2, 2)
    assert stats.reasons["no e-mail consent"] == 2


async def test_password_recovery_email_arrives_with_its_link(ingestion, campaigns, smtp_server) -> None:  # type: ignore[no-untyped-def]
    await upsert(ingestion, "u1", email="u1@example.com", email_consent=GRANTED)
    await activate(
        campaigns,
        demo_campaigns.password_recovery(display_name="Password recovery"),
    )
    link = "https://shop.example.com/reset?token=abc123"
    await ingestion.TrackCustomerEvent(
        customer_event("u1", "PasswordRecoveryRequested", "pr-1", reset_link=link)
    )
    # How fast is bench/triggers.py's measure; here: that it arrives, once, with the link.
    await smtp_server.wait_for(1)
    [message] = smtp_server.messages
    assert message["To"] == "u1@example.com"
    assert f"Reset it here: {link}" in message.get_body(("plain",)).get_content()


async def test_the_same_event_id_twice_sends_one_message(ingestion, campaigns, smtp_server) -> None:  # type: ignore[no-untyped-def]
    await upsert(ingestion, "u2", email="u2@example.com", email_consent=GRANTED)
    campaign_id = await activate(
        campaigns,
        demo_campaigns.email_campaign(
            demo_campaigns.on_customer_event("SignedUp"),
            display_name="Welcome",
            subject="Welcome",
            text_body="Hi",
        ),
    )
    request = customer_event("u2", "SignedUp", "signup-1")
    first, second = await asyncio.gather(
        ingestion.TrackCustomerEvent(request), ingestion.TrackCustomerEvent(request)
    )
    assert sorted([first.deduplicated, second.deduplicated]) == [False, True]
    await ingestion.TrackCustomerEvent(request)
    await smtp_server.wait_for(1)
    stats = await settle(campaigns, campaign_id, 1)
    assert stats.sent == 1
    assert len(smtp_server.messages) == 1
