"""Delivery leases under two senders on one database (issue 11): no message is sent twice.

Sender A records a delivery and is held (an explicit gate, never a sleep); sender B, another
replica's ``Delivery`` on the same ledger, runs ``recover``. A lease's expiry is made
explicit by recording with a lease that is already over (``lease_s=-1``) rather than by
waiting for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.channels import Channel
from eventline_campaigns.delivery import FRESH_LEASE, Delivery
from eventline_campaigns.model import EMAIL, PENDING, Message, Owned, Planned
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup, Received, StreamHandler
from tests.integration.test_campaigns import GRANTED, deliveries, email_campaign, start, upsert
from tests.support import customer_event, wait_for_entries


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


async def taken_over(  # type: ignore[no-untyped-def]
    campaigns, ingestion, smtp_server, a: Delivery, b: Delivery, customer_id: str
) -> tuple[str, list[Owned]]:
    """Sender A records a delivery to ``customer_id``, then stalls (the test holds it) until its
    lease is over (recorded with a lease already over); B takes it over and sends it. Returns the
    campaign's id and what A recorded."""
    await upsert(ingestion, customer_id, email=f"{customer_id}@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign())
    message = Message(0, EMAIL, [f"{customer_id}@example.com"], "Subject", "", "Body")
    owned = await a.repository.record(
        campaign_id,
        f"ev-{customer_id}",
        [Planned(customer_id, EMAIL, PENDING, "", message)],
        lease_s=-1,
        marketing=False,
    )
    assert len(owned) == 1
    assert await b.recover() == 1, "B takes the expired lease over and sends"
    await smtp_server.wait_for(1)
    return campaign_id, owned


async def test_a_sender_stalled_past_its_lease_does_not_send_what_was_taken_over(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, smtp_server
) -> None:
    delivery = campaigns_server.engine.delivery
    a, b = replica(delivery), replica(delivery)
    campaign_id, owned = await taken_over(campaigns, ingestion, smtp_server, a, b, "stall")
    # A resumes with the delivery it recorded: its token is stale, it neither sends nor marks.
    assert await a.send(owned) == 0
    assert len(smtp_server.messages) == 1
    [row] = await deliveries(campaigns, campaign_id=campaign_id)
    assert row.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert row.attempts == 1
    assert await b.recover() == 0


async def test_a_batch_recorded_a_tenth_of_the_lease_ago_is_confirmed_before_it_is_sent(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, smtp_server
) -> None:
    delivery = campaigns_server.engine.delivery
    now = [100.0]
    a = Delivery(delivery.repository, delivery.channels, delivery.rendering, monotonic=lambda: now[0])
    campaign_id, owned = await taken_over(campaigns, ingestion, smtp_server, a, replica(delivery), "late")
    # A recorded it itself, but a tenth of its lease ago by its clock: it asks the ledger first.
    now[0] += a.lease_s * FRESH_LEASE
    assert await a.send([replace(o, leased_at=100.0) for o in owned]) == 0
    assert len(smtp_server.messages) == 1
    [row] = await deliveries(campaigns, campaign_id=campaign_id)
    assert (row.status, row.attempts) == (campaigns_pb2.DELIVERY_STATUS_SENT, 1)


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
        campaign_id,
        "ev-slow",
        [Planned("slow", EMAIL, PENDING, "", message)],
        lease_s=a.lease_s,
        marketing=False,
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


class Stalled(StreamHandler):
    """A replica's handler that stalls (a GC pause, SIGSTOP) before its batch, until released."""

    def __init__(self, inner: StreamHandler) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, batch: Sequence[Received]) -> None:
        self.entered.set()
        await self.release.wait()
        await self.inner.handle(batch)


async def test_a_stalled_partition_owner_resuming_after_a_take_over_sends_nothing_again(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    await upsert(ingestion, "own", email="own@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign(event_name="Pinged", text="pong"))
    served = campaigns_server.consumer
    stalled = Stalled(served.handler)

    def replica(name: str, handler: StreamHandler) -> ConsumerGroup:
        return ConsumerGroup(
            redis_client, handler, streams=served.streams, group=served.group, consumer=name, claim_idle_ms=0
        )

    old, new = replica("old-owner", stalled), replica("new-owner", served.handler)
    await old.ensure_group()
    await old.balance()
    assert old.owned, "the old owner holds partitions"
    await ingestion.TrackCustomerEvent(customer_event("own", "Pinged", "p1"))
    await wait_for_entries(redis_client, stream_key, 1)
    processing = asyncio.create_task(old.step(None, reclaim=False))
    await stalled.entered.wait()
    # The old owner stalls past its leases: they run out (made explicit), the new owner takes over.
    for key in old.owned:
        await redis_client.delete(stream.owner_key(key, served.group))
    await new.balance()
    assert new.owned
    assert await new.step(None, reclaim=True) == 1, "the new owner takes the stalled entry over"
    await smtp_server.wait_for(1)
    # The old owner resumes: its batch finishes on a ledger that already holds the delivery.
    stalled.release.set()
    assert await processing == 1
    await old.balance()
    assert not old.owned & new.owned, "the resumed owner finds its leases gone"
    assert len(smtp_server.messages) == 1
    [row] = await deliveries(campaigns, campaign_id=campaign_id)
    assert row.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert (await redis_client.xpending(stream_key, served.group))["pending"] == 0


async def test_an_owner_stalled_past_its_partition_lease_reads_no_more_before_renewing(  # type: ignore[no-untyped-def]
    stream_key, redis_client
) -> None:
    now = [100.0]  # the replica's monotonic clock, moved by the test
    group = ConsumerGroup(
        redis_client,
        Stalled(StreamHandler()),
        streams=[stream_key],
        group="g",
        consumer="owner",
        lease_ms=10_000,
        monotonic=lambda: now[0],
    )
    await group.ensure_group()
    await group.balance()
    assert group.reads(stream_key)
    now[0] += 9.9
    assert group.reads(stream_key), "within its lease"
    now[0] += 0.2  # stalled past the lease (counted from before it was taken): no more reads
    assert stream_key in group.owned and not group.reads(stream_key)
    await group.balance()  # Redis still has it (the real lease had not run out): renewed
    assert group.reads(stream_key)
    # Its lease ran out and another replica took the partition: the renewal finds it gone.
    await redis_client.set(stream.owner_key(stream_key, "g"), "other")
    await group.balance()
    assert stream_key not in group.owned and not group.reads(stream_key)
