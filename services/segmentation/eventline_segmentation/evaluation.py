"""Evaluating a checked tree for one customer from the row of ``compiler.match_query`` (with its
explanation: MatchCustomer) or of ``compiler.match_many_query`` (the answer alone: real-time segments)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eventline_predicates.evaluation import Explanation, event_held, explain_tree
from eventline_predicates.filters import BoolNode, CustomerNode, EventNode, Node
from eventline_predicates.periods import Clock
from eventline_segmentation.compiler import MatchQuery, decisive_column
from eventline_shared import values


def explain(query: MatchQuery, row: Mapping[str, Any] | Any, clock: Clock) -> tuple[bool, list[Explanation]]:
    """The answer for the whole tree and one explanation per node, in pre-order."""

    def leaf(i: int, node: Node) -> Explanation:
        if isinstance(node, EventNode):
            count, last, first = int(row[f"n{i}"]), row[f"l{i}"], row[f"f{i}"]
            return Explanation(
                node.path,
                event_held(node, count, last, first, clock),
                count=count,
                last=last,
                first=first,
                days_since_last=clock.days_since(last) if last is not None else None,
            )
        assert isinstance(node, CustomerNode)
        seen = None
        if node.predicate is not None and row[f"v{i}"] is not None:
            seen = values.decode_values('{"v": ' + row[f"v{i}"] + "}")["v"]
        return Explanation(node.path, bool(row[f"h{i}"]), value=seen)

    return explain_tree(query.nodes, leaf)


class Decision:
    """``explain``'s answers without its explanations, for the rows of one
    ``compiler.match_many_query`` (only each leaf's ``decisive_column``): whether each node of
    the tree held, read by position in the row. Built once per query, used for each of its rows
    (a consumer batch evaluates thousands: the explanations were most of the evaluation's CPU)."""

    def __init__(self, query: MatchQuery, listed: Mapping[int, str] | None = None) -> None:
        """``listed``: count conditions (by node index) whose column of that name lists their
        matching events in the period, comma-separated, up to as many as decide the count (the
        bound plus one, or the lower bound without upper: ``match_many_query``'s ``counted``)."""
        self.nodes = query.nodes
        position = {name: k for k, name in enumerate(query.names)}
        index = {id(node): i for i, node in enumerate(self.nodes)}
        listed = listed or {}
        # Per leaf: its index, node, column and how the column reads (``_kind``), worked out once.
        self._leaves: list[tuple[int, Any, int, int]] = [
            (i, node, position[listed.get(i) or decisive_column(node, i)], _kind(node, i in listed))
            for i, node in enumerate(self.nodes)
            if isinstance(node, EventNode | CustomerNode)
        ]
        # Children come after their parent in pre-order: groups are combined last to first.
        self._groups = [
            (i, node, [index[id(child)] for child in node.children])
            for i, node in reversed(list(enumerate(self.nodes)))
            if isinstance(node, BoolNode)
        ]

    def held(self, row: Sequence[Any], clock: Clock) -> list[bool]:
        """Whether each node held (in pre-order: the first is the answer), as ``explain`` says."""
        held = [False] * len(self.nodes)
        for i, node, column, kind in self._leaves:
            value = row[column]
            if kind == _HELD:
                held[i] = bool(value)
            elif kind == _LISTED:
                held[i] = event_held(node, value.count(",") + 1 if value else 0, None, None, clock)
            elif kind == _COUNT:
                held[i] = event_held(node, int(value), None, None, clock)
            elif kind == _FIRST:
                held[i] = event_held(node, 0, None, value, clock)
            else:
                held[i] = event_held(node, 0, value, None, clock)
        for i, group, children in self._groups:
            held[i] = group.combine(held[child] for child in children)
        return held


_HELD, _LISTED, _COUNT, _FIRST, _LAST = range(5)
"""How ``Decision.held`` reads a leaf's column: whether a customer condition held, a list of events
to count, a count, the first occurrence, the last (days since and "last occurred")."""


def _kind(node: EventNode | CustomerNode, listed: bool) -> int:
    if isinstance(node, CustomerNode):
        return _HELD
    if listed:
        return _LISTED
    return {"count": _COUNT, "first": _FIRST}.get(node.test, _LAST)
