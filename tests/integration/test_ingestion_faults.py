"""Issue 6 scenarios for ingestion: outages, cancellations and fuzzed requests."""

from __future__ import annotations

import asyncio
import random
import time
from urllib.parse import urlparse

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REDIS_URL, service_env
from tests.faults import TcpProxy
from tests.support import customer_event, eventually, outbox_drained, wait_until


def _proxied(url: str, proxy: TcpProxy) -> str:
    parsed = urlparse(url)
    return parsed._replace(netloc=f"{parsed.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()


async def test_postgres_unreachable_answers_unavailable_promptly_and_loses_nothing(
    db_url, stream_key, redis_client, db
):
    """Scenario 3."""
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    target = urlparse(db_url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    acknowledged = []
    try:
        env = service_env(_proxied(db_url, proxy), stream_key)
        async with running(Settings.from_env(env)) as served:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                for i in range(5):
                    await stub.TrackCustomerEvent(customer_event("c1", "A", f"up{i}"))
                    acknowledged.append(f"up{i}")
                proxy.cut()
                for i in range(5):
                    # UNAVAILABLE is the service's own answer: a call that hung on the database
                    # would end with the client's DEADLINE_EXCEEDED instead.
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.TrackCustomerEvent(customer_event("c1", "A", f"down{i}"), timeout=30)
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.ListTimeline(
                            ingestion_pb2.ListTimelineRequest(customer_id="c1"), timeout=10
                        )
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                proxy.restore()
                for i in range(5):
                    for _attempt in range(1200):
                        try:
                            await stub.TrackCustomerEvent(customer_event("c1", "A", f"back{i}"))
                            acknowledged.append(f"back{i}")
                            break
                        except grpc.aio.AioRpcError as error:
                            assert error.code() == grpc.StatusCode.UNAVAILABLE
                            await asyncio.sleep(0.05)
    finally:
        await proxy.close()
    stored = {r["event_id"] for r in await db.fetch("SELECT event_id FROM customer_events")}
    assert set(acknowledged) <= stored
    assert len(acknowledged) == 10


@pytest.mark.slow
async def test_redis_down_for_30_seconds_while_events_keep_arriving(db_url, stream_key, redis_client, db):
    """Scenario 4: ingestion keeps answering OK; afterwards the backlog drains and the
    stream entries equal the committed events."""
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    target = urlparse(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=f"redis://127.0.0.1:{proxy.port}{target.path}")
    sent = 0
    try:
        async with running(Settings.from_env(env)):
            pass
        async with running(Settings.from_env(env)) as served:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                proxy.cut()
                down_until = time.monotonic() + 30
                # 30 s of outage and more than 1,000 events in it, however slow the machine is.
                while time.monotonic() < down_until or sent <= 1000:
                    items = [
                        ingestion_pb2.TrackEventsItem(
                            customer_event=customer_event(f"c{i}", "A", f"e{sent + i}")
                        )
                        for i in range(20)
                    ]
                    reply = await stub.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items), timeout=5)
                    assert all(r.WhichOneof("result") == "event" for r in reply.results)
                    sent += len(items)
                    await asyncio.sleep(0.05)
                assert await redis_client.exists(stream_key) == 0
                proxy.restore()
                await outbox_drained(db)
    finally:
        await proxy.close()
    committed = [r["event_id"] for r in await db.fetch("SELECT event_id FROM customer_events")]
    streamed = [fields[b"event_id"].decode() for _, fields in await redis_client.xrange(stream_key)]
    assert len(committed) == sent > 1000
    assert sorted(streamed) == sorted(committed)


