"""Evaluating a checked tree for one customer from the row of ``compiler.match_query``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventline_predicates.evaluation import Explanation, event_held, explain_tree
from eventline_predicates.filters import CustomerNode, EventNode, Node
from eventline_predicates.periods import Clock
from eventline_segmentation.compiler import MatchQuery
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
