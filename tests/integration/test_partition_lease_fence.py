"""A partition owner that stalls past its lease hands no batch it had read to the handler any more.

Issue 11's remaining window: a batch read before the stall, still waiting when
the lease ran out (behind an earlier batch of its customer, or retried after an
outage), used to be processed beside the new owner's, out of that customer's
order. The clock the lease is counted on is the test's; the handler's gate holds
the first batch, so every step is explicit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis import exceptions as redis_errors

from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup, Received, StreamHandler
from tests.conftest import single_and_cluster
from tests.integration.test_stream_order import Recorder
from tests.support import packed_entry, wait_until

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
