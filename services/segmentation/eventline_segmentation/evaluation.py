"""Evaluating a checked tree for one customer from the row of ``compiler.match_query``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventline.common.v1 import common_pb2

from eventline_segmentation.compiler import MatchQuery
from eventline_segmentation.filters import BoolNode, CustomerNode, EventNode, Node
from eventline_segmentation.periods import Clock, compare
from eventline_shared import values


@dataclass
class Explanation:
    """Whether one node held for the customer and what it saw."""

    path: str
    held: bool
    count: int = 0
    last: dt.datetime | None = None
    first: dt.datetime | None = None
    days_since_last: int | None = None
    value: common_pb2.Value | None = None


def _event_held(
    node: EventNode, count: int, last: dt.datetime | None, first: dt.datetime | None, clock: Clock
) -> bool:
    if node.test == "count":
        return count >= node.low and (node.high is None or count <= node.high)
    if node.test == "days":
        return last is not None and compare(node.comparison, clock.days_since(last), node.days)
    assert node.period is not None
    seen = last if node.test == "last" else first
    return seen is not None and clock.resolve(node.period).holds(seen)


def explain(query: MatchQuery, row: Mapping[str, Any] | Any, clock: Clock) -> tuple[bool, list[Explanation]]:
    """The answer for the whole tree and one explanation per node, in pre-order."""
    by_node: dict[int, Explanation] = {}
    for i, node in enumerate(query.nodes):
        if isinstance(node, EventNode):
            count, last, first = int(row[f"n{i}"]), row[f"l{i}"], row[f"f{i}"]
            by_node[id(node)] = Explanation(
                node.path,
                _event_held(node, count, last, first, clock),
                count=count,
                last=last,
                first=first,
                days_since_last=clock.days_since(last) if last is not None else None,
            )
        elif isinstance(node, CustomerNode):
            seen = None
            if node.predicate is not None and row[f"v{i}"] is not None:
                seen = values.decode_values('{"v": ' + row[f"v{i}"] + "}")["v"]
            by_node[id(node)] = Explanation(node.path, bool(row[f"h{i}"]), value=seen)

    def held(node: Node) -> bool:
        if isinstance(node, BoolNode):
            results = [held(child) for child in node.children]
            answer = (
                not results[0] if node.op == "not" else all(results) if node.op == "all" else any(results)
            )
            by_node[id(node)] = Explanation(node.path, answer)
            return answer
        return by_node[id(node)].held

    matched = held(query.nodes[0])
    return matched, [by_node[id(node)] for node in query.nodes]
