"""A partition owner that stalls past its lease adds nothing beside the new owner's batches.

Issue 11's remaining windows: a batch read before the stall, still waiting when
the lease ran out (behind an earlier batch of its customer, or retried after an
outage), used to be processed beside the new owner's, out of that customer's
order; and a batch the handler had already begun finished beside them. The
first is never handed to the handler any more; the second is refused by the
partition's fence in the campaign ledger (migration 0292). The clock the lease
is counted on is the test's; gates hold the batches, so every step is explicit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from eventline.campaigns.v1 import campaigns_pb2
from redis import exceptions as redis_errors

from eventline_campaigns.consumer import CampaignHandler
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.engine import Engine
from eventline_campaigns.model import EMAIL, PENDING, Message, Planned
from eventline_campaigns.planning import PlanItem
from eventline_campaigns.repository import BATCH_FENCE, CampaignRepository
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import (
    ConsumerGroup,
    Fence,
    PartitionTakenOver,
    Received,
    StreamHandler,
)
from tests.conftest import single_and_cluster
from tests.integration.test_campaigns import GRANTED, deliveries, email_campaign, start, upsert
from tests.integration.test_stream_order import Recorder
from tests.support import customer_event, packed_entry, session_waits_for_a_lock, wait_for_entries, wait_until

LEASE_MS = 600_000
"""Long: the owner's own renewal (every third of it) does not come during the test."""


@single_and_cluster
async def test_a_batch_waiting_when_its_owner_stalled_past_the_lease_is_left_to_the_new_owner(
    stream_key, redis_client
):
    await stream.Appender(redis_client, stream_key).append(
        [packed_entry("c1", "e0"), packed_entry("c1", "e1")]
    )
    now = [100.0]  # the old owner's monotonic clock, moved by the test
    stalled = Recorder()
    stalled.gate = asyncio.Event()
    old = ConsumerGroup(
        redis_client,
        stalled,
        streams=[stream_key],
        group="g",
        consumer="old",
        batch=1,
        concurrency=2,
        lease_ms=LEASE_MS,
        monotonic=lambda: now[0],
    )
    running = asyncio.create_task(old.run())
    try:
        # e0's batch is in the handler (held), e1's waits for it: same customer.
        await wait_until(lambda: len(old._inflight) == 2, 30, "the second batch was not read")
        # The owner stalls past its lease; the stall ends and the held batch finishes.
        now[0] += LEASE_MS / 1000 + 1
        stalled.gate.set()
        await wait_until(lambda: not old._inflight, 30, "the batches did not end")
    finally:
        old.shutdown()
        await running
    assert stalled.handled == [("c1", "e0")], "the waiting batch was not handed over"
    pending = await redis_client.xpending(stream_key, "g")
    assert pending["pending"] == 1, "e1 stays pending, for the new owner"

    # The lease ran out (made explicit); the new owner takes e1 over, after e0.
    await redis_client.delete(stream.owner_key(stream_key, "g"))
    taking_over = Recorder()
    new = ConsumerGroup(
        redis_client, taking_over, streams=[stream_key], group="g", consumer="new", claim_idle_ms=0
    )
    await new.balance()
    assert await new.step(None, reclaim=True) == 1
    assert taking_over.handled == [("c1", "e1")]
    assert (await redis_client.xpending(stream_key, "g"))["pending"] == 0


@single_and_cluster
async def test_a_batch_retried_through_an_outage_that_outlasted_the_lease_is_left_to_the_new_owner(
    stream_key, redis_client
):
    await stream.Appender(redis_client, stream_key).append([packed_entry("c1", "e0")])
    now = [100.0]

    class Outage(StreamHandler):
        calls = 0

        async def handle(self, batch: Sequence[Received]) -> None:
            self.calls += 1
            now[0] += LEASE_MS / 1000 + 1  # the outage outlasts the lease
            raise redis_errors.ConnectionError("a dependency is down")

    outage = Outage()
    old = ConsumerGroup(
        redis_client,
        outage,
        streams=[stream_key],
        group="g",
        consumer="old",
        lease_ms=LEASE_MS,
        monotonic=lambda: now[0],
    )
    running = asyncio.create_task(old.run())
    try:
        await wait_until(lambda: outage.calls == 1 and not old._inflight, 30, "the batch did not end")
    finally:
        old.shutdown()
        await running
    assert outage.calls == 1, "not retried once the lease may have run out"
    assert (await redis_client.xpending(stream_key, "g"))["pending"] == 1


