"""Issue 10 item 3: StreamCustomers clients that never read, or abandon their streams.

A stream reads its ids page by page and holds no database connection between
pages, so a client that stops reading holds nothing of the database; a replica
serves a bounded number of streams (more are RESOURCE_EXHAUSTED at once) and
ends a stream whose client reads nothing for EVENTLINE_SEGMENTATION_STREAM_IDLE_S
with ABORTED. The hostile client is a raw HTTP/2 connection whose receive
windows stay closed (``tests.http2``). Nothing here waits on time: every wait
is for a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc

from tests.conftest import service_env
from tests.http2 import RawGrpcClient, RawStream

STREAM = "/eventline.segmentation.v1.SegmentationService/StreamCustomers"
EVERYONE = pb.Filter(event=pb.EventCondition(name="A"))
REQUEST = pb.StreamCustomersRequest(filter=EVERYONE)


async def seed(db: asyncpg.Connection, count: int) -> None:
    """``count`` customers c000000…, every one with an event A."""
    await db.execute(
        """INSERT INTO customers (customer_id)
           SELECT 'c' || lpad(i::text, 6, '0') FROM generate_series(0, $1 - 1) i""",
        count,
    )
    await db.execute(
        """INSERT INTO customer_event_stats (customer_id, name, first_at, last_at, count)
           SELECT customer_id, 'A', now(), now(), 1 FROM customers"""
    )


@contextlib.asynccontextmanager
async def segmentation_with(db_url: str, stream_key: str, **env: str) -> AsyncIterator[Any]:
    """A segmentation server of this test, with settings of its own (and without the background
    work of real-time segments, whose polling queries would show among the sessions counted)."""
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    async with running(Settings.from_env(service_env(db_url, stream_key, **env)), background=False) as served:
        yield served


async def stalled(client: RawGrpcClient, count: int) -> list[RawStream]:
    """``count`` streams, each let to send 5 bytes and no more; returns once every one has sent
    them (its first page is read and the server is writing) or ended."""
    streams = [await client.start(STREAM, REQUEST.SerializeToString()) for _ in range(count)]
    for stream in streams:
        client.connection.increment_flow_control_window(5, stream.stream_id)
    await client._flush()
    await client.wait_for(lambda: all(s.data or s.ended for s in streams))
    return streams


async def sessions(db: asyncpg.Connection, db_url: str) -> collections.Counter[str]:
    """The states of the other sessions on this test's database ('idle', 'active', 'idle in transaction'...)."""
    database = db_url.rsplit("/", 1)[1].split("?")[0]
    rows = await db.fetch(
        "SELECT state FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
    )
    return collections.Counter(str(r["state"]) for r in rows)


async def read_all(stub: Any, request: pb.StreamCustomersRequest = REQUEST) -> list[str]:
    return [i async for chunk in stub.StreamCustomers(request, timeout=60) for i in chunk.customer_ids]


async def served_whole(stub: Any, retry_on: set[grpc.StatusCode], what: str) -> None:
    """Stream all 20,000 customers, again (up to 60 s) while the call ends with one of ``retry_on``."""
    deadline = time.monotonic() + 60
    while True:
        try:
            assert len(await read_all(stub)) == 20_000
            return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in retry_on, exc
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)


async def test_a_client_that_never_reads_holds_no_connection_and_unary_calls_go_on(
    db: asyncpg.Connection, db_url: str, stream_key: str
) -> None:
    """The attack: 24 streams on one connection that never opens its windows (the pool has 10
    connections). Before, each held a connection 'idle in transaction' and CountCustomers and
    ListSegments answered DEADLINE_EXCEEDED."""
    await seed(db, 20_000)
    async with segmentation_with(db_url, stream_key) as served:
        async with RawGrpcClient("127.0.0.1", served.port) as client:
            streams = await stalled(client, 24)
            assert all(s.data and not s.ended for s in streams)  # all 24 are being served, none finished
            # Every page query has finished: the streams hold no connection, let alone a transaction.
            states = await sessions(db, db_url)
            assert states["idle in transaction"] == 0 and states["active"] == 0, states
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
                counted = await stub.CountCustomers(pb.CountCustomersRequest(filter=EVERYONE), timeout=60)
                assert counted.count == 20_000
                await stub.ListSegments(pb.ListSegmentsRequest(), timeout=60)
                # A well-behaved stream is served meanwhile, whole.
                assert len(await read_all(stub)) == 20_000


