"""Issue 10 item 4: a huge filter is refused by its size before decoding, and checking a filter
stops at the first limit crossed; every RPC's request size fits what it needs."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_segmentation.service import FILTER_REQUEST_BYTES, SMALL_REQUEST_BYTES
from tests.support import violations

LEAF = pb.Filter(event=pb.EventCondition(name="A"))


def tree(levels: int, width: int = 100) -> pb.Filter:
    node = LEAF
    for _ in range(levels):
        node = pb.Filter(all_of=pb.FilterList(filters=[node] * width))
    return node


async def refused(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value
    return caught.value


async def test_the_million_node_filter_is_refused_by_its_size_before_decoding(segmentation: Any) -> None:
    """The attack: a 7 MB filter of 1,010,101 nodes got "at most 200 nodes" after 4.8 s."""
    huge = tree(3)
    assert huge.ByteSize() > 7_000_000
    for call in (
        segmentation.CountCustomers(pb.CountCustomersRequest(filter=huge)),
        segmentation.ValidateFilter(pb.ValidateFilterRequest(filter=huge)),
        segmentation.CreateSegment(pb.CreateSegmentRequest(segment=pb.Segment(display_name="x", filter=huge))),
    ):
        error = await refused(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert f"at most {FILTER_REQUEST_BYTES:,}" in violations(error)[""]


async def test_a_filter_within_the_size_is_checked_only_up_to_the_first_limit(segmentation: Any) -> None:
    wide = tree(2)  # 10,101 nodes in about 70 KB
    assert wide.ByteSize() < FILTER_REQUEST_BYTES
    error = await refused(
        segmentation.CountCustomers(pb.CountCustomersRequest(filter=wide)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations(error) == {"filter.all_of.filters[1].all_of.filters[97]": "a filter has at most 200 nodes"}
    many = pb.Predicate(
        field="x",
        operator=pb.OPERATOR_IN,
        values=[pb.Operand(literal=common_pb2.Value(integer_value=i)) for i in range(1000)],
    )
    operands = pb.Filter(event=pb.EventCondition(name="A", predicates=[many] * 6))
    reply = await segmentation.ValidateFilter(pb.ValidateFilterRequest(filter=operands))
    assert [(v.field, v.description) for v in reply.violations] == [
        ("filter.event.predicates[5].values[0]", "a filter has at most 5000 operands in all")
    ]


async def test_rpcs_without_a_filter_take_small_requests_only(segmentation: Any) -> None:
    long_id = "s" * (SMALL_REQUEST_BYTES + 1)
    for call in (
        segmentation.GetSegment(pb.GetSegmentRequest(segment_id=long_id)),
        segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=long_id)),
        segmentation.ListSegments(pb.ListSegmentsRequest(page_token=long_id)),
    ):
        await refused(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Below the limit, a bad value is still a bad value.
    await refused(
        segmentation.ListSegments(pb.ListSegmentsRequest(page_token="x" * 6000)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
