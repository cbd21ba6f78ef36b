"""Customer profiles, the timeline and erasure."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.protobuf import field_mask_pb2

from eventline_shared.streams import stream
from tests.conftest import single_and_cluster
from tests.support import customer_event, value, violations


def profile(**fields) -> common_pb2.Customer:  # type: ignore[no-untyped-def]
    attributes = fields.pop("attributes", {})
    return common_pb2.Customer(attributes={k: value(v) for k, v in attributes.items()}, **fields)


async def test_upsert_creates_then_updates_only_masked_fields(ingestion):
    created = await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=profile(
                customer_id="c1",
                email="ann@example.com",
                phone="+4915112345678",
                push_tokens=["tok1"],
                email_consent=common_pb2.CONSENT_GRANTED,
                attributes={"tier": "gold", "age": 41},
            )
        )
    )
    assert created.created
    assert created.customer.attributes["tier"].string_value == "gold"
    updated = await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=profile(
                customer_id="c1", email="new@example.com", sms_consent=common_pb2.CONSENT_DENIED
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["email", "sms_consent"]),
        )
    )
    assert not updated.created
    got = (await ingestion.GetCustomer(ingestion_pb2.GetCustomerRequest(customer_id="c1"))).customer
    assert got == updated.customer
    assert got.email == "new@example.com"
    assert got.phone == "+4915112345678"
    assert list(got.push_tokens) == ["tok1"]
    assert got.email_consent == common_pb2.CONSENT_GRANTED
    assert got.sms_consent == common_pb2.CONSENT_DENIED
    assert got.attributes["age"].integer_value == 41
    assert got.created_at == created.customer.created_at
    assert got.updated_at.ToDatetime() >= created.customer.updated_at.ToDatetime()


async def test_upsert_without_mask_replaces_everything(ingestion):
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(customer=profile(customer_id="c1", email="a@example.com"))
    )
    reply = await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(customer=profile(customer_id="c1", phone="+12025550123"))
    )
    assert reply.customer.email == "" and reply.customer.phone == "+12025550123"


async def test_event_for_unknown_customer_creates_a_profile(ingestion):
    await ingestion.TrackCustomerEvent(customer_event("new-one", "A"))
    got = await ingestion.GetCustomer(ingestion_pb2.GetCustomerRequest(customer_id="new-one"))
    assert got.customer.customer_id == "new-one" and got.customer.email == ""


async def test_get_unknown_customer_is_not_found(ingestion):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.GetCustomer(ingestion_pb2.GetCustomerRequest(customer_id="nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("customer", "mask", "path"),
    [
        (profile(customer_id="c1", email="not-an-address"), [], "customer.email"),
        (profile(customer_id="c1", phone="0151 123"), [], "customer.phone"),
        (profile(customer_id="c1", push_tokens=[""]), [], "customer.push_tokens[0]"),
        (profile(customer_id="c1", push_tokens=[f"t{i}" for i in range(21)]), [], "customer.push_tokens"),
        (profile(customer_id="c1", attributes={"bad-code": 1}), [], 'customer.attributes["bad-code"]'),
        (profile(customer_id="c1", email_consent=7), [], "customer.email_consent"),
        (profile(customer_id=""), [], "customer.customer_id"),
        (profile(customer_id="c1"), ["nickname"], "update_mask.paths[0]"),
    ],
)
async def test_bad_profiles_are_refused(ingestion, db, customer, mask, path):
    request = ingestion_pb2.UpsertCustomerRequest(
        customer=customer, update_mask=field_mask_pb2.FieldMask(paths=mask)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.UpsertCustomer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in violations(caught.value)
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def track_at(ingestion, customer_id: str, name: str, when: dt.datetime, event_id: str) -> None:  # type: ignore[no-untyped-def]
    request = customer_event(customer_id, name, event_id)
    request.occurred_at.FromDatetime(when)
    await ingestion.TrackCustomerEvent(request)


async def test_timeline_pages_newest_first_without_gaps_or_repeats(ingestion):
    base = dt.datetime(2026, 1, 1)
    for i in range(25):
        # Pairs share a timestamp, so the tie-break on event id is exercised.
        await track_at(ingestion, "c1", "A" if i % 2 else "B", base + dt.timedelta(hours=i // 2), f"e{i:02d}")
    await track_at(ingestion, "other", "A", base, "x")
    seen = []
    token = ""
    while True:
        page = await ingestion.ListTimeline(
            ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=4, page_token=token)
        )
        assert len(page.events) <= 4
        seen += [(e.occurred_at.ToDatetime(), e.event_id) for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 25
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 25


async def test_timeline_filters_by_name_and_time(ingestion):
    base = dt.datetime(2026, 1, 1)
    for i in range(10):
        await track_at(ingestion, "c1", "A" if i % 2 else "B", base + dt.timedelta(days=i), f"e{i}")
    page = await ingestion.ListTimeline(
        ingestion_pb2.ListTimelineRequest(
            customer_id="c1",
            event_names=["A"],
            occurred_after=_ts(base + dt.timedelta(days=3)),
            occurred_before=_ts(base + dt.timedelta(days=7)),
        )
    )
    assert [e.event_id for e in page.events] == ["e5", "e3"]


async def test_timeline_page_token_is_bound_to_its_filters(ingestion):
    for i in range(3):
        await track_at(ingestion, "c1", "A", dt.datetime(2026, 1, 1 + i), f"e{i}")
    page = await ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.ListTimeline(
            ingestion_pb2.ListTimelineRequest(
                customer_id="c1", page_size=1, page_token=page.next_page_token, event_names=["B"]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.ListTimeline(
            ingestion_pb2.ListTimelineRequest(customer_id="c1", page_token="garbage!")
        )
    assert "page_token" in violations(caught.value)


async def test_timeline_of_unknown_customer_is_not_found(ingestion):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id="nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@single_and_cluster
async def test_erasure_leaves_no_row_or_stream_entry_and_repeats_harmlessly(
    ingestion, ingestion_server, db, redis_client, stream_key
):
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(customer=profile(customer_id="gone", email="g@example.com"))
    )
    for i in range(5):
        await ingestion.TrackCustomerEvent(customer_event("gone", "A", f"g{i}"))
        await ingestion.TrackCustomerEvent(customer_event("stays", "A", f"s{i}"))
    await ingestion_server.relay.drain()
    for _ in range(100):
        if await redis_client.xlen(stream_key) == 10:
            break
        await asyncio.sleep(0.02)
    assert await redis_client.xlen(stream_key) == 10

    # A consumer dead-lettered one of the customer's entries: that copy goes too.
    dead_letters = stream.dead_letter_key(stream_key)
    await redis_client.xadd(dead_letters, {"event_id": "g0", "customer_id": "gone", "payload": b"x"})
    await redis_client.xadd(dead_letters, {"event_id": "s0", "customer_id": "stays", "payload": b"x"})

    reply = await ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="gone"))
    assert reply.customer_erased and reply.events_erased == 5 and reply.stream_entries_erased == 6
    dead = await redis_client.xrange(dead_letters)
    assert [fields[b"customer_id"] for _, fields in dead] == [b"stays"]

    for table in ("customers", "customer_events", "customer_event_stats"):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE customer_id = 'gone'") == 0
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0
    entries = await redis_client.xrange(stream_key)
    assert {fields[b"customer_id"] for _, fields in entries} == {b"stays"}
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE customer_id = 'stays'") == 5

    again = await ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="gone"))
    assert not again.customer_erased and again.events_erased == 0 and again.stream_entries_erased == 0


@single_and_cluster
async def test_erasure_scrubs_events_still_in_the_outbox(db_url, stream_key, redis_url, redis_client, db):
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings
    from tests.conftest import service_env

    settings = Settings.from_env(service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url))
    async with running(settings, relay=False) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            from eventline.ingestion.v1 import ingestion_pb2_grpc

            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            items = [
                ingestion_pb2.TrackEventsItem(customer_event=customer_event(c, "A", f"{c}{i}"))
                for i in range(3)
                for c in ("gone", "stays")
            ]
            await stub.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
            await stub.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="gone"))
            assert (
                await db.fetchval("SELECT count(*) FROM event_outbox WHERE 'gone' = ANY(customer_ids)") == 0
            )
            assert await served.relay.drain() == 3
    entries = await redis_client.xrange(stream_key)
    assert sorted(fields[b"event_id"] for _, fields in entries) == [b"stays0", b"stays1", b"stays2"]


def _ts(when: dt.datetime):  # type: ignore[no-untyped-def]
    from google.protobuf import timestamp_pb2

    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out
