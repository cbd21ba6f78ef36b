"""Partitions, per-customer order and outbox ownership, on a single Redis and on a Redis Cluster.

A relay publishes one partition at a time, in outbox id order (issue 11: relay B
published event 1 while relay A still held event 0's row); a consumer hands one
customer's entries over in stream order even with batches in flight, and holds back only
the customers of a batch in flight; outbox rows
belong to their deployment's stream; consumers of gone replicas leave the group.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup, Received, StreamHandler
from tests.conftest import service_env, single_and_cluster
from tests.support import customer_event, wait_until


@asynccontextmanager
async def ingestion_without_relay(env: dict[str, str]) -> AsyncIterator[Any]:
    """An ingestion service whose outbox nobody publishes (the test runs relays itself)."""
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    async with running(Settings.from_env(env), relay=False) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            served.stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            yield served


class Recorder(StreamHandler):
    """Records the event ids it handles, in order; ``gate`` (when set) holds the first batch."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.batches = 0
        self.gate: asyncio.Event | None = None

    async def handle(self, batch: Sequence[Received]) -> None:
        self.batches += 1
        if self.batches == 1 and self.gate is not None:
            await self.gate.wait()
        self.handled += [(item.event.customer_id, item.event.event_id) for item in batch]


@single_and_cluster
async def test_a_relay_holding_a_row_keeps_the_others_from_publishing_later_ones(
    db_url, stream_key, redis_url, redis_client
):
    from eventline_ingestion.relay import OutboxRelay

    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url)
    async with ingestion_without_relay(env) as served:
        for i in range(2):  # two transactions: two outbox rows, event 0's first
            await served.stub.TrackCustomerEvent(customer_event("c1", "A", f"e{i}"))
        holding, released = asyncio.Event(), asyncio.Event()

        class Paused(stream.Appender):
            async def append(self, blobs: list[bytes]) -> int:
                holding.set()
                await released.wait()
                return await super().append(blobs)

        relay_a = OutboxRelay(served.pool, redis_client, stream_key, batch=1)
        relay_b = OutboxRelay(served.pool, redis_client, stream_key, batch=1)
        relay_a.appenders[stream_key] = Paused(redis_client, stream_key)
        publishing = asyncio.create_task(relay_a.publish_once())
        await asyncio.wait_for(holding.wait(), 30)  # relay A holds event 0's row
        assert await relay_b.publish_once() == 0, "relay B published while A held the partition"
        assert await redis_client.xlen(stream_key) == 0
        released.set()
        assert await publishing == 1
        assert await relay_b.drain() == 1
    entries = [fields[b"event_id"] for _, fields in await redis_client.xrange(stream_key)]
    assert entries == [b"e0", b"e1"]


async def test_outbox_rows_of_another_stream_are_not_this_deployments(db_url, stream_key, redis_client):
    from eventline_ingestion.relay import OutboxRelay

    other = stream_key.replace(":events", ":other")
    async with ingestion_without_relay(service_env(db_url, stream_key)) as served:
        await served.stub.TrackCustomerEvent(customer_event("c1", "A", "mine"))
        assert await OutboxRelay(served.pool, redis_client, other).drain() == 0
        assert await OutboxRelay(served.pool, redis_client, stream_key).drain() == 1
    assert await redis_client.exists(other) == 0
    assert [f[b"event_id"] for _, f in await redis_client.xrange(stream_key)] == [b"mine"]


