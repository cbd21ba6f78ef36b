"""Evaluating checked filters in Python (see segmentation.proto for the semantics).

Two users: a campaign tests its trigger's predicates on each event's context
(``predicate_holds``), and MatchCustomer answers and explains a tree from what
segmentation's query saw of one customer (``event_held``, ``explain_tree``).
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates.filters import BoolNode, EventNode, Node, Operand, Predicate
from eventline_predicates.periods import Clock, compare
from eventline_shared.values import python_value

# --- Predicates on a map of values (an event's context) ---


_KINDS = {
    "string_value": "string",
    "integer_value": "number",
    "decimal_value": "number",
    "boolean_value": "boolean",
    "timestamp_value": "timestamp",
}


def comparable(value: common_pb2.Value) -> tuple[str, Any]:
    """A value as (kind, python value), the kinds of ``Operand``: integers and decimals are both numbers."""
    kind = _KINDS.get(value.WhichOneof("kind") or "", "")
    plain = python_value(value)
    return kind, Decimal(plain) if kind == "number" else plain


def _equal(kind: str, plain: Any, operand: Operand) -> bool:
    return kind == operand.kind and bool(plain == operand.python)


_ORDERED: dict[int, Callable[[Any, Any], Any]] = {
    pb.OPERATOR_GREATER: operator.gt,
    pb.OPERATOR_GREATER_OR_EQUAL: operator.ge,
    pb.OPERATOR_LESS: operator.lt,
    pb.OPERATOR_LESS_OR_EQUAL: operator.le,
}


def predicate_holds(predicate: Predicate, fields: Mapping[str, common_pb2.Value]) -> bool:
    """Whether a checked predicate holds on ``fields``: a missing field holds only NOT_EXISTS;
    values of different kinds are never equal and never ordered."""
    op = predicate.operator
    present = predicate.field in fields
    if op == pb.OPERATOR_NOT_EXISTS:
        return not present
    if not present:
        return False
    if op == pb.OPERATOR_EXISTS:
        return True
    kind, plain = comparable(fields[predicate.field])
    if op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        found = any(_equal(kind, plain, operand) for operand in predicate.operands)
        return found if op == pb.OPERATOR_IN else not found
    operand = predicate.operands[0]
    if op == pb.OPERATOR_EQUALS:
        return _equal(kind, plain, operand)
    if op == pb.OPERATOR_NOT_EQUALS:
        return not _equal(kind, plain, operand)
    if op in (pb.OPERATOR_CONTAINS, pb.OPERATOR_STARTS_WITH):
        if kind != "string" or operand.kind != "string":
            return False
        if op == pb.OPERATOR_CONTAINS:
            return bool(operand.python in plain)
        return bool(plain.startswith(operand.python))
    if kind != operand.kind or kind not in ("number", "timestamp"):
        return False
    return bool(_ORDERED[op](plain, operand.python))


# --- A tree, from what was seen of one customer ---


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


def event_held(
    node: EventNode, count: int, last: dt.datetime | None, first: dt.datetime | None, clock: Clock
) -> bool:
    """Whether an event condition holds, given the count of matching events (in its
    period, for a count) and the last and first of them."""
    if node.test == "count":
        return count >= node.low and (node.high is None or count <= node.high)
    if node.test == "days":
        return last is not None and compare(node.comparison, clock.days_since(last), node.days)
    assert node.period is not None
    seen = last if node.test == "last" else first
    return seen is not None and clock.resolve(node.period).holds(seen)


def explain_tree(
    nodes: Sequence[Node], leaf: Callable[[int, Node], Explanation]
) -> tuple[bool, list[Explanation]]:
    """The answer for a tree and one explanation per node, in pre-order.

    ``nodes`` is the tree in pre-order (``filters.walk``); ``leaf(i, node)`` explains
    the event or customer condition ``nodes[i]``.
    """
    by_node: dict[int, Explanation] = {
        id(node): leaf(i, node) for i, node in enumerate(nodes) if not isinstance(node, BoolNode)
    }

    def held(node: Node) -> bool:
        if isinstance(node, BoolNode):
            answer = node.combine([held(child) for child in node.children])  # each child explained
            by_node[id(node)] = Explanation(node.path, answer)
            return answer
        return by_node[id(node)].held

    matched = held(nodes[0])
    return matched, [by_node[id(node)] for node in nodes]
