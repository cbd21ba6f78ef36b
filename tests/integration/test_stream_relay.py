"""The outbox relay and the stream: nothing lost between commit and publish, nothing trimmed early."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_shared.streams import stream
from tests.conftest import REDIS_URL, service_env, single_and_cluster
from tests.faults import TcpProxy
from tests.support import customer_event, outbox_drained


async def test_ingestion_keeps_accepting_while_redis_is_down_and_drains_after(
    db_url, stream_key, redis_client, db
):
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    target = urlparse(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=f"redis://127.0.0.1:{proxy.port}{target.path}")
    try:
        async with running(Settings.from_env(env)) as served:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                await stub.TrackCustomerEvent(customer_event("c1", "A", "before"))
                proxy.cut()
                for i in range(30):
                    reply = await stub.TrackCustomerEvent(customer_event(f"c{i % 4}", "A", f"down{i}"))
                    assert not reply.deduplicated
                await asyncio.sleep(0.3)
                assert await db.fetchval("SELECT count(*) FROM event_outbox") > 0
                proxy.restore()
                await outbox_drained(db)
    finally:
        await proxy.close()
    committed = {r["event_id"] for r in await db.fetch("SELECT event_id FROM customer_events")}
    streamed = [fields[b"event_id"].decode() for _, fields in await redis_client.xrange(stream_key)]
    assert len(committed) == 31
    assert set(streamed) == committed


@single_and_cluster
async def test_relay_publishes_rows_left_by_a_stopped_replica(
    db_url, stream_key, redis_url, redis_client, db
):
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url)
    async with running(Settings.from_env(env), relay=False) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            items = [
                ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", f"e{i}"))
                for i in range(7)
            ]
            await stub.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
    assert await redis_client.exists(stream_key) == 0
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 1
    async with running(Settings.from_env(env)):
        for _ in range(3000):
            if await redis_client.xlen(stream_key) == 7:
                break
            await asyncio.sleep(0.02)
    assert await redis_client.xlen(stream_key) == 7
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


@single_and_cluster
async def test_appended_entries_read_back_field_for_field_in_order(redis_client, stream_key):
    # The append script reads each entry's five fields with one struct.unpack: empty fields, a
    # payload holding every byte value and several entries per blob must come back as packed.
    entries = [
        (
            "c1",
            "e1",
            "Signed up",
            bytes(range(256)) * 3,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("", "e2", "system", b"", ""),
        ("c\u00e9", "e3", "Caf\u00e9 \u2028", b"\x00", ""),
        ("c2", "e4", "A", b"x" * 70_000, "tp"),
    ]
    blobs = [
        b"".join(stream.pack_entry(*entry) for entry in entries[:3]),
        stream.pack_entry(*entries[3]),
    ]
    assert stream.unpack_entries(blobs[0]) == entries[:3]

    assert await stream.Appender(redis_client, stream_key).append(blobs) == 4

    read = [stream.StreamEntry.from_fields(i, f) for i, f in await redis_client.xrange(stream_key)]
    assert [(e.customer_id, e.event_id, e.name, e.payload, e.traceparent) for e in read] == entries


@single_and_cluster
async def test_trim_never_drops_unacknowledged_or_unread_entries(redis_client, stream_key):
    ids = [await redis_client.xadd(stream_key, {"n": str(i)}) for i in range(10)]
    await redis_client.xgroup_create(stream_key, "slow", id="0")
    await redis_client.xgroup_create(stream_key, "fast", id="0")
    read = await redis_client.xreadgroup("slow", "w1", {stream_key: ">"}, count=6)
    delivered = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(stream_key, "slow", *delivered[:3])  # 3..5 stay pending
    fast = await redis_client.xreadgroup("fast", "w1", {stream_key: ">"})
    await redis_client.xack(stream_key, "fast", *[i for i, _ in fast[0][1]])

    await asyncio.sleep(0.01)
    removed = await stream.trim(redis_client, stream_key, retention_s=0)
    remaining = [entry_id for entry_id, _ in await redis_client.xrange(stream_key)]
    assert removed == 3
    assert remaining == ids[3:]

    await redis_client.xack(stream_key, "slow", *delivered[3:])
    await stream.trim(redis_client, stream_key, retention_s=0)
    assert [i for i, _ in await redis_client.xrange(stream_key)] == ids[6:]  # unread by "slow"


async def test_trim_when_pending_entries_are_acknowledged_while_it_looks(redis_client, stream_key):
    """XINFO GROUPS counts pending entries that the consumer acknowledges before XPENDING runs
    (seen under load: the relay's trim failed on a missing lowest pending id)."""
    ids = [await redis_client.xadd(stream_key, {"n": str(i)}) for i in range(4)]
    await redis_client.xgroup_create(stream_key, "g", id="0")
    read = await redis_client.xreadgroup("g", "w1", {stream_key: ">"}, count=2)
    delivered = [entry_id for entry_id, _ in read[0][1]]

    class AcknowledgesInBetween(type(redis_client)):  # type: ignore[misc]
        async def xinfo_groups(self, name):  # type: ignore[no-untyped-def]
            groups = await super().xinfo_groups(name)
            assert groups[0]["pending"] == 2
            await redis_client.xack(stream_key, "g", *delivered)  # the consumer, meanwhile
            return groups

    client = AcknowledgesInBetween(connection_pool=redis_client.connection_pool)
    await asyncio.sleep(0.01)
    assert await stream.trim(client, stream_key, retention_s=0) == 2
    assert [i for i, _ in await redis_client.xrange(stream_key)] == ids[2:]  # unread ones stay


@single_and_cluster
async def test_trim_keeps_entries_within_retention(redis_client, stream_key):
    for i in range(5):
        await redis_client.xadd(stream_key, {"n": str(i)})
    assert await stream.trim(redis_client, stream_key, retention_s=3600) == 0
    assert await redis_client.xlen(stream_key) == 5
    await asyncio.sleep(0.01)  # entry ids are milliseconds: let the last one age
    assert await stream.trim(redis_client, stream_key, retention_s=0) == 5


@single_and_cluster
async def test_stopped_consumers_never_lose_entries_to_trimming(db_url, stream_key, redis_url, redis_client):
    """Issue 6, scenario 8: with a zero retention and trimming five times a second,
    a consumer group that stops consuming keeps every entry it has not acknowledged."""
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    env = service_env(
        db_url,
        stream_key,
        EVENTLINE_STREAM_RETENTION_S="0",
        EVENTLINE_STREAM_TRIM_INTERVAL_S="0.2",
        EVENTLINE_REDIS_URL=redis_url,
    )
    async with running(Settings.from_env(env)) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            # The group exists before the first entry: with no group, a zero retention may trim
            # the entry before the group is created (seen on the cluster run).
            await redis_client.xgroup_create(stream_key, "campaigns", id="0", mkstream=True)
            await stub.TrackCustomerEvent(customer_event("c0", "A", "first"))
            for _ in range(3000):
                if await redis_client.xlen(stream_key):
                    break
                await asyncio.sleep(0.02)
            read = await redis_client.xreadgroup("campaigns", "worker", {stream_key: ">"})
            acked = [entry_id for entry_id, _ in read[0][1]]
            await redis_client.xack(stream_key, "campaigns", *acked)
            # The consumer reads a few more and stops without acknowledging them.
            for i in range(10):
                await stub.TrackCustomerEvent(customer_event("c1", "A", f"pending{i}"))
            await asyncio.sleep(0.3)
            await redis_client.xreadgroup("campaigns", "worker", {stream_key: ">"}, count=4)
            # Producers go on for a while; the consumer is gone.
            for i in range(30):
                await stub.TrackCustomerEvent(customer_event("c2", "A", f"later{i}"))
                await asyncio.sleep(0.03)
            # The trimmer (every 0.2 s) removes the acknowledged entry: wait for that, not a pause.
            for _ in range(3000):
                ids = [fields[b"event_id"] for _, fields in await redis_client.xrange(stream_key)]
                if b"first" not in ids and len(ids) >= 40:
                    break
                await asyncio.sleep(0.02)
    remaining = [fields[b"event_id"].decode() for _, fields in await redis_client.xrange(stream_key)]
    expected = [f"pending{i}" for i in range(10)] + [f"later{i}" for i in range(30)]
    assert remaining == expected  # the acknowledged entry went, nothing else did
    pending = await redis_client.xpending(stream_key, "campaigns")
    assert pending["pending"] == 4