class GatedDelivery(Delivery):
    """The old owner's ``Delivery``: held once the batch is evaluated, before it records anything."""

    def __init__(self, inner: Delivery) -> None:
        super().__init__(inner.repository, inner.channels, inner.rendering, lease_s=inner.lease_s)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.refused: list[PartitionTakenOver] = []

    async def deliver(self, items: Sequence[PlanItem], notes: Sequence[str] = ()) -> None:
        self.entered.set()
        await self.release.wait()
        try:
            await super().deliver(items, notes)
        except PartitionTakenOver as exc:
            self.refused.append(exc)
            raise


def gated_owner(  # type: ignore[no-untyped-def]
    campaigns_server, redis_client, consumer: str, **options: Any
) -> tuple[ConsumerGroup, GatedDelivery]:
    """A replica of the campaign service's consumer (batches of one entry) whose engine records
    through a ``GatedDelivery``; ``options`` for its ``ConsumerGroup``."""
    served, engine = campaigns_server.consumer, campaigns_server.engine
    gated = GatedDelivery(engine.delivery)
    owner = ConsumerGroup(
        redis_client,
        CampaignHandler(Engine(engine.repository, engine.cache, engine.audience, gated)),
        streams=served.streams,
        group=served.group,
        consumer=consumer,
        batch=1,
        lease_ms=LEASE_MS,
        **options,
    )
    return owner, gated