@single_and_cluster
async def test_partitions_keep_each_customers_events_together_and_in_order(
    db_url, stream_key, redis_url, redis_client
):
    layout = stream.StreamLayout(stream_key, 4)
    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url, EVENTLINE_STREAM_PARTITIONS="4")
    customers = [f"c{i}" for i in range(12)]
    async with ingestion_without_relay(env) as served:
        for round_ in range(3):
            items = [
                ingestion_pb2.TrackEventsItem(customer_event=customer_event(c, "A", f"{c}-{round_}"))
                for c in customers
            ]
            await served.stub.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
        await served.stub.TrackSystemEvent(ingestion_pb2.TrackSystemEventRequest(event_id="s1", name="Sale"))
        assert await served.relay.drain() == len(customers) * 3 + 1
    by_partition: dict[str, list[tuple[str, str]]] = {}
    for key in layout.keys:
        by_partition[key] = [
            (f[b"customer_id"].decode(), f[b"event_id"].decode()) for _, f in await redis_client.xrange(key)
        ]
    assert ("", "s1") in by_partition[layout.key(0)], "system events live in partition 0"
    for customer in customers:
        [home] = [key for key, entries in by_partition.items() if any(c == customer for c, _ in entries)]
        assert home == layout.key_for(customer)
        assert [e for c, e in by_partition[home] if c == customer] == [f"{customer}-{r}" for r in range(3)]
    assert sum(1 for entries in by_partition.values() if entries) >= 3, "the customers all hashed alike"

    recorder = Recorder()
    group = ConsumerGroup(redis_client, recorder, streams=layout.keys, group="g", consumer="w1", batch=5)
    assert await group.drain() == len(customers) * 3 + 1
    for customer in customers:
        assert [e for c, e in recorder.handled if c == customer] == [f"{customer}-{r}" for r in range(3)]
    for key in layout.keys:
        assert (await redis_client.xpending(key, "g"))["pending"] == 0


async def append_events(
    redis_client: stream.Client, stream_key: str, events: Sequence[tuple[str, str]]
) -> None:
    """Append events A (customer id, event id) to the stream, one entry each."""
    for customer_id, event_id in events:
        event = customer_event(customer_id, "A", event_id)
        entry = stream.pack_entry(customer_id, event.event_id, "A", _event_bytes(event), "")
        await stream.Appender(redis_client, stream_key).append([entry])


async def gated_pairs(
    redis_client: stream.Client, stream_key: str, events: Sequence[tuple[str, str]]
) -> tuple[Recorder, ConsumerGroup]:
    """Append events A (customer id, event id) to the stream; a consumer of batches of 2, two in
    flight, whose recorder holds its first batch until the test sets its gate."""
    await append_events(redis_client, stream_key, events)
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    group = ConsumerGroup(
        redis_client, recorder, streams=[stream_key], group="g", consumer="w1", batch=2, concurrency=2
    )
    return recorder, group


@single_and_cluster
async def test_batches_in_flight_hand_one_customers_entries_over_in_order(stream_key, redis_client):
    recorder, group = await gated_pairs(redis_client, stream_key, [("c1", f"e{i}") for i in range(4)])
    running = asyncio.create_task(group.run())
    try:
        # Both batches are in flight, the first one held: the second must wait for it.
        await wait_until(lambda: len(group._inflight) == 4, 30, "the second batch was not read")
        assert recorder.handled == []
        recorder.gate.set()
        await wait_until(lambda: len(recorder.handled) == 4, 30, "the batches were not handled")
    finally:
        group.shutdown()
        await running
    assert recorder.handled == [("c1", f"e{i}") for i in range(4)]


@single_and_cluster
async def test_only_the_customers_of_a_batch_in_flight_wait_for_it(stream_key, redis_client):
    events = [("c1", "e0"), ("c1", "e1"), ("c1", "e2"), ("c2", "f0")]
    recorder, group = await gated_pairs(redis_client, stream_key, events)
    running = asyncio.create_task(group.run())
    try:
        # The first batch (c1's e0, e1) is held: the second one's c1 entry waits for it, its c2
        # entry does not.
        await wait_until(lambda: recorder.handled == [("c2", "f0")], 30, "c2 waited for c1's batch")
        recorder.gate.set()
        await wait_until(lambda: len(recorder.handled) == 4, 30, "the batches were not handled")
    finally:
        group.shutdown()
        await running
    assert recorder.handled == [("c2", "f0"), ("c1", "e0"), ("c1", "e1"), ("c1", "e2")]


