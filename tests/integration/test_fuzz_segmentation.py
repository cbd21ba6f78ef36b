"""Scenario 16 for SegmentationService: fuzzed requests to every RPC get clean errors, never INTERNAL.

Hypothesis builds structurally valid but hostile messages (filter trees of random shape and depth,
unknown enum numbers, hostile field codes and values, garbage paging, bad time zones) and sends them to
every RPC; a refused write must leave the ``segments`` table as it was.
"""

from __future__ import annotations

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from google.protobuf import field_mask_pb2, timestamp_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import violations

CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND}
WRITE_CLEAN = CLEAN | {grpc.StatusCode.ALREADY_EXISTS}

HOSTILE = [
    "item-id",
    "",
    "x\x00",
    "a'b",
    'a"b',
    "a -- b",
    "a" * 300,
    "ünïcödé",
    "$.x",
    "_",
    "\n",
    "A",
    "price",
]
codes = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
enum_numbers = st.integers(-3, 20)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 400))
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(st.integers(-(2**40), 2**40), st.integers(-62135596800, 253402300799)),
    nanos=st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)),
)
decimals = st.one_of(
    st.sampled_from(["NaN", "inf", "-Infinity", "1e999999", "1" * 200, "0.5", "", "1.2.3", "\x00"]),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.text(max_size=20),
)
values = st.one_of(
    st.builds(common_pb2.Value, string_value=st.text(max_size=50)),
    st.builds(common_pb2.Value, integer_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(common_pb2.Value, decimal_value=decimals),
    st.builds(common_pb2.Value, boolean_value=st.booleans()),
    st.builds(common_pb2.Value, timestamp_value=timestamps),
    st.just(common_pb2.Value()),
)
references = st.one_of(st.sampled_from(["$x", "$", "$$", "$item-id", "x", "$\x00"]), st.text(max_size=20))
operands = st.one_of(
    st.builds(pb.Operand, literal=values),
    st.builds(pb.Operand, reference=references),
    st.just(pb.Operand()),
)
predicates = st.builds(
    pb.Predicate,
    field=codes,
    operator=enum_numbers,
    value=st.one_of(st.none(), operands),
    values=st.lists(operands, max_size=4),
)
periods = st.one_of(
    st.just(pb.Period()),
    st.builds(pb.Period, absolute=st.builds(pb.TimeRange, start=timestamps, end=timestamps)),
    st.builds(pb.Period, last=st.builds(pb.RecentPeriod, amount=int64s, unit=enum_numbers)),
    st.builds(pb.Period, days_ago=st.builds(pb.DaysAgoPeriod, min_days_ago=int64s, max_days_ago=int64s)),
)
count_tests = st.one_of(
    st.builds(pb.CountTest, period=periods, at_least=int64s),
    st.builds(pb.CountTest, period=periods, at_most=int64s),
    st.builds(pb.CountTest, period=periods, exactly=int64s),
    st.builds(pb.CountTest, period=periods, between=st.builds(pb.CountRange, min=int64s, max=int64s)),
    st.builds(pb.CountTest),
)
event_conditions = st.one_of(
    st.builds(pb.EventCondition, name=codes, predicates=st.lists(predicates, max_size=3)),
    st.builds(pb.EventCondition, name=codes, predicates=st.lists(predicates, max_size=2), count=count_tests),
    st.builds(pb.EventCondition, name=codes, last_occurred=periods),
    st.builds(pb.EventCondition, name=codes, first_occurred=periods),
    st.builds(
        pb.EventCondition,
        name=codes,
        days_since_last=st.builds(pb.DaysSinceTest, comparison=enum_numbers, days=int64s),
    ),
)
customer_conditions = st.one_of(
    st.builds(pb.CustomerCondition, has_address=enum_numbers),
    st.builds(pb.CustomerCondition, consent_granted=enum_numbers),
    st.builds(pb.CustomerCondition, attribute=predicates),
    st.just(pb.CustomerCondition()),
)
leaves = st.one_of(
    st.builds(pb.Filter, event=event_conditions),
    st.builds(pb.Filter, customer=customer_conditions),
    st.just(pb.Filter()),
)


def _deep(depth: int) -> pb.Filter:
    node = pb.Filter(event=pb.EventCondition(name="x"))
    for _ in range(depth):
        node = pb.Filter(negation=node)
    return node


filters = st.one_of(
    st.recursive(
        leaves,
        lambda children: st.one_of(
            st.builds(pb.Filter, all_of=st.builds(pb.FilterList, filters=st.lists(children, max_size=4))),
            st.builds(pb.Filter, any_of=st.builds(pb.FilterList, filters=st.lists(children, max_size=4))),
            st.builds(pb.Filter, negation=children),
        ),
        max_leaves=12,
    ),
    st.integers(20, 90).map(_deep),
    st.integers(100, 600).map(
        lambda n: pb.Filter(any_of=pb.FilterList(filters=[pb.Filter(event=pb.EventCondition(name="e"))] * n))
    ),
)
bindings = st.dictionaries(st.one_of(references, codes), values, max_size=4)
time_zones = st.one_of(
    st.sampled_from(
        ["", "UTC", "Europe/Paris", "Mars/Olympus", "../etc/passwd", "+05:00", "x\x00", "a" * 300]
    ),
    st.text(max_size=20),
)
segment_ids = st.one_of(st.sampled_from(["seg-1", "seg_1", ""]), codes)
page_tokens = st.one_of(
    st.sampled_from(["", "garbage", "eyJ4IjoxfQ==", "\x00", "a" * 2000]), st.text(max_size=30)
)
page_sizes = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 1001))


