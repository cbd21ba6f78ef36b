"""IngestionService against real PostgreSQL, Redis and a gRPC server on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_shared.observability.tracing import TraceContext
from eventline_shared.streams.stream import StreamEntry
from tests.support import customer_event, value, violations


async def stream_entries(redis_client, stream_key: str) -> list[StreamEntry]:  # type: ignore[no-untyped-def]
    return [StreamEntry.from_fields(i, f) for i, f in await redis_client.xrange(stream_key)]


async def wait_for_entries(redis_client, stream_key: str, count: int) -> list[StreamEntry]:  # type: ignore[no-untyped-def]
    for _ in range(3000):
        entries = await stream_entries(redis_client, stream_key)
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.02)
    return await stream_entries(redis_client, stream_key)


async def test_customer_event_is_stored_streamed_and_on_the_timeline(ingestion, db, redis_client, stream_key):
    request = customer_event("c1", "CallCenterCall", "e1", topic="billing", minutes=12, vip=True)
    request.context["price"].decimal_value = "12.50"
    request.occurred_at.FromDatetime(dt.datetime(2026, 1, 2, 3, 4, 5, 678901))
    reply = await ingestion.TrackCustomerEvent(request)

    assert not reply.deduplicated
    event = reply.event
    assert (event.customer_id, event.event_id, event.name) == ("c1", "e1", "CallCenterCall")
    assert event.kind == common_pb2.EVENT_KIND_CUSTOMER
    assert event.occurred_at.ToDatetime() == dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
    assert event.context["price"].decimal_value == "12.50"
    assert event.context["minutes"].integer_value == 12
    assert event.context["vip"].boolean_value is True

    assert await db.fetchval("SELECT count(*) FROM customers WHERE customer_id = 'c1'") == 1
    stats = await db.fetchrow(
        "SELECT count, first_at, last_at FROM customer_event_stats WHERE customer_id = 'c1'"
    )
    assert stats["count"] == 1

    entries = await wait_for_entries(redis_client, stream_key, 1)
    assert len(entries) == 1
    assert entries[0].customer_id == "c1" and entries[0].event_id == "e1"
    assert entries[0].event() == event

    timeline = await ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id="c1"))
    assert list(timeline.events) == [event]
    assert timeline.next_page_token == ""


async def test_occurred_at_is_stored_to_the_microsecond_as_answered(ingestion, db):
    """The statement receives times as microseconds since the epoch: nanoseconds are cut, and
    what is stored is the time the reply gives, for customer and system events alike."""
    customer = customer_event("c1", "Timed", "t1")
    customer.occurred_at.seconds, customer.occurred_at.nanos = 1_767_322_245, 123_456_789
    system = ingestion_pb2.TrackSystemEventRequest(event_id="t2", name="Timed")
    system.occurred_at.seconds, system.occurred_at.nanos = 86_400, 999_999_999
    reply = await ingestion.TrackEvents(
        ingestion_pb2.TrackEventsRequest(
            events=[
                ingestion_pb2.TrackEventsItem(customer_event=customer),
                ingestion_pb2.TrackEventsItem(system_event=system),
            ]
        )
    )
    answered = [(r.event.occurred_at.seconds, r.event.occurred_at.nanos) for r in reply.results]
    assert answered == [(1_767_322_245, 123_456_000), (86_400, 999_999_000)]
    stored = await db.fetchval("SELECT occurred_at FROM customer_events WHERE event_id = 't1'")
    assert stored == dt.datetime(2026, 1, 2, 2, 50, 45, 123456, tzinfo=dt.UTC)
    stored = await db.fetchval("SELECT occurred_at FROM system_events WHERE event_id = 't2'")
    assert stored == dt.datetime(1970, 1, 2, 0, 0, 0, 999999, tzinfo=dt.UTC)


async def test_context_types_round_trip_exactly(ingestion):
    when = dt.datetime(2025, 5, 6, 7, 8, 9, 123456)
    request = customer_event("c1", "Typed", s="5", i=5, b=False, t=when)
    request.context["d"].decimal_value = "5"
    request.context["big"].decimal_value = "-1.2e3"
    event = (await ingestion.TrackCustomerEvent(request)).event
    assert event.context["s"] == value("5")
    assert event.context["i"] == value(5)
    assert event.context["b"] == value(False)
    assert event.context["t"].timestamp_value.ToDatetime() == when
    assert event.context["d"].decimal_value == "5.0"
    assert event.context["big"].decimal_value == "-1200.0"
    timeline = await ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id="c1"))
    assert timeline.events[0] == event


async def test_system_event_is_streamed_without_customer(ingestion, db, redis_client, stream_key):
    request = ingestion_pb2.TrackSystemEventRequest(
        event_id="s1", name="ItemInStock", context={"item_id": value(42), "item_name": value("Blue kettle")}
    )
    reply = await ingestion.TrackSystemEvent(request)
    assert reply.event.kind == common_pb2.EVENT_KIND_SYSTEM
    assert reply.event.customer_id == ""
    assert await db.fetchval("SELECT count(*) FROM system_events") == 1
    assert await db.fetchval("SELECT count(*) FROM customers") == 0
    entries = await wait_for_entries(redis_client, stream_key, 1)
    assert [(e.customer_id, e.event_id, e.name) for e in entries] == [("", "s1", "ItemInStock")]
    assert entries[0].event() == reply.event


async def test_repeated_event_id_returns_first_result_and_stores_nothing(
    ingestion, db, redis_client, stream_key
):
    first = await ingestion.TrackCustomerEvent(customer_event("c1", "A", "same", n=1))
    again = await ingestion.TrackCustomerEvent(customer_event("c1", "B", "same", n=2))
    assert again.deduplicated and not first.deduplicated
    assert again.event == first.event
    assert await db.fetchval("SELECT count FROM customer_event_stats WHERE customer_id='c1'") == 1
    await wait_for_entries(redis_client, stream_key, 1)
    await asyncio.sleep(0.2)
    assert len(await stream_entries(redis_client, stream_key)) == 1


async def test_hundred_concurrent_repeats_store_and_stream_once(ingestion, db, redis_client, stream_key):
    replies = await asyncio.gather(
        *(ingestion.TrackCustomerEvent(customer_event("c1", "A", "dup", n=1)) for _ in range(100))
    )
    assert sum(not r.deduplicated for r in replies) == 1
    assert len({r.event.SerializeToString() for r in replies}) == 1
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 1
    assert await db.fetchval("SELECT count FROM customer_event_stats") == 1
    await wait_for_entries(redis_client, stream_key, 1)
    await asyncio.sleep(0.2)
    assert len(await stream_entries(redis_client, stream_key)) == 1


async def test_same_event_id_for_two_customers_is_two_events(ingestion, db):
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", "e1"))
    reply = await ingestion.TrackCustomerEvent(customer_event("c2", "A", "e1"))
    assert not reply.deduplicated
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 2


async def test_batch_stores_good_items_and_reports_bad_ones(ingestion, db, redis_client, stream_key):
    items = [
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "b1")),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "bad-name", "b2")),
        ingestion_pb2.TrackEventsItem(
            system_event=ingestion_pb2.TrackSystemEventRequest(event_id="b3", name="S")
        ),
        ingestion_pb2.TrackEventsItem(),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c2", "A", "b1")),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "b1")),
    ]
    reply = await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["event", "error", "event", "error", "event", "event"]
    assert reply.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "events[1].customer_event.name" in reply.results[1].error.message
    assert "events[3]" in reply.results[3].error.message
    assert [r.deduplicated for r in reply.results] == [False, False, False, False, False, True]
    assert reply.results[5].event == reply.results[0].event
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 2
    assert await db.fetchval("SELECT count(*) FROM system_events") == 1
    assert len(await wait_for_entries(redis_client, stream_key, 3)) == 3


async def test_batch_omitting_stored_events_answers_each_item_without_its_event(
    ingestion, db, redis_client, stream_key
):
    """With omit_stored_events a stored item's result is empty but for ``deduplicated``; refused
    items carry their errors; what is stored and published does not change."""
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", "old"))
    items = [
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "b1")),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "bad-name", "b2")),
        ingestion_pb2.TrackEventsItem(
            system_event=ingestion_pb2.TrackSystemEventRequest(event_id="b3", name="S")
        ),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "old")),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "b1")),
    ]
    reply = await ingestion.TrackEvents(
        ingestion_pb2.TrackEventsRequest(events=items, omit_stored_events=True)
    )
    assert [r.WhichOneof("result") for r in reply.results] == [None, "error", None, None, None]
    assert "events[1].customer_event.name" in reply.results[1].error.message
    assert [r.deduplicated for r in reply.results] == [False, False, False, True, True]
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 2
    assert await db.fetchval("SELECT count FROM customer_event_stats") == 2
    assert await db.fetchval("SELECT count(*) FROM system_events") == 1
    entries = await wait_for_entries(redis_client, stream_key, 3)
    assert sorted(e.event_id for e in entries) == ["b1", "b3", "old"]


async def test_batch_mixing_kinds_answers_repeats_of_either_kind_with_the_first_event(
    ingestion, db, redis_client, stream_key
):
    """A repeat of either kind in one batch is answered with the event stored first, and only
    the new events are stored, counted and published."""
    first = await ingestion.TrackCustomerEvent(customer_event("c1", "A", "m1"))
    system = ingestion_pb2.TrackSystemEventRequest(event_id="s1", name="S")
    first_system = await ingestion.TrackSystemEvent(system)
    items = [
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "m1")),
        ingestion_pb2.TrackEventsItem(system_event=system),
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", "m2")),
        ingestion_pb2.TrackEventsItem(
            system_event=ingestion_pb2.TrackSystemEventRequest(event_id="s2", name="S")
        ),
    ]
    reply = await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
    assert [r.deduplicated for r in reply.results] == [True, True, False, False]
    assert reply.results[0].event == first.event
    assert reply.results[1].event == first_system.event
    assert [r.event.event_id for r in reply.results] == ["m1", "s1", "m2", "s2"]
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 2
    assert await db.fetchval("SELECT count(*) FROM system_events") == 2
    assert await db.fetchval("SELECT count FROM customer_event_stats") == 2
    entries = await wait_for_entries(redis_client, stream_key, 4)
    assert sorted(e.event_id for e in entries) == ["m1", "m2", "s1", "s2"]


async def test_batch_over_the_limit_is_resource_exhausted_and_stores_nothing(ingestion, db):
    items = [
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "A", f"e{i}")) for i in range(1001)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "events" in violations(caught.value)
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 0


async def test_batch_of_a_thousand_is_accepted(ingestion, db):
    items = [
        ingestion_pb2.TrackEventsItem(customer_event=customer_event(f"c{i % 37}", "A", f"e{i}", n=i))
        for i in range(1000)
    ]
    reply = await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
    assert all(r.WhichOneof("result") == "event" for r in reply.results)
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 1000
    assert await db.fetchval("SELECT sum(count) FROM customer_event_stats") == 1000
    assert await db.fetchval("SELECT count(*) FROM customers") == 37


async def test_oversized_message_is_resource_exhausted(ingestion, db):
    huge = customer_event("c1", "A", "e1")
    items = [ingestion_pb2.TrackEventsItem(customer_event=huge)] * 1
    request = ingestion_pb2.TrackEventsRequest(events=items)
    request.events[0].customer_event.context["x"].string_value = "y" * (17 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.TrackEvents(request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 0


async def test_stats_row_tracks_first_last_and_count(ingestion, db):
    for day in (5, 1, 9):
        request = customer_event("c1", "A")
        request.occurred_at.FromDatetime(dt.datetime(2026, 3, day))
        await ingestion.TrackCustomerEvent(request)
    row = await db.fetchrow("SELECT first_at, last_at, count FROM customer_event_stats")
    assert row["count"] == 3
    assert row["first_at"].day == 1 and row["last_at"].day == 9


async def test_stream_entries_continue_the_callers_trace(ingestion, redis_client, stream_key):
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await ingestion.TrackCustomerEvent(
        customer_event("c1", "A", "traced"), metadata=[("traceparent", parent)]
    )
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", "untraced"))
    entries = {e.event_id: e for e in await wait_for_entries(redis_client, stream_key, 2)}
    traced = TraceContext.parse(entries["traced"].traceparent)
    assert traced is not None
    assert traced.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traced.span_id != "00f067aa0ba902b7"  # ingestion's own span, child of the caller's
    fresh = TraceContext.parse(entries["untraced"].traceparent)
    assert fresh is not None and fresh.trace_id != traced.trace_id
