"""Compiling a checked filter tree to SQL.

Every name, field code and value is a bind parameter: the SQL text depends
only on the shape of the tree. Two forms are produced:

* a boolean expression over ``customers c`` for counting, listing and
  streaming. An event condition becomes ``c.customer_id IN (...)`` (or
  ``NOT IN`` when it holds for customers with no events) over a subquery
  that reads ``customer_event_stats`` when the stats answer the question
  exactly (no context predicates and no period for counts), and otherwise
  the ``(name, occurred_at, customer_id)`` index of ``customer_events``;
* for one customer, a single query that aggregates that customer's events
  once (one count/min/max per event condition) and evaluates customer
  conditions, so that the tree can be evaluated and explained in Python.

Typed comparisons follow the storage form of eventline_shared.values: a
string is a JSON string, numbers are JSON numbers (jsonb compares them
numerically), timestamps are ``{"ts": <fixed-width UTC text>}`` objects whose
text orders like the instant. Every predicate is wrapped in COALESCE so that
a missing field gives false, never NULL, and NOT stays exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_segmentation.filters import (
    BoolNode,
    CustomerNode,
    EventNode,
    Node,
    Predicate,
    stored_timestamp_text,
    walk,
)
from eventline_segmentation.periods import Clock, Interval

_ORDER_SQL: dict[int, str] = {
    pb.OPERATOR_GREATER: ">",
    pb.OPERATOR_GREATER_OR_EQUAL: ">=",
    pb.OPERATOR_LESS: "<",
    pb.OPERATOR_LESS_OR_EQUAL: "<=",
}
_ADDRESS_SQL: dict[int, str] = {
    pb.CHANNEL_EMAIL: "c.email <> ''",
    pb.CHANNEL_SMS: "c.phone <> ''",
    pb.CHANNEL_PUSH: "cardinality(c.push_tokens) > 0",
}
_CONSENT_SQL: dict[int, str] = {
    pb.CHANNEL_EMAIL: "c.email_consent = 1",
    pb.CHANNEL_SMS: "c.sms_consent = 1",
    pb.CHANNEL_PUSH: "c.push_consent = 1",
}


@dataclass
class Params:
    """Bind parameters, numbered in the order they are added."""

    values: list[Any] = field(default_factory=list)

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def predicate_sql(p: Predicate, column: str, params: Params) -> str:
    """A boolean SQL expression, never NULL, for ``p`` on the jsonb ``column``."""
    op = p.operator
    if op == pb.OPERATOR_EQUALS:
        # Containment can use the GIN index on context; jsonb equality of
        # numbers is numeric (1 = 1.0), of strings exact.
        wanted = params.add("{" + json.dumps(p.field) + ": " + p.operands[0].stored + "}", "jsonb")
        return f"({column} @> {wanted})"
    code = params.add(p.field, "text")
    value = f"({column} -> {code})"
    if op == pb.OPERATOR_EXISTS:
        return f"({value} IS NOT NULL)"
    if op == pb.OPERATOR_NOT_EXISTS:
        return f"({value} IS NULL)"
    if op == pb.OPERATOR_NOT_EQUALS:
        wanted = params.add(p.operands[0].stored, "jsonb")
        return f"COALESCE({value} IS NOT NULL AND {value} <> {wanted}, false)"
    if op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        wanted = params.add([o.stored for o in p.operands], "jsonb[]")
        if op == pb.OPERATOR_IN:
            return f"COALESCE({value} = ANY({wanted}), false)"
        return f"COALESCE({value} IS NOT NULL AND NOT {value} = ANY({wanted}), false)"
    if op == pb.OPERATOR_CONTAINS:
        text = params.add(p.operands[0].python, "text")
        return (
            f"COALESCE(jsonb_typeof({value}) = 'string' AND strpos({column} ->> {code}, {text}) > 0, false)"
        )
    if op == pb.OPERATOR_STARTS_WITH:
        text = params.add(p.operands[0].python, "text")
        return (
            f"COALESCE(jsonb_typeof({value}) = 'string' AND starts_with({column} ->> {code}, {text}), false)"
        )
    sign = _ORDER_SQL[op]
    operand = p.operands[0]
    if operand.kind == "number":
        number = params.add(operand.stored, "jsonb")
        return f"COALESCE(jsonb_typeof({value}) = 'number' AND {value} {sign} {number}, false)"
    text = params.add(stored_timestamp_text(operand.stored), "text")
    return (
        f"COALESCE(jsonb_typeof({value}) = 'object' AND "
        f'({value} ->> \'ts\') COLLATE "C" {sign} {text} COLLATE "C", false)'
    )


def interval_sql(column: str, interval: Interval, params: Params) -> list[str]:
    parts = []
    if interval.start is not None:
        parts.append(f"{column} >= {params.add(interval.start, 'timestamptz')}")
    if interval.end is not None:
        sign = "<=" if interval.end_inclusive else "<"
        parts.append(f"{column} {sign} {params.add(interval.end, 'timestamptz')}")
    return parts


def intervals_sql(column: str, intervals: list[Interval], params: Params) -> str:
    """``column`` lies in one of ``intervals``."""
    alternatives = []
    for interval in intervals:
        parts = interval_sql(column, interval, params)
        alternatives.append("(" + " AND ".join(parts) + ")" if parts else "TRUE")
    return "(" + " OR ".join(alternatives) + ")"


def _test_intervals(node: EventNode, clock: Clock) -> list[Interval]:
    if node.test == "days":
        return clock.days_since_intervals(node.comparison, node.days)
    assert node.period is not None
    return [clock.resolve(node.period)]


def event_sql(node: EventNode, clock: Clock, params: Params) -> str:
    """A boolean expression over ``c`` for an event condition."""
    if node.test == "count" and node.low <= 0 and node.high is None:
        return "TRUE"  # at least 0: holds for everyone (adds no parameters)
    name = params.add(node.name, "text")
    predicates = [predicate_sql(p, "e.context", params) for p in node.predicates]
    if node.test == "count":
        low, high = node.low, node.high
        if not predicates and node.period is None:
            source = f"SELECT s.customer_id FROM customer_event_stats s WHERE s.name = {name}"
            if low >= 1:
                bounds = f" AND s.count >= {params.add(low, 'bigint')}"
                if high is not None:
                    bounds += f" AND s.count <= {params.add(high, 'bigint')}"
                return f"c.customer_id IN ({source}{bounds})"
            assert high is not None
            return f"c.customer_id NOT IN ({source} AND s.count > {params.add(high, 'bigint')})"
        where = [f"e.name = {name}"]
        if node.period is not None:
            where += interval_sql("e.occurred_at", clock.resolve(node.period), params)
        where += predicates
        source = "SELECT e.customer_id FROM customer_events e WHERE " + " AND ".join(where)
        if low >= 1:
            if low == 1 and high is None:
                return f"c.customer_id IN ({source})"
            having = f"count(*) >= {params.add(low, 'bigint')}"
            if high is not None:
                having += f" AND count(*) <= {params.add(high, 'bigint')}"
            return f"c.customer_id IN ({source} GROUP BY e.customer_id HAVING {having})"
        assert high is not None
        if high == 0:
            return f"c.customer_id NOT IN ({source})"
        return (
            f"c.customer_id NOT IN ({source} GROUP BY e.customer_id "
            f"HAVING count(*) > {params.add(high, 'bigint')})"
        )
    intervals = _test_intervals(node, clock)
    if not predicates:
        column = "s.first_at" if node.test == "first" else "s.last_at"
        condition = intervals_sql(column, intervals, params)
        return (
            f"c.customer_id IN (SELECT s.customer_id FROM customer_event_stats s "
            f"WHERE s.name = {name} AND {condition})"
        )
    aggregate = "min(e.occurred_at)" if node.test == "first" else "max(e.occurred_at)"
    condition = intervals_sql(aggregate, intervals, params)
    matching = " AND ".join([f"e.name = {name}", *predicates])
    return (
        f"c.customer_id IN (SELECT e.customer_id FROM customer_events e WHERE {matching} "
        f"GROUP BY e.customer_id HAVING {condition})"
    )


def customer_sql(node: CustomerNode, params: Params) -> str:
    if node.test == "address":
        return _ADDRESS_SQL[node.channel]
    if node.test == "consent":
        return _CONSENT_SQL[node.channel]
    assert node.predicate is not None
    return predicate_sql(node.predicate, "c.attributes", params)


def where_sql(node: Node, clock: Clock, params: Params) -> str:
    """A boolean expression over ``customers c`` that holds for the matching customers."""
    if isinstance(node, BoolNode):
        parts = [where_sql(child, clock, params) for child in node.children]
        if node.op == "not":
            return f"NOT ({parts[0]})"
        joiner = " AND " if node.op == "all" else " OR "
        return "(" + joiner.join(parts) + ")"
    if isinstance(node, EventNode):
        return event_sql(node, clock, params)
    assert isinstance(node, CustomerNode)
    return customer_sql(node, params)


@dataclass
class Compiled:
    sql: str
    params: list[Any]


def count_query(root: Node, clock: Clock) -> Compiled:
    params = Params()
    where = where_sql(root, clock, params)
    return Compiled(f"SELECT count(*) FROM customers c WHERE {where}", params.values)


def ids_query(root: Node, clock: Clock, after: str, limit: int | None) -> Compiled:
    """Matching ids in byte order, after ``after`` ('' for the start), at most ``limit``."""
    params = Params()
    where = where_sql(root, clock, params)
    sql = f"SELECT c.customer_id FROM customers c WHERE {where}"
    if after:
        sql += f' AND c.customer_id COLLATE "C" > {params.add(after, "text")} COLLATE "C"'
    sql += ' ORDER BY c.customer_id COLLATE "C"'
    if limit is not None:
        sql += f" LIMIT {params.add(limit, 'bigint')}"
    return Compiled(sql, params.values)


@dataclass
class MatchQuery:
    """One query for one customer; columns are named after node indexes."""

    sql: str
    params: list[Any]
    nodes: list[Node]


def match_query(root: Node, clock: Clock, customer_id: str) -> MatchQuery:
    """Columns: ``n<i>`` count, ``l<i>`` last, ``f<i>`` first (event nodes),
    ``h<i>`` held and ``v<i>`` value text (customer nodes)."""
    params = Params()
    customer = params.add(customer_id, "text")
    nodes = walk(root)
    outer: list[str] = []
    aggregates: list[str] = []
    names: list[str] = []
    for i, node in enumerate(nodes):
        if isinstance(node, EventNode):
            names.append(node.name)
            matching = [f"e.name = {params.add(node.name, 'text')}"]
            matching += [predicate_sql(p, "e.context", params) for p in node.predicates]
            in_period = list(matching)
            if node.test == "count" and node.period is not None:
                in_period += interval_sql("e.occurred_at", clock.resolve(node.period), params)
            aggregates.append(f"count(*) FILTER (WHERE {' AND '.join(in_period)}) AS n{i}")
            aggregates.append(f"max(e.occurred_at) FILTER (WHERE {' AND '.join(matching)}) AS l{i}")
            aggregates.append(f"min(e.occurred_at) FILTER (WHERE {' AND '.join(matching)}) AS f{i}")
            outer += [f"a.n{i}", f"a.l{i}", f"a.f{i}"]
        elif isinstance(node, CustomerNode):
            outer.append(f"{customer_sql(node, params)} AS h{i}")
            if node.predicate is not None:
                outer.append(f"(c.attributes -> {params.add(node.predicate.field, 'text')})::text AS v{i}")
    sql = "SELECT c.customer_id"
    if outer:
        sql += ", " + ", ".join(outer)
    sql += " FROM customers c"
    if aggregates:
        sql += (
            f" CROSS JOIN LATERAL (SELECT {', '.join(aggregates)} FROM customer_events e "
            f"WHERE e.customer_id = c.customer_id AND e.name = ANY({params.add(sorted(set(names)), 'text[]')})) a"
        )
    sql += f" WHERE c.customer_id = {customer}"
    return MatchQuery(sql, params.values, nodes)
