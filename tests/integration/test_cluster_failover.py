"""A Redis Cluster failover in the middle of a 10,000-event flow (issue 11, item 9).

Ingestion (with its outbox relay) publishes to a 2-partition stream on the
6-node test cluster while a consumer group reads it; halfway through, the
replica of the master holding a partition is told ``CLUSTER FAILOVER`` and
takes over. Afterwards every event was handed over exactly once, and each
customer's events in the order they were sent.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup
from tests.conftest import service_env
from tests.integration.test_stream_order import Recorder
from tests.support import customer_event, wait_until

EVENTS = 10_000
CUSTOMERS = 100
PER_CALL = 500


@pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)
async def test_a_failover_midway_loses_nothing_repeats_nothing_and_keeps_each_customers_order(
    db_url, stream_key, redis_url, redis_client, redis_cluster
):
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    layout = stream.StreamLayout(stream_key, 2)
    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url, EVENTLINE_STREAM_PARTITIONS="2")
    recorder = Recorder()
    group = ConsumerGroup(
        redis_client, recorder, streams=layout.keys, group="g", consumer="w1", batch=200, claim_idle_ms=5000
    )
    await group.ensure_group()
    consuming = asyncio.create_task(group.run())
    sent: dict[str, list[str]] = {f"c{i:03d}": [] for i in range(CUSTOMERS)}
    try:
        async with running(Settings.from_env(env)) as served:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                for call in range(EVENTS // PER_CALL):
                    if call == EVENTS // PER_CALL // 2:
                        await wait_until(lambda: len(recorder.handled) > 0, 60, "nothing was consumed")
                        # In a thread: the cluster's own wait must not stop this loop's relay and consumer.
                        await asyncio.to_thread(
                            redis_cluster.failover, redis_cluster.replica_of(layout.key(0))
                        )
                    items = []
                    for n in range(PER_CALL):
                        customer = f"c{n % CUSTOMERS:03d}"
                        event_id = f"{customer}-{call * PER_CALL + n:05d}"
                        sent[customer].append(event_id)
                        items.append(
                            ingestion_pb2.TrackEventsItem(
                                customer_event=customer_event(customer, "A", event_id)
                            )
                        )
                    reply = await stub.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items), timeout=60)
                    assert all(not result.HasField("error") for result in reply.results)
                await wait_until(lambda: len(recorder.handled) >= EVENTS, 120, "events were lost")
    finally:
        group.shutdown()
        await consuming
    counts = Counter(event_id for _, event_id in recorder.handled)
    assert len(counts) == EVENTS
    assert [event_id for event_id, n in counts.items() if n > 1] == [], "events were handed over twice"
    for customer, event_ids in sent.items():
        assert [e for c, e in recorder.handled if c == customer] == event_ids, f"{customer}'s order"
    for key in layout.keys:
        assert (await redis_client.xpending(key, "g"))["pending"] == 0
