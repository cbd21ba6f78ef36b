"""Every bad-input rule of the ingestion API: a clear error with the field path, nothing stored."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from tests.support import customer_event, violations


async def refused(call, request) -> tuple[grpc.StatusCode, dict[str, str]]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    return caught.value.code(), violations(caught.value)


async def nothing_stored(db) -> None:  # type: ignore[no-untyped-def]
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 0
    assert await db.fetchval("SELECT count(*) FROM system_events") == 0
    assert await db.fetchval("SELECT count(*) FROM customers") == 0
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


@pytest.mark.parametrize(
    "name",
    ["", "item-id", "1abc", "a b", "a" * 65, "naïve", "x\x00y", "semi;colon", "quote'd", "trailing\n"],
)
async def test_event_names_follow_the_grammar(ingestion, db, name):
    code, paths = await refused(ingestion.TrackCustomerEvent, customer_event("c1", name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in paths
    await nothing_stored(db)


@pytest.mark.parametrize("code_name", ["item-id", "", "9lives", "a" * 65, "dot.ted"])
async def test_field_codes_follow_the_grammar(ingestion, db, code_name):
    request = customer_event("c1", "A")
    request.context[code_name].string_value = "x"
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(p.startswith("context[") for p in paths), paths
    await nothing_stored(db)


async def test_the_path_names_the_offending_key(ingestion):
    request = customer_event("c1", "A", ok=1)
    request.context["item-id"].integer_value = 1
    _, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert list(paths) == ['context["item-id"]']


async def test_longest_valid_names_are_accepted(ingestion):
    name = "_" + "a" * 63
    request = customer_event("c" * 128, name, "e" * 128)
    request.context[name].string_value = "x" * 4096
    reply = await ingestion.TrackCustomerEvent(request)
    assert reply.event.name == name


async def test_more_than_100_context_keys(ingestion, db):
    request = customer_event("c1", "A", **{f"k{i}": i for i in range(101)})
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "context" in paths
    await nothing_stored(db)
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", **{f"k{i}": i for i in range(100)}))


async def test_string_longer_than_limit(ingestion, db):
    request = customer_event("c1", "A", s="x" * 4097)
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and 'context["s"]' in paths
    await nothing_stored(db)


async def test_context_over_32_kib_in_all(ingestion, db):
    request = customer_event("c1", "A", **{f"k{i}": "x" * 4000 for i in range(9)})
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "context" in paths
    assert "32768" in paths["context"]
    await nothing_stored(db)


async def test_nul_in_string_value(ingestion, db):
    code, paths = await refused(ingestion.TrackCustomerEvent, customer_event("c1", "A", s="a\x00b"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and 'context["s"]' in paths
    await nothing_stored(db)


@pytest.mark.parametrize("decimal", ["", "abc", "NaN", "Infinity", "1" * 39, "1e999", " 1", "1_0"])
async def test_bad_decimals(ingestion, db, decimal):
    request = customer_event("c1", "A")
    request.context["d"].decimal_value = decimal
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and 'context["d"]' in paths
    await nothing_stored(db)


async def test_value_without_kind(ingestion, db):
    request = customer_event("c1", "A")
    request.context["empty"].CopyFrom(common_pb2.Value())
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and 'context["empty"]' in paths


async def test_occurred_at_more_than_a_day_ahead(ingestion, db):
    request = customer_event("c1", "A")
    request.occurred_at.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=25))
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "occurred_at" in paths
    await nothing_stored(db)
    request.occurred_at.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=23))
    await ingestion.TrackCustomerEvent(request)


async def test_occurred_at_before_1970(ingestion, db):
    request = customer_event("c1", "A")
    request.occurred_at.FromDatetime(dt.datetime(1969, 12, 31))
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "occurred_at" in paths


@pytest.mark.parametrize("customer_id", ["", "has space", "x" * 129, "a\x00", "é"])
async def test_bad_customer_ids(ingestion, db, customer_id):
    code, paths = await refused(ingestion.TrackCustomerEvent, customer_event(customer_id, "A"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "customer_id" in paths
    await nothing_stored(db)


@pytest.mark.parametrize("event_id", ["", "x" * 129, "with space", "a/b"])
async def test_bad_event_ids(ingestion, db, event_id):
    request = customer_event("c1", "A")
    request.event_id = event_id
    code, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "event_id" in paths
    await nothing_stored(db)


async def test_all_violations_are_reported_at_once(ingestion):
    request = ingestion_pb2.TrackCustomerEventRequest(customer_id="", name="bad-name", event_id="")
    _, paths = await refused(ingestion.TrackCustomerEvent, request)
    assert {"customer_id", "name", "event_id"} <= set(paths)


async def test_system_event_rules(ingestion, db):
    request = ingestion_pb2.TrackSystemEventRequest(event_id="s1", name="in-stock")
    code, paths = await refused(ingestion.TrackSystemEvent, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "name" in paths
    await nothing_stored(db)


async def test_empty_batch(ingestion):
    code, paths = await refused(ingestion.TrackEvents, ingestion_pb2.TrackEventsRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "events" in paths


async def test_batch_item_error_carries_bad_request_detail(ingestion, db):
    request = customer_event("c1", "A")
    request.context["bad-code"].integer_value = 1
    reply = await ingestion.TrackEvents(
        ingestion_pb2.TrackEventsRequest(events=[ingestion_pb2.TrackEventsItem(customer_event=request)])
    )
    from google.rpc import error_details_pb2

    bad = error_details_pb2.BadRequest()
    assert reply.results[0].error.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ['events[0].customer_event.context["bad-code"]']
    await nothing_stored(db)