@single_and_cluster
async def test_a_customer_the_handler_settled_goes_on_before_the_batch_ends(stream_key, redis_client):
    settled = asyncio.Event()

    class Settling(Recorder):
        """Holds its first batch, after settling c1's entries of it."""

        async def handle(self, batch: Sequence[Received]) -> None:
            if self.batches == 0:
                self.handled += [
                    (i.event.customer_id, i.event.event_id) for i in batch if i.event.customer_id == "c1"
                ]
                for item in batch:
                    if item.event.customer_id == "c1":
                        item.settled()
                settled.set()
                self.batches += 1
                assert self.gate is not None
                await self.gate.wait()
                self.handled += [
                    (i.event.customer_id, i.event.event_id) for i in batch if i.event.customer_id != "c1"
                ]
                return
            await super().handle(batch)

    recorder, group = await gated_pairs(redis_client, stream_key, [("c1", "e0"), ("c2", "f0")])
    settling = Settling()
    settling.gate = recorder.gate
    group.handler = settling
    running = asyncio.create_task(group.run())
    try:
        await asyncio.wait_for(settled.wait(), 30)
        await append_events(redis_client, stream_key, [("c1", "e1"), ("c2", "f1")])
        # The first batch is held, but c1's work in it is done: c1's next entry goes; c2's waits.
        await wait_until(lambda: ("c1", "e1") in settling.handled, 30, "c1 waited for the whole batch")
        assert ("c2", "f1") not in settling.handled
        assert settling.gate is not None
        settling.gate.set()
        await wait_until(lambda: len(settling.handled) == 4, 30, "the batches were not handled")
    finally:
        group.shutdown()
        await running
    assert settling.handled == [("c1", "e0"), ("c1", "e1"), ("c2", "f0"), ("c2", "f1")]


@single_and_cluster
async def test_consumers_of_gone_replicas_leave_the_group_once_their_entries_are_claimed(
    stream_key, redis_client
):
    for i in range(3):
        event = customer_event(f"c{i}", "A", f"e{i}")
        entry = stream.pack_entry(f"c{i}", event.event_id, "A", _event_bytes(event), "")
        await stream.Appender(redis_client, stream_key).append([entry])
    await redis_client.xgroup_create(stream_key, "g", id="0")
    await redis_client.xreadgroup("g", "gone", {stream_key: ">"}, count=2)  # read, never acknowledged
    await redis_client.xgroup_createconsumer(stream_key, "g", "idle")  # started, then gone
    recorder = Recorder()
    group = ConsumerGroup(
        redis_client,
        recorder,
        streams=[stream_key],
        group="g",
        consumer="w1",
        claim_idle_ms=0,
        forget_idle_ms=0,  # Redis's own ms clock decides idleness: 0 keeps the test off the wall clock
    )
    assert await group.drain() == 3
    assert sorted(e for _, e in recorder.handled) == ["e0", "e1", "e2"]
    consumers = {c["name"]: c["pending"] for c in await redis_client.xinfo_consumers(stream_key, "g")}
    assert consumers == {b"w1": 0}
    assert group.forgotten == 2


async def test_a_consumer_with_pending_entries_is_never_removed(stream_key, redis_client):
    event = customer_event("c0", "A", "e0")
    await stream.Appender(redis_client, stream_key).append(
        [stream.pack_entry("c0", "e0", "A", _event_bytes(event), "")]
    )
    await redis_client.xgroup_create(stream_key, "g", id="0")
    await redis_client.xreadgroup("g", "busy", {stream_key: ">"})
    # Its entry is not claimable yet (idle less than claim_idle_ms): it stays its owner's.
    group = ConsumerGroup(
        redis_client, Recorder(), streams=[stream_key], group="g", consumer="w1", forget_idle_ms=0
    )
    await group.ensure_group()
    assert await group.forget_gone_consumers() == 0
    consumers = {c["name"]: c["pending"] for c in await redis_client.xinfo_consumers(stream_key, "g")}
    assert consumers[b"busy"] == 1


async def test_a_consumer_seen_within_the_idle_window_is_kept(stream_key, redis_client):
    await redis_client.xgroup_create(stream_key, "g", id="0", mkstream=True)
    await redis_client.xgroup_createconsumer(stream_key, "g", "recent")
    group = ConsumerGroup(
        redis_client, Recorder(), streams=[stream_key], group="g", consumer="w1", forget_idle_ms=600_000
    )
    await group.ensure_group()
    assert await group.forget_gone_consumers() == 0
    consumers = {c["name"] for c in await redis_client.xinfo_consumers(stream_key, "g")}
    assert b"recent" in consumers


