"""A consumer batch's customers in groups whose real-time segments are disjoint (``Affected.parts``)."""

from __future__ import annotations

from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_segmentation.membership import Definition
from eventline_segmentation.realtime import Affected, compile_definition


def segment(segment_id: str, *names: str) -> Definition:
    """A real-time segment: at least one event of each of ``names``."""
    conditions = [pb.Filter(event=pb.EventCondition(name=name)) for name in names]
    flt = conditions[0] if len(conditions) == 1 else pb.Filter(all_of=pb.FilterList(filters=conditions))
    return Definition(segment_id, segment_id, flt.SerializeToString(), "", None, 1)


AFFECTED = Affected(
    [
        compile_definition(d)
        for d in (
            segment("a", "A"),
            segment("ab", "A", "B"),
            segment("c", "C"),
            segment("d", "D"),
            segment("d2", "D"),
        )
    ]
)


def test_customers_sharing_a_segment_directly_or_through_others_share_a_group() -> None:
    names = {"x": {"A"}, "y": {"browse"}, "z": {"C"}, "w": {"B"}, "v": {"D"}}
    # x (a, ab) and w (ab) share ab; z and v share nothing with anyone; y concerns no segment.
    assert AFFECTED.parts(names, 10) == [["x", "w"], ["z"], ["v"]]
    assert AFFECTED.parts({"y": {"browse"}}, 10) == []


def test_beyond_the_limit_the_costliest_groups_are_merged_and_the_cheapest_stay_apart() -> None:
    names = {"x": {"A"}, "z": {"C"}, "v": {"D"}, "u": {"D"}}
    # Costs (customers times segments): x 2, z 1, v and u 4.
    assert AFFECTED.parts(names, 2) == [["x", "v", "u"], ["z"]]
    assert AFFECTED.parts(names, 3) == [["x"], ["z"], ["v", "u"]]
    assert AFFECTED.parts(names, 1) == [["x", "z", "v", "u"]]
