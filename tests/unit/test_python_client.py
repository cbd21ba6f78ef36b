"""The Python client's parts that need no server: encoding, batching, values, errors."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from eventline_client import (
    AsyncClient,
    CustomerEvent,
    EventlineError,
    InvalidArgumentError,
    RetryPolicy,
    SystemEvent,
    from_context,
    from_status,
    service_config,
    to_value,
)
from eventline_client.client import _BULK_IMPORT_FIELD, _request_field
from eventline_client.events import relative_to_item

context_values = st.one_of(
    st.text(max_size=300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, max_value=10**12, min_value=-(10**12)),
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
    ),
)
contexts = st.dictionaries(
    st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True), context_values, max_size=8
)


@settings(max_examples=60, deadline=None)  # no timing: the machine may be busy
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), contexts), min_size=1, max_size=10))
def test_a_batch_is_exactly_the_request_the_generated_code_serializes(events: list[tuple[str, dict]]) -> None:  # type: ignore[type-arg]
    items = [
        CustomerEvent(customer, "viewed", context).item(f"e{i}")
        for i, (customer, context) in enumerate(events)
    ]
    encoded = b"".join(_request_field(item.SerializeToString()) for item in items)
    assert ingestion_pb2.TrackEventsRequest.FromString(encoded).events == items
    # Byte for byte too, with map entries in one order (their order is free otherwise).
    deterministic = b"".join(_request_field(item.SerializeToString(deterministic=True)) for item in items)
    request = ingestion_pb2.TrackEventsRequest(events=items)
    assert deterministic == request.SerializeToString(deterministic=True)


def test_the_bulk_import_hint_appended_to_a_batch_is_the_requests_field() -> None:
    items = [CustomerEvent("c1", "viewed").item("e1"), CustomerEvent("c2", "viewed").item("e2")]
    encoded = b"".join(_request_field(item.SerializeToString()) for item in items) + _BULK_IMPORT_FIELD
    request = ingestion_pb2.TrackEventsRequest.FromString(encoded)
    assert request.bulk_import and list(request.events) == items
    assert _BULK_IMPORT_FIELD == ingestion_pb2.TrackEventsRequest(bulk_import=True).SerializeToString()


def test_long_items_get_multi_byte_lengths() -> None:
    for size in (0, 127, 128, 16_383, 16_384, 2_100_000):
        item = CustomerEvent("c1", "viewed", {"text": "x" * size}).item("e1")
        request = ingestion_pb2.TrackEventsRequest(events=[item, item])
        assert _request_field(item.SerializeToString()) * 2 == request.SerializeToString()


@settings(deadline=None)
@given(contexts)
def test_context_values_round_trip(context: dict) -> None:  # type: ignore[type-arg]
    event = CustomerEvent("c1", "viewed", context).request("e1")
    assert from_context(event.context) == context


def test_values_keep_their_kind_and_refuse_what_would_be_lost() -> None:
    assert to_value(True).WhichOneof("kind") == "boolean_value"
    assert to_value(0.1).decimal_value == "0.1"
    assert to_value(decimal.Decimal("59.90")).decimal_value == "59.90"
    assert to_value(common_pb2.Value(string_value="x")).string_value == "x"
    with pytest.raises(ValueError, match="64-bit"):
        to_value(2**63)
    with pytest.raises(ValueError, match="number"):
        to_value(float("nan"))
    with pytest.raises(ValueError, match="naive"):
        to_value(dt.datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        to_value([1])  # type: ignore[arg-type]
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.UTC)
    timestamp = to_value(before_epoch).timestamp_value
    assert (timestamp.seconds, timestamp.nanos) == (-1, 500_000_000)
    system = SystemEvent("back_in_stock", {"sku": "A"}, before_epoch).item("s1")
    assert system.WhichOneof("event") == "system_event" and system.system_event.occurred_at == timestamp


async def test_batches_stay_within_the_count_and_byte_limits() -> None:
    async with AsyncClient("127.0.0.1:1", max_batch_events=3, max_batch_bytes=100) as client:
        items = [b"x" * size for size in (10, 10, 10, 10, 60, 50, 120, 1)]
        batches = list(client._batches(items))
    assert [(start, [len(item) for item in batch]) for start, batch in batches] == [
        (0, [10, 10, 10]),
        (3, [10, 60]),
        (5, [50]),
        (6, [120]),  # alone: larger than the limit, the server decides
        (7, [1]),
    ]


def test_batch_item_errors_become_typed_errors_relative_to_the_item() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="events[7].customer_event.name", description="bad"
            ),
            error_details_pb2.BadRequest.FieldViolation(
                field='events[7].system_event.context["a-b"]', description="not a code"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="events[7]", description="no event"),
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad)
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="invalid", details=[detail]
    )
    error = relative_to_item(from_status(status))
    assert isinstance(error, InvalidArgumentError) and not error.retryable
    assert error.fields == {"name": "bad", 'context["a-b"]': "not a code", "events[7]": "no event"}
    unknown = from_status(status_pb2.Status(code=grpc.StatusCode.DATA_LOSS.value[0], message="lost"))
    assert type(unknown) is EventlineError and unknown.code == grpc.StatusCode.DATA_LOSS


def test_the_service_config_retries_ingestion_and_balances_round_robin() -> None:
    config = json.loads(json.dumps(service_config()))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    [method] = config["methodConfig"]
    assert method["name"] == [{"service": "eventline.ingestion.v1.IngestionService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "methodConfig" not in service_config(channel_retries=0)


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    assert all(0 <= policy.backoff_s(0) <= 0.1 for _ in range(100))
    assert all(0 <= policy.backoff_s(10) <= 1.0 for _ in range(100))
    assert max(policy.backoff_s(10) for _ in range(200)) > 0.5
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_a_naive_datetime_or_an_oversized_integer_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="naive"):
        CustomerEvent("c1", "viewed", occurred_at=dt.datetime(2024, 1, 1)).item("e1")
    with pytest.raises(ValueError, match="64-bit"):
        CustomerEvent("c1", "viewed", {"n": 2**63}).item("e1")