@st.composite
def targeted(draw, factory):  # type: ignore[no-untyped-def]
    message = factory(bindings=draw(bindings), time_zone=draw(time_zones))
    if draw(st.booleans()):
        message.filter.CopyFrom(draw(filters))
    else:
        message.segment_id = draw(segment_ids)
    if draw(st.booleans()):
        message.now.CopyFrom(draw(timestamps))
    return message


plausible_predicates = st.builds(
    pb.Predicate,
    field=st.sampled_from(["price", "item_id", "plan"]),
    operator=st.integers(1, 12),
    value=st.one_of(st.none(), operands),
    values=st.lists(operands, max_size=3),
)
plausible_filters = st.builds(
    pb.Filter,
    event=st.builds(
        pb.EventCondition,
        name=st.sampled_from(["Viewed", "Purchased"]),
        predicates=st.lists(plausible_predicates, max_size=2),
    ),
)
plausible_segments = st.builds(
    pb.Segment,
    display_name=st.text(min_size=1, max_size=30),
    description=st.text(max_size=30),
    filter=st.one_of(st.just(pb.Filter(event=pb.EventCondition(name="Viewed"))), plausible_filters),
)
hostile_segments = st.builds(
    pb.Segment,
    segment_id=segment_ids,
    display_name=st.one_of(st.text(max_size=30), st.just("d" * 5000)),
    description=st.one_of(st.text(max_size=30), st.just("d" * 100_000)),
    filter=st.one_of(st.none(), filters),
)
segments = st.one_of(hostile_segments, plausible_segments)