def _event_bytes(request: ingestion_pb2.TrackCustomerEventRequest) -> bytes:
    from eventline.common.v1 import common_pb2

    return common_pb2.Event(
        event_id=request.event_id,
        kind=common_pb2.EVENT_KIND_CUSTOMER,
        customer_id=request.customer_id,
        name=request.name,
    ).SerializeToString()


class SharedLog(StreamHandler):
    """Two replicas' handler: both append to one log; replica ``slow`` holds its first batch."""

    def __init__(self, log: list[tuple[str, str]], slow: bool) -> None:
        self.log = log
        self.slow = slow
        self.batches = 0

    async def handle(self, batch: Sequence[Received]) -> None:
        self.batches += 1
        if self.slow and self.batches == 1:
            await asyncio.sleep(0.3)  # a batch in flight on this replica while the other reads on
        self.log += [(item.event.customer_id, item.event.event_id) for item in batch]


@single_and_cluster
async def test_two_replicas_with_batches_in_flight_keep_each_customers_order(stream_key, redis_client):
    """Issue 11: two campaigns replicas processing 4 batches at once recorded deliveries out of
    their customer's order. Each partition has one owner at a time now, so the shared log holds
    every customer's events in the order of the stream."""
    layout = stream.StreamLayout(stream_key, 4)
    customers = [f"c{i}" for i in range(8)]
    for n in range(25):
        for customer in customers:
            event = customer_event(customer, "A", f"{customer}-{n:02d}")
            entry = stream.pack_entry(customer, event.event_id, "A", _event_bytes(event), "")
            await stream.Appender(redis_client, layout.key_for(customer)).append([entry])
    handled: list[tuple[str, str]] = []
    groups = [
        ConsumerGroup(
            redis_client,
            SharedLog(handled, slow=i == 0),
            streams=layout.keys,
            group="g",
            consumer=f"replica-{i}",
            batch=5,
            concurrency=4,
            lease_ms=1000,
        )
        for i in range(2)
    ]
    running = [asyncio.create_task(group.run()) for group in groups]
    try:
        await wait_until(lambda: len(handled) >= 25 * len(customers), 60, "the replicas did not finish")
        # The replicas shared the partitions (two each once both were in), never one at two owners.
        await wait_until(lambda: all(len(g.owned) == 2 for g in groups), 30, "the partitions were not shared")
        assert groups[0].owned.isdisjoint(groups[1].owned)
    finally:
        for group in groups:
            group.shutdown()
        await asyncio.gather(*running)
    assert len(handled) == 25 * len(customers)
    for customer in customers:
        assert [e for c, e in handled if c == customer] == [f"{customer}-{n:02d}" for n in range(25)]


async def test_a_crashed_owners_partition_is_taken_over_with_its_pending_entries_first(
    stream_key, redis_client
):
    events = [customer_event("c1", "A", f"e{i}") for i in range(6)]
    for event in events:
        entry = stream.pack_entry("c1", event.event_id, "A", _event_bytes(event), "")
        await stream.Appender(redis_client, stream_key).append([entry])
    await redis_client.xgroup_create(stream_key, "g", id="0")
    # The crashed owner had read e0..e2 and held the partition's lease, which now runs out.
    await redis_client.xreadgroup("g", "crashed", {stream_key: ">"}, count=3)
    await redis_client.set(stream.owner_key(stream_key, "g"), "crashed", px=300)
    recorder = Recorder()
    group = ConsumerGroup(
        redis_client, recorder, streams=[stream_key], group="g", consumer="w1", claim_idle_ms=0, lease_ms=600
    )
    running = asyncio.create_task(group.run())
    try:
        await wait_until(lambda: len(recorder.handled) == 6, 30, "the partition was not taken over")
    finally:
        group.shutdown()
        await running
    assert recorder.handled == [("c1", f"e{i}") for i in range(6)]
    assert await redis_client.get(stream.owner_key(stream_key, "g")) is None, "released at shutdown"