async def test_a_thousand_cancelled_calls_leave_replies_and_pools_intact(ingestion_server, ingestion, db):
    """Scenario 12: RPCs cancelled at random points; later replies match their requests."""
    rng = random.Random(12)

    async def cancelled_call(i: int) -> None:
        call = ingestion.TrackCustomerEvent(customer_event(f"c{i % 7}", "A", f"x{i}"))
        await asyncio.sleep(rng.random() * 0.01)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.CANCELLED

    for start in range(0, 1000, 100):
        await asyncio.gather(*(cancelled_call(i) for i in range(start, start + 100)))
    for i in range(50):
        reply = await ingestion.TrackCustomerEvent(customer_event(f"k{i}", "B", f"check{i}", n=i))
        assert (reply.event.customer_id, reply.event.event_id) == (f"k{i}", f"check{i}")
        assert reply.event.context["n"].integer_value == i
        timeline = await ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id=f"k{i}"))
        assert [e.event_id for e in timeline.events] == [f"check{i}"]
    # Handlers of cancelled calls may still be finishing: every connection must come back (a leaked
    # one never does), and no session may stay busy.
    pool = ingestion_server.pool
    await wait_until(lambda: pool.get_idle_size() == pool.get_size(), 30, "a pool connection stays taken")

    async def nothing_busy() -> bool:
        busy = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state <> 'idle' AND pid <> pg_backend_pid()"
        )
        return bool(busy == 0)

    await eventually(nothing_busy, 30, "a database session stays busy")
    # Every event the service acknowledged or not is either stored whole or not at all.
    partial = await db.fetchval(
        "SELECT count(*) FROM customer_events e LEFT JOIN customer_event_stats s USING (customer_id, name)"
        " WHERE s.customer_id IS NULL"
    )
    assert partial == 0


names = st.one_of(st.text(max_size=70), st.sampled_from(["A", "item-id", "x\x00", "a" * 64, "_", "\n"]))
values = st.one_of(
    st.builds(common_pb2.Value, string_value=st.text(max_size=50)),
    st.builds(common_pb2.Value, integer_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(common_pb2.Value, decimal_value=st.text(max_size=50)),
    st.builds(common_pb2.Value, boolean_value=st.booleans()),
    st.just(common_pb2.Value()),
)
contexts = st.dictionaries(names, values, max_size=5)


@st.composite
def customer_events(draw):  # type: ignore[no-untyped-def]
    request = ingestion_pb2.TrackCustomerEventRequest(
        event_id=draw(st.one_of(st.text(max_size=130), st.uuids().map(str))),
        customer_id=draw(st.one_of(st.text(max_size=130), st.sampled_from(["c1", "c2"]))),
        name=draw(names),
        context=draw(contexts),
    )
    if draw(st.booleans()):
        request.occurred_at.seconds = draw(st.integers(-(2**40), 2**40))
        request.occurred_at.nanos = draw(st.integers(-(2**31), 2**31 - 1))
    return request


CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=customer_events(), batch=st.lists(customer_events(), max_size=4))
async def test_fuzzed_requests_get_clean_errors_and_store_all_or_nothing(ingestion, db, request, batch):
    """Scenario 16: hostile names, codes, values, sizes, unicode and NUL."""
    before = await db.fetchval("SELECT count(*) FROM customer_events")
    try:
        reply = await ingestion.TrackCustomerEvent(request)
        assert reply.event.event_id == request.event_id
    except grpc.aio.AioRpcError as error:
        assert error.code() in CLEAN, error.details()
        assert await db.fetchval("SELECT count(*) FROM customer_events") == before
    items = [ingestion_pb2.TrackEventsItem(customer_event=r) for r in batch]
    if items:
        reply = await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
        assert len(reply.results) == len(items)
        for result in reply.results:
            if result.WhichOneof("result") == "error":
                assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for call, message in [
        (ingestion.GetCustomer, ingestion_pb2.GetCustomerRequest(customer_id=request.customer_id)),
        (
            ingestion.ListTimeline,
            ingestion_pb2.ListTimelineRequest(customer_id=request.customer_id, event_names=[request.name]),
        ),
        (
            ingestion.UpsertCustomer,
            ingestion_pb2.UpsertCustomerRequest(
                customer=common_pb2.Customer(
                    customer_id=request.customer_id, email=request.name, attributes=request.context
                ),
                update_mask=field_mask_pb2.FieldMask(paths=[request.name]),
            ),
        ),
        (ingestion.EraseCustomer, ingestion_pb2.EraseCustomerRequest(customer_id=request.event_id)),
    ]:
        try:
            await call(message)
        except grpc.aio.AioRpcError as error:
            assert error.code() in CLEAN, (call, error.details())