@single_and_cluster
async def test_a_batch_begun_when_its_owner_stalled_is_refused_after_the_take_over(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    """The old owner evaluates a customer's first event (campaign A) and stalls before recording
    it; A is paused, the new owner takes over and handles both events (A's paused: nothing; B's
    second event: a message); the old owner resumes. Without the fence it would record and send
    A's delivery after the pause, after the customer's later delivery."""
    await upsert(ingestion, "own", email="own@example.com", email_consent=GRANTED)
    first = await start(campaigns, email_campaign(event_name="Pinged", text="first"))
    second = await start(campaigns, email_campaign(event_name="Ponged", text="second"))
    served = campaigns_server.consumer
    now = [100.0]  # the old owner's monotonic clock, moved by the test
    old, gated = gated_owner(campaigns_server, redis_client, "old-owner", monotonic=lambda: now[0])
    new = ConsumerGroup(
        redis_client,
        served.handler,
        streams=served.streams,
        group=served.group,
        consumer="new-owner",
        claim_idle_ms=0,
        lease_ms=LEASE_MS,
    )
    await ingestion.TrackCustomerEvent(customer_event("own", "Pinged", "p1"))
    await ingestion.TrackCustomerEvent(customer_event("own", "Ponged", "p2"))
    await wait_for_entries(redis_client, stream_key, 2)
    running_old = asyncio.create_task(old.run())
    running_new: asyncio.Task[None] | None = None
    try:
        await gated.entered.wait()  # p1's batch is in the handler: evaluated, not yet recorded
        # The old owner stalls past its lease, which runs out (made explicit); A is paused.
        now[0] += LEASE_MS / 1000 + 1
        for key in served.streams:
            await redis_client.delete(stream.owner_key(key, served.group))
        await campaigns.PauseCampaign(campaigns_pb2.PauseCampaignRequest(campaign_id=first))
        # The new owner raises the fence, takes both entries over and handles them in order.
        running_new = asyncio.create_task(new.run())
        await smtp_server.wait_for(1)
        await wait_until(lambda: not new._inflight, 30, "the new owner's batches did not end")
        # The old owner resumes: its recording is refused; its batch stays untouched.
        gated.release.set()
        await wait_until(lambda: not old._inflight, 30, "the old owner's batch did not end")
    finally:
        old.shutdown()
        new.shutdown()
        await running_old
        if running_new is not None:
            await running_new
    assert not await deliveries(campaigns, campaign_id=first), "nothing recorded after the pause"
    [later] = await deliveries(campaigns, campaign_id=second)
    assert later.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert len(smtp_server.messages) == 1, "one message: the second event's"
    assert [type(e) for e in gated.refused] == [PartitionTakenOver], "the old owner's recording was refused"
    assert (await redis_client.xpending(stream_key, served.group))["pending"] == 0


async def test_a_take_over_waits_for_the_recording_in_progress_and_refuses_the_later_ones(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, db
) -> None:
    """The fence itself: a recording transaction holds the partition's row FOR SHARE, so the new
    owner's raise waits for it (it commits); every later recording of the old owner fails and
    writes nothing, the new owner's go through. A replica taking a partition again with the
    token that is still current keeps it (nobody fenced it meanwhile)."""
    repository: CampaignRepository = campaigns_server.engine.repository
    partition = "test:fence:events"
    await upsert(ingestion, "own", email="own@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign())
    old_token = await repository.raise_fence(partition)

    def delivery(event_id: str) -> tuple[str, str, Planned]:
        message = Message(0, EMAIL, ["own@example.com"], "Subject", "", "Body")
        return campaign_id, event_id, Planned("own", EMAIL, PENDING, "", message)

    BATCH_FENCE.set(Fence(partition, old_token))
    async with repository.pool.acquire() as connection, connection.transaction():
        await repository._record_many(connection, [delivery("in-progress")], 60)  # locks the row FOR SHARE
        raising = asyncio.create_task(repository.raise_fence(partition))
        await session_waits_for_a_lock(db, "the take-over did not wait for the recording in progress")
        assert not raising.done()
    new_token = await raising
    assert new_token > old_token
    assert await repository.raise_fence(partition, new_token) == new_token, "kept: still current"
    with pytest.raises(PartitionTakenOver):
        await repository.record_many([delivery("late")], lease_s=60)
    with pytest.raises(PartitionTakenOver):
        await repository.record(campaign_id, "late", [delivery("late")[2]], lease_s=60, marketing=True)
    BATCH_FENCE.set(Fence(partition, new_token))
    assert len(await repository.record_many([delivery("new")], lease_s=60)) == 1
    BATCH_FENCE.set(None)  # outside a leased batch: nothing checked
    assert len(await repository.record_many([delivery("unleased")], lease_s=60)) == 1
    events = await db.fetch(
        "SELECT event_id FROM deliveries WHERE campaign_id = $1 ORDER BY delivery_id", campaign_id
    )
    assert [r["event_id"] for r in events] == ["in-progress", "new", "unleased"]
    assert await repository.raise_fence(partition, old_token) > new_token, "raised: another fenced since"


async def test_an_owner_taking_its_partition_again_keeps_its_token_and_its_batch(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    """A replica whose lease ran out with no other replica to take the partition takes it again:
    its token is still the current one, so it keeps it, and the batch it had begun is recorded
    and sent (not abandoned to wait for a reclaim)."""
    await upsert(ingestion, "own", email="own@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign(event_name="Pinged", text="first"))
    served = campaigns_server.consumer
    owner, gated = gated_owner(campaigns_server, redis_client, "owner")
    await ingestion.TrackCustomerEvent(customer_event("own", "Pinged", "p1"))
    await wait_for_entries(redis_client, stream_key, 1)
    running = asyncio.create_task(owner.run())
    try:
        await gated.entered.wait()
        tokens = dict(owner._tokens)
        for key in served.streams:  # the lease runs out (made explicit); nobody else takes it
            await redis_client.delete(stream.owner_key(key, served.group))
        await owner.balance()  # renewal finds it gone, then takes it again
        await wait_until(lambda: owner._fenced == set(served.streams), 30, "not fenced again")
        assert owner._tokens == tokens, "the token was still current: kept"
        gated.release.set()
        await smtp_server.wait_for(1)
        await wait_until(lambda: not owner._inflight, 30, "the batch did not end")
    finally:
        owner.shutdown()
        await running
    assert not gated.refused
    [delivery] = await deliveries(campaigns, campaign_id=campaign_id)
    assert delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert (await redis_client.xpending(stream_key, served.group))["pending"] == 0
