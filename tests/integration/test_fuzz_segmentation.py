"""Scenario 16 for SegmentationService: fuzzed requests to every RPC get clean errors, never INTERNAL.

Hypothesis builds structurally valid but hostile messages (filter trees of random shape and depth,
unknown enum numbers, hostile field codes and values, garbage paging, bad time zones) and sends them to
every RPC; a refused write must leave the ``segments`` table as it was.
"""

from __future__ import annotations

import grpc
import pytest
from eventline.segmentation.v1 import segmentation_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import (
    CLEAN,
    all_or_nothing,
    answer_or_refuse,
    bindings,
    codes,
    create_get_update,
    filters,
    fuzzed,
    page_sizes,
    page_tokens,
    plausible_filters,
    timestamps,
)
from tests.support import violations

WRITE_CLEAN = CLEAN | {grpc.StatusCode.ALREADY_EXISTS}

time_zones = st.one_of(
    st.sampled_from(
        ["", "UTC", "Europe/Paris", "Mars/Olympus", "../etc/passwd", "+05:00", "x\x00", "a" * 300]
    ),
    st.text(max_size=20),
)
segment_ids = st.one_of(st.sampled_from(["seg-1", "seg_1", ""]), codes)


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


@fuzzed
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
    await answer_or_refuse(segmentation.CountCustomers, count)
    listing.page_size = page_size
    listing.page_token = page_token
    await answer_or_refuse(segmentation.ListCustomers, listing)
    streaming.chunk_size = page_size
    streaming.after_customer_id = customer_id
    try:
        async for _ in segmentation.StreamCustomers(streaming):
            pass
    except grpc.aio.AioRpcError as error:
        assert error.code() in CLEAN, (error.code(), error.details(), streaming)
    match.customer_id = customer_id
    await answer_or_refuse(segmentation.MatchCustomer, match)
    reply = await answer_or_refuse(
        segmentation.ValidateFilter, pb.ValidateFilterRequest(filter=count.filter, bindings=count.bindings)
    )
    if reply is not None:
        assert reply.valid == (not reply.violations)


@fuzzed
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

    async def rows():  # type: ignore[no-untyped-def]
        return await db.fetch("SELECT * FROM segments ORDER BY segment_id")

    target = await create_get_update(
        segmentation, pb, "Segment", segment, segment_id, update, mask, rows, WRITE_CLEAN
    )
    await answer_or_refuse(
        segmentation.ListSegments, pb.ListSegmentsRequest(page_size=page_size, page_token=page_token)
    )
    await answer_or_refuse(
        segmentation.GetSegmentSize,
        pb.GetSegmentSizeRequest(segment_id=target, bindings=size_bindings, time_zone=time_zone),
    )

    async def count():  # type: ignore[no-untyped-def]
        return await db.fetchval("SELECT count(*) FROM segments")

    await all_or_nothing(segmentation.DeleteSegment, pb.DeleteSegmentRequest(segment_id=target), count, CLEAN)


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