async def test_streams_past_the_limit_are_resource_exhausted_at_once(
    db: asyncpg.Connection, db_url: str, stream_key: str
) -> None:
    await seed(db, 20_000)
    async with segmentation_with(db_url, stream_key, EVENTLINE_SEGMENTATION_MAX_STREAMS="4") as served:
        async with RawGrpcClient("127.0.0.1", served.port) as client:
            held = await stalled(client, 4)
            assert not any(s.ended for s in held)
            refused = await client.start(STREAM, REQUEST.SerializeToString())
            await client.wait_for(lambda: refused.ended)
            assert refused.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], refused
            assert "4 StreamCustomers calls" in refused.message
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await read_all(stub)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                counted = await stub.CountCustomers(pb.CountCustomersRequest(filter=EVERYONE), timeout=60)
                assert counted.count == 20_000


async def test_a_stream_left_unread_ends_with_aborted_and_frees_its_slot(
    db: asyncpg.Connection, db_url: str, stream_key: str
) -> None:
    """With one stream slot and a short idle bound: the stalled stream gives its slot up (another
    stream is then served whole), and once its client reads, it gets the replies that were sent
    and ABORTED."""
    await seed(db, 20_000)
    async with segmentation_with(
        db_url,
        stream_key,
        EVENTLINE_SEGMENTATION_MAX_STREAMS="1",
        EVENTLINE_SEGMENTATION_STREAM_IDLE_S="0.5",
    ) as served:
        async with RawGrpcClient("127.0.0.1", served.port) as client:
            (held,) = await stalled(client, 1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
                # Refused while the stalled stream holds the slot; ABORTED should this very stream
                # be left unread for 0.5 s on a loaded machine. Either way: again.
                await served_whole(
                    stub,
                    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED},
                    "the stalled stream never gave its slot up",
                )
            await client.open_window(held)
            await client.wait_for(lambda: held.ended)
            assert held.status == grpc.StatusCode.ABORTED.value[0], held
            assert "read nothing" in held.message
            # What it received are whole replies: the first ids, in order.
            ids: list[str] = []
            data = bytes(held.data)
            while data:
                size = int.from_bytes(data[1:5], "big")
                ids += pb.StreamCustomersResponse.FromString(data[5 : 5 + size]).customer_ids
                data = data[5 + size :]
            assert ids == [f"c{i:06d}" for i in range(len(ids))]


async def test_a_stream_holds_no_transaction_and_a_cancelled_one_frees_its_slot(
    db: asyncpg.Connection, db_url: str, stream_key: str
) -> None:
    """Reworked from a test that looked for the cursor's transaction at one moment (and failed
    on a busy machine when the session was momentarily 'active'): now there is none to see at
    any moment, and what a cancelled stream held is shown free by another stream being served."""
    await seed(db, 20_000)
    async with segmentation_with(db_url, stream_key, EVENTLINE_SEGMENTATION_MAX_STREAMS="1") as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
            call = stub.StreamCustomers(pb.StreamCustomersRequest(filter=EVERYONE, chunk_size=1))
            first = await call.read()
            assert list(first.customer_ids) == ["c000000"]
            # The first page is read and its query over; the stream is open and holds nothing.
            states = await sessions(db, db_url)
            assert states["idle in transaction"] == 0 and states["active"] == 0, states
            call.cancel()
            # Until the server has seen the cancellation, the one slot is still taken.
            await served_whole(
                stub, {grpc.StatusCode.RESOURCE_EXHAUSTED}, "the cancelled stream never gave its slot up"
            )
            counted = await stub.CountCustomers(pb.CountCustomersRequest(filter=EVERYONE), timeout=60)
            assert counted.count == 20_000
