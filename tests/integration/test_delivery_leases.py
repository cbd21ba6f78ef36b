"""Delivery leases under two senders on one database (issue 11): no message is sent twice.

Sender A records a delivery and is held (an explicit gate, never a sleep); sender B, another
replica's ``Delivery`` on the same ledger, runs ``recover``. A lease's expiry is made
explicit by recording with a lease that is already over (``lease_s=-1``) rather than by
waiting for it.
"""

from __future__ import annotations

import asyncio

from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.channels import Channel
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.model import EMAIL, PENDING, Message, Planned
from tests.integration.test_campaigns import GRANTED, deliveries, email_campaign, start, upsert


def replica(delivery: Delivery, **channels: Channel) -> Delivery:
    """Another sender on the same ledger, with the same providers unless ``channels`` says otherwise."""
    return Delivery(
        delivery.repository,
        {EMAIL: channels["email"]} if channels else delivery.channels,
        delivery.rendering,
        lease_s=delivery.lease_s,
    )


class Gated:
    """The email provider, held at its call until the test releases it."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.entered.set()
        await self.release.wait()
        await self.inner.send(message)


async def test_a_sender_stalled_past_its_lease_does_not_send_what_was_taken_over(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, smtp_server
) -> None:
    await upsert(ingestion, "stall", email="stall@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign())
    delivery = campaigns_server.engine.delivery
    a, b = replica(delivery), replica(delivery)
    message = Message(0, EMAIL, ["stall@example.com"], "Subject", "", "Body")
    # A records, then stalls (the test holds it) until its lease is over.
    owned = await a.repository.record(
        campaign_id, "ev-stall", [Planned("stall", EMAIL, PENDING, "", message)], lease_s=-1
    )
    assert len(owned) == 1
    assert await b.recover() == 1, "B takes the expired lease over and sends"
    await smtp_server.wait_for(1)
    # A resumes with the delivery it recorded: its token is stale, it neither sends nor marks.
    assert await a.send(owned) == 0
    assert len(smtp_server.messages) == 1
    [row] = await deliveries(campaigns, campaign_id=campaign_id)
    assert row.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert row.attempts == 1
    assert await b.recover() == 0


async def test_a_slow_provider_call_keeps_its_lease_and_is_not_taken_over(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, smtp_server
) -> None:
    await upsert(ingestion, "slow", email="slow@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign())
    delivery = campaigns_server.engine.delivery
    gate = Gated(delivery.channels[EMAIL])
    a, b = replica(delivery, email=gate), replica(delivery)
    message = Message(0, EMAIL, ["slow@example.com"], "Subject", "", "Body")
    owned = await a.repository.record(
        campaign_id, "ev-slow", [Planned("slow", EMAIL, PENDING, "", message)], lease_s=a.lease_s
    )
    sending = asyncio.create_task(a.send(owned))
    await gate.entered.wait()
    pool = a.repository.pool
    # The provider call outlasts the lease: the lease is about to run out when A's keepalive ticks.
    await pool.execute("UPDATE deliveries SET lease_until = now() WHERE campaign_id = $1", campaign_id)
    await a.keep_alive()
    left = await pool.fetchval(
        "SELECT extract(epoch FROM lease_until - now()) FROM deliveries WHERE campaign_id = $1", campaign_id
    )
    assert left > a.lease_s / 2, "the keepalive renewed the lease A holds"
    assert await b.recover() == 0, "B finds nothing to take over"
    gate.release.set()
    assert await sending == 1
    await smtp_server.wait_for(1)
    assert len(smtp_server.messages) == 1
    [row] = await deliveries(campaigns, campaign_id=campaign_id)
    assert row.status == campaigns_pb2.DELIVERY_STATUS_SENT
