"""Issue 6 scenarios that cross every service: ingestion, segmentation and campaigns as servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from tests.faults import TcpProxy
from tests.integration.test_campaigns_across_services import GRANTED, activate, settle, upsert
from tests.support import customer_event


@pytest.fixture
def campaigns(running_campaigns):  # type: ignore[no-untyped-def]
    """Here the campaign service consumes the stream in the background, as deployed."""
    return running_campaigns


async def test_same_event_id_100_times_with_connection_drops_is_one_event_one_entry_one_message(  # type: ignore[no-untyped-def]
    ingestion_server,
    ingestion,
    campaigns,
    smtp_server,
    db,
    redis_client,
    stream_key,
):
    """Scenario 1: clients retry through dropped connections; one stored event, one
    stream entry and one e-mail come out."""
    await upsert(ingestion, "u1", email="u1@example.com", email_consent=GRANTED)
    campaign_id = await activate(
        campaigns,
        campaigns_pb2.Campaign(
            display_name="Order",
            trigger=campaigns_pb2.Trigger(
                customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ordered")
            ),
            actions=[campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Thanks", text_body="Hi"))],
        ),
    )
    proxy = await TcpProxy("127.0.0.1", ingestion_server.port).start()
    request = customer_event("u1", "Ordered", "order-42", total=99)
    replies: list[ingestion_pb2.TrackCustomerEventResponse] = []

    async def send_with_retries(channel: grpc.aio.Channel) -> None:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        for _ in range(100):
            try:
                replies.append(await stub.TrackCustomerEvent(request, timeout=5))
                return
            except grpc.aio.AioRpcError as error:
                assert error.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, error
                await asyncio.sleep(0.02)
        raise AssertionError("never got through")

    async def drop_connections() -> None:
        for _ in range(5):
            await asyncio.sleep(0.03)
            proxy.cut()
            await asyncio.sleep(0.02)
            proxy.restore()

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") for _ in range(10)]
    try:
        await asyncio.gather(drop_connections(), *(send_with_retries(channels[i % 10]) for i in range(100)))
    finally:
        for channel in channels:
            await channel.close()
        await proxy.close()

    assert len(replies) == 100
    assert len({r.event.SerializeToString() for r in replies}) == 1
    assert sum(not r.deduplicated for r in replies) <= 1
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE event_id = 'order-42'") == 1
    await smtp_server.wait_for(1)
    stats = await settle(campaigns, campaign_id, 1)
    assert stats.sent == 1
    assert len(smtp_server.messages) == 1
    entries = await redis_client.xrange(stream_key)
    assert [fields[b"event_id"] for _, fields in entries] == [b"order-42"]


async def test_segment_deadline_of_100_ms_over_a_slow_query(segmentation, ingestion, db, db_url):  # type: ignore[no-untyped-def]
    """Scenario 11: a 100 ms deadline over a query that only the deadline can end (it waits
    on a lock this test holds): DEADLINE_EXCEEDED, and the query is cancelled in PostgreSQL
    while the lock is still held. No wall clock: an uncancelled query would wait forever."""
    import time

    from eventline.segmentation.v1 import segmentation_pb2 as seg

    await ingestion.TrackCustomerEvent(customer_event("c1", "Viewed", "v1"))
    flt = seg.Filter(event=seg.EventCondition(name="Viewed", count=seg.CountTest(at_least=2)))
    database = db_url.rsplit("/", 1)[1].split("?")[0]
    async with db.transaction():
        # The service's query waits behind this lock: a slow query that only the deadline ends.
        await db.execute("LOCK TABLE customer_events, customer_event_stats IN ACCESS EXCLUSIVE MODE")
        try:
            await segmentation.CountCustomers(seg.CountCustomersRequest(filter=flt), timeout=0.1)
            raise AssertionError("the call should have exceeded its deadline")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 60
        while True:
            running = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state <> 'idle' AND pid <> pg_backend_pid()",
                database,
            )
            if running == 0:
                break
            assert time.monotonic() < deadline, "the query of the call was never cancelled"
            await asyncio.sleep(0.05)
    reply = await segmentation.CountCustomers(seg.CountCustomersRequest(filter=flt), timeout=5)
    assert reply.count == 0