async def _call(call, message, allowed=CLEAN):  # type: ignore[no-untyped-def]
    try:
        return await call(message)
    except grpc.aio.AioRpcError as error:
        assert error.code() in allowed, (call, error.code(), error.details(), message)
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=targeted(pb.CountCustomersRequest),
    listing=targeted(pb.ListCustomersRequest),
    streaming=targeted(pb.StreamCustomersRequest),
    match=targeted(pb.MatchCustomerRequest),
    page_size=page_sizes,
    page_token=page_tokens,
    customer_id=codes,
)
async def test_fuzzed_queries_get_clean_errors(
    segmentation, count, listing, streaming, match, page_size, page_token, customer_id
):
    """Every query RPC answers or refuses cleanly, whatever the filter, bindings, time zone or paging."""
    await _call(segmentation.CountCustomers, count)
    listing.page_size = page_size
    listing.page_token = page_token
    await _call(segmentation.ListCustomers, listing)
    streaming.chunk_size = page_size
    streaming.after_customer_id = customer_id
    try:
        async for _ in segmentation.StreamCustomers(streaming):
            pass
    except grpc.aio.AioRpcError as error:
        assert error.code() in CLEAN, (error.code(), error.details(), streaming)
    match.customer_id = customer_id
    await _call(segmentation.MatchCustomer, match)
    reply = await _call(
        segmentation.ValidateFilter, pb.ValidateFilterRequest(filter=count.filter, bindings=count.bindings)
    )
    if reply is not None:
        assert reply.valid == (not reply.violations)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segment=segments,
    segment_id=st.one_of(st.just(""), segment_ids),
    update=segments,
    mask=st.lists(
        st.one_of(st.sampled_from(["filter", "display_name", "description", "segment_id"]), codes), max_size=3
    ),
    page_size=page_sizes,
    page_token=page_tokens,
    size_bindings=bindings,
    time_zone=time_zones,
)
async def test_fuzzed_segment_writes_are_clean_and_all_or_nothing(  # type: ignore[no-untyped-def]
    segmentation, db, segment, segment_id, update, mask, page_size, page_token, size_bindings, time_zone
):
    """Create/Update/Delete refuse cleanly and a refused write changes no row of ``segments``."""
    before = await db.fetch("SELECT * FROM segments ORDER BY segment_id")
    created = await _call(
        segmentation.CreateSegment,
        pb.CreateSegmentRequest(segment=segment, segment_id=segment_id),
        WRITE_CLEAN,
    )
    event("created" if created is not None else "create refused")
    if created is None:
        assert await db.fetch("SELECT * FROM segments ORDER BY segment_id") == before
    target = created.segment.segment_id if created is not None else segment_id
    await _call(segmentation.GetSegment, pb.GetSegmentRequest(segment_id=target))
    update.segment_id = target
    before = await db.fetch("SELECT * FROM segments ORDER BY segment_id")
    updated = await _call(
        segmentation.UpdateSegment,
        pb.UpdateSegmentRequest(segment=update, update_mask=field_mask_pb2.FieldMask(paths=mask)),
        WRITE_CLEAN,
    )
    event("updated" if updated is not None else "update refused")
    if updated is None:
        assert await db.fetch("SELECT * FROM segments ORDER BY segment_id") == before
    await _call(segmentation.ListSegments, pb.ListSegmentsRequest(page_size=page_size, page_token=page_token))
    await _call(
        segmentation.GetSegmentSize,
        pb.GetSegmentSizeRequest(segment_id=target, bindings=size_bindings, time_zone=time_zone),
    )
    before = await db.fetchval("SELECT count(*) FROM segments")
    deleted = await _call(segmentation.DeleteSegment, pb.DeleteSegmentRequest(segment_id=target))
    if deleted is None:
        assert await db.fetchval("SELECT count(*) FROM segments") == before


async def test_filter_nested_past_protobuf_depth_is_invalid_argument(segmentation_server):
    """A filter nested 150 deep cannot be decoded by the server (protobuf's depth limit is
    100); it gets INVALID_ARGUMENT, not gRPC's UNKNOWN. Built in place and sent as bytes:
    Python's protobuf cannot copy such a message either."""
    request = pb.CountCustomersRequest()
    node = request.filter
    for _ in range(150):
        node = node.negation
    node.event.name = "A"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{segmentation_server.port}") as channel:
        call = channel.unary_unary("/eventline.segmentation.v1.SegmentationService/CountCustomers")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


async def test_segment_id_with_nul_is_invalid_argument_not_internal(segmentation):
    """Regression: a NUL in a looked-up segment id reached PostgreSQL and came back INTERNAL.

    It was NOT_FOUND for a while; an id that breaks the segment id grammar can name no segment
    (CreateSegment checks the same grammar), so it is bad input, with its path (issue 10, item 12)."""
    for call, message in [
        (segmentation.GetSegment, pb.GetSegmentRequest(segment_id="x\x00")),
        (segmentation.CountCustomers, pb.CountCustomersRequest(segment_id="x\x00")),
        (segmentation.DeleteSegment, pb.DeleteSegmentRequest(segment_id="x\x00")),
        (segmentation.GetSegmentSize, pb.GetSegmentSizeRequest(segment_id="x\x00")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(message)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, caught.value.details())
        assert "segment_id" in violations(caught.value)
