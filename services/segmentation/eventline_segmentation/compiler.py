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

import datetime as dt
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates.filters import BoolNode, CustomerNode, EventNode, Node, PeriodSpec, Predicate, walk
from eventline_predicates.periods import Clock, Interval

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

    def add_ids(self, ids: Collection[str]) -> str:
        """A list of ids (customers, segments) as a ``text[]`` expression, sent as one text
        parameter (``id_list``)."""
        return id_array(self.add(id_list(ids), "text"))


ID_SEPARATOR = "\x1f"
"""Between the ids of an ``id_list``: a control character no id may hold (customer ids are
letters, digits and ``_.:@+-``; segment ids are codes)."""


def id_list(ids: Collection[str]) -> str:
    """``ids`` as one text, for ``id_array`` to split in the statement. asyncpg encodes a ``text[]``
    parameter element by element in Python (0.3-0.5 µs each: ~10,000 ids per consumer batch of
    ~500 events with the bench's 50 segments); one text costs a copy. Raises ``ValueError`` for an
    id that holds the separator (none can: ids are validated when written)."""
    joined = ID_SEPARATOR.join(ids)
    if ids and joined.count(ID_SEPARATOR) != len(ids) - 1:
        raise ValueError("an id holds the id list separator")
    return joined


def id_array(placeholder: str) -> str:
    """The ``text[]`` of an ``id_list`` parameter (an empty list for an empty text)."""
    return f"string_to_array({placeholder}, E'\\x1f')"


def _timestamp_text(stored: str) -> str:
    """The fixed-width UTC text of a stored timestamp value."""
    return str(json.loads(stored)["ts"])


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
    text = params.add(_timestamp_text(operand.stored), "text")
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


def set_predicates_sql(node: EventNode, params: Params) -> list[str]:
    """The predicates of an event condition for set queries over ``customer_events e``.

    Equalities become one containment test on {name: context}, which the
    customer_events_named_context GIN index answers (migration 0101).
    """
    equalities: dict[str, str] = {}
    others: list[Predicate] = []
    for p in node.predicates:
        if p.operator == pb.OPERATOR_EQUALS and p.field not in equalities:
            equalities[p.field] = p.operands[0].stored
        else:
            others.append(p)
    parts = []
    if equalities:
        inner = ", ".join(f"{json.dumps(code)}: {stored}" for code, stored in equalities.items())
        wanted = params.add("{" + json.dumps(node.name) + ": {" + inner + "}}", "jsonb")
        parts.append(f"eventline_named_context(e.name, e.context) @> {wanted}")
    return parts + [predicate_sql(p, "e.context", params) for p in others]


@dataclass(frozen=True)
class IdSet:
    """An event condition as a set of customer ids.

    ``positive``: the condition holds exactly for the customers in ``sql``
    (which never include a customer without events); otherwise it holds for
    the customers *not* in ``sql``. ``distinct``: ``sql`` yields each id once.
    """

    sql: str
    positive: bool
    distinct: bool


def event_set(node: EventNode, clock: Clock, params: Params) -> IdSet | None:
    """The id set of an event condition, or None when it holds for everyone."""
    if node.test == "count" and node.low <= 0 and node.high is None:
        return None  # at least 0: holds for everyone (adds no parameters)
    name = params.add(node.name, "text")
    predicates = set_predicates_sql(node, params)
    if node.test == "count":
        low, high = node.low, node.high
        if not predicates and node.period is None:
            # Stats hold one row per (customer, name) with the exact count.
            source = f"SELECT s.customer_id FROM customer_event_stats s WHERE s.name = {name}"
            if low >= 1:
                source += f" AND s.count >= {params.add(low, 'bigint')}"
                if high is not None:
                    source += f" AND s.count <= {params.add(high, 'bigint')}"
                return IdSet(source, True, True)
            assert high is not None
            return IdSet(f"{source} AND s.count > {params.add(high, 'bigint')}", False, True)
        where = [f"e.name = {name}"]
        if node.period is not None:
            where += interval_sql("e.occurred_at", clock.resolve(node.period), params)
        where += predicates
        source = "SELECT e.customer_id FROM customer_events e WHERE " + " AND ".join(where)
        if low >= 1:
            if low == 1 and high is None:
                return IdSet(source, True, False)
            having = f"count(*) >= {params.add(low, 'bigint')}"
            if high is not None:
                having += f" AND count(*) <= {params.add(high, 'bigint')}"
            return IdSet(f"{source} GROUP BY e.customer_id HAVING {having}", True, True)
        assert high is not None
        if high == 0:
            return IdSet(source, False, False)
        return IdSet(
            f"{source} GROUP BY e.customer_id HAVING count(*) > {params.add(high, 'bigint')}", False, True
        )
    intervals = _test_intervals(node, clock)
    if not predicates:
        column = "s.first_at" if node.test == "first" else "s.last_at"
        condition = intervals_sql(column, intervals, params)
        return IdSet(
            f"SELECT s.customer_id FROM customer_event_stats s WHERE s.name = {name} AND {condition}",
            True,
            True,
        )
    aggregate = "min(e.occurred_at)" if node.test == "first" else "max(e.occurred_at)"
    condition = intervals_sql(aggregate, intervals, params)
    matching = " AND ".join([f"e.name = {name}", *predicates])
    return IdSet(
        f"SELECT e.customer_id FROM customer_events e WHERE {matching} GROUP BY e.customer_id HAVING {condition}",
        True,
        True,
    )


def event_sql(node: EventNode, clock: Clock, params: Params, id_column: str = "c.customer_id") -> str:
    """A boolean expression for an event condition over the customer id ``id_column``."""
    found = event_set(node, clock, params)
    if found is None:
        return "TRUE"
    return f"{id_column} {'IN' if found.positive else 'NOT IN'} ({found.sql})"


def customer_sql(node: CustomerNode, params: Params) -> str:
    if node.test == "address":
        return _ADDRESS_SQL[node.channel]
    if node.test == "consent":
        return _CONSENT_SQL[node.channel]
    assert node.predicate is not None
    return predicate_sql(node.predicate, "c.attributes", params)


def where_sql(node: Node, clock: Clock, params: Params, id_column: str = "c.customer_id") -> str:
    """A boolean expression that holds for the matching customers (``customers c``)."""
    if isinstance(node, BoolNode):
        parts = [where_sql(child, clock, params, id_column) for child in node.children]
        if node.op == "not":
            return f"NOT ({parts[0]})"
        joiner = " AND " if node.op == "all" else " OR "
        return "(" + joiner.join(parts) + ")"
    if isinstance(node, EventNode):
        return event_sql(node, clock, params, id_column)
    assert isinstance(node, CustomerNode)
    return customer_sql(node, params)


def _uses_profile(node: Node) -> bool:
    return any(isinstance(n, CustomerNode) for n in walk(node))


def source_sql(root: Node, clock: Clock, params: Params) -> tuple[str, str]:
    """``FROM … WHERE …`` of the matching customers, and their id column.

    When the tree is (or is an all_of with) an event condition that only
    customers with events can satisfy, that condition's id set drives the
    query: every customer id in customer_events and customer_event_stats
    exists in customers (foreign key), so the customers table is joined only
    when a profile condition needs it.
    """
    conjuncts = root.children if isinstance(root, BoolNode) and root.op == "all" else [root]
    for i, candidate in enumerate(conjuncts):
        if not isinstance(candidate, EventNode):
            continue
        mark = len(params.values)
        found = event_set(candidate, clock, params)
        if found is None or not found.positive:
            del params.values[mark:]
            continue
        driver = (
            found.sql
            if found.distinct
            else found.sql.replace("SELECT e.customer_id", "SELECT DISTINCT e.customer_id", 1)
        )
        rest = conjuncts[:i] + conjuncts[i + 1 :]
        if any(_uses_profile(n) for n in rest):
            where = " AND ".join(where_sql(n, clock, params, "c.customer_id") for n in rest)
            return (
                f"FROM ({driver}) p JOIN customers c ON c.customer_id = p.customer_id WHERE {where}",
                "c.customer_id",
            )
        where = " AND ".join(where_sql(n, clock, params, "p.customer_id") for n in rest) or "TRUE"
        return f"FROM ({driver}) p WHERE {where}", "p.customer_id"
    return (
        f"FROM customers c WHERE {where_sql(root, clock, params)}",
        "c.customer_id",
    )


@dataclass
class Compiled:
    sql: str
    params: list[Any]


def count_query(root: Node, clock: Clock) -> Compiled:
    params = Params()
    source, _ = source_sql(root, clock, params)
    return Compiled(f"SELECT count(*) {source}", params.values)


def ids_query(root: Node, clock: Clock, after: str, limit: int | None) -> Compiled:
    """Matching ids in byte order, after ``after`` ('' for the start), at most ``limit``."""
    params = Params()
    source, id_column = source_sql(root, clock, params)
    sql = f"SELECT {id_column} {source}"
    if after:
        sql += f' AND {id_column} COLLATE "C" > {params.add(after, "text")} COLLATE "C"'
    sql += f' ORDER BY {id_column} COLLATE "C"'
    if limit is not None:
        sql += f" LIMIT {params.add(limit, 'bigint')}"
    return Compiled(sql, params.values)


def members_query(root: Node, clock: Clock) -> Compiled:
    """Every matching id, as column ``customer_id`` (a backfill): CountCustomers's query, ids
    instead of a count."""
    params = Params()
    source, id_column = source_sql(root, clock, params)
    return Compiled(f"SELECT {id_column} AS customer_id {source}", params.values)


@dataclass
class MatchQuery:
    """One query for one customer; columns are named after node indexes."""

    sql: str
    params: list[Any]
    nodes: list[Node]
    names: list[str]
    """The output columns' names, in order."""
    keyed: bool = True
    """Whether a row comes only for a customer that exists (``match_many_query`` reads no customer
    row for a tree without profile conditions: its caller asks once per customer instead)."""


def _hull(intervals: list[Interval]) -> Interval:
    """The smallest interval holding all of ``intervals`` (inclusive end, to be safe)."""
    starts = [i.start for i in intervals]
    ends = [i.end for i in intervals]
    return Interval(
        None if any(t is None for t in starts) else min(t for t in starts if t is not None),
        None if any(t is None for t in ends) else max(t for t in ends if t is not None),
        end_inclusive=True,
    )


class RowBounds:
    """The intervals of a query over many customers, each row at an instant of its own.

    The customers and every interval asked for become parallel arrays unnested as
    ``q(customer_id, b1, b2, …)``: interval ``k`` of row ``r`` is ``[q.b<2k>, q.b<2k+1>]``,
    both ends inclusive. Timestamps are whole microseconds, so an exclusive end ``< end`` is the
    inclusive ``<= end - 1 µs``; a missing bound is the first or last instant there is.

    ``shared``: every row is at one instant (a consumer batch), so each bound is one parameter
    rather than an array of one value per row: a statement's parameters then grow with its
    customers only, not with its customers times its intervals.
    """

    def __init__(self, params: Params, customer_ids: Sequence[str], *, shared: bool = False) -> None:
        self.params = params
        self.customer_ids = list(customer_ids)
        self.shared = shared
        self._columns: list[str] = []
        self._arrays: list[str] = []

    def _column(self, values: list[dt.datetime]) -> str:
        if self.shared:
            if any(v != values[0] for v in values):
                raise ValueError("rows of shared bounds at different instants")
            return self.params.add(values[0], "timestamptz")
        name = f"b{len(self._columns)}"
        self._columns.append(name)
        self._arrays.append(self.params.add(values, "timestamptz[]"))
        return f"q.{name}"

    def bounds(self, intervals: Sequence[Interval]) -> tuple[str, str]:
        """The columns of the first and last instant of each row's interval (one per row, in order)."""
        if len(intervals) != len(self.customer_ids):
            raise ValueError("one interval per row")
        starts = [_FIRST if i.start is None else i.start for i in intervals]
        ends = [
            _LAST if i.end is None else i.end if i.end_inclusive else i.end - _MICROSECOND for i in intervals
        ]
        return self._column(starts), self._column(ends)

    def interval(self, column: str, intervals: Sequence[Interval]) -> list[str]:
        """``column`` in each row's interval."""
        start, end = self.bounds(intervals)
        return [f"{column} >= {start}", f"{column} <= {end}"]

    def source(self) -> str:
        """The ``FROM`` item of the rows (add it after every interval); ``q.position`` numbers them from 1."""
        ids = self.params.add_ids(self.customer_ids)
        names = ", ".join(["customer_id", *self._columns, "position"])
        return f"unnest({', '.join([ids, *self._arrays])}) WITH ORDINALITY AS q({names})"


_MICROSECOND = dt.timedelta(microseconds=1)
_FIRST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LAST = dt.datetime.max.replace(tzinfo=dt.UTC)

IntervalSql = Callable[[str, Callable[[Clock], Interval]], list[str]]
"""Conditions that a column lies in an interval resolved from the query's clock (or each row's)."""


def match_query(root: Node, clock: Clock, customer_id: str) -> MatchQuery:
    """Columns: ``n<i>`` count, ``l<i>`` last, ``f<i>`` first (event nodes),
    ``h<i>`` held and ``v<i>`` value text (customer nodes).

    Reads as little of the customer's history as the tree needs: first, last
    and all-time counts of conditions without predicates come from
    customer_event_stats; counts in a period come from one pass over the
    customer's events restricted to the hull of those periods; first and last
    of conditions with predicates are min()/max() subqueries, which walk the
    customer's events in time order and stop at the first match. Only an
    all-time count with predicates needs the whole history.
    """
    params = Params()
    customer = params.add(customer_id, "text")
    select = _match_select(root, params, lambda column, resolve: interval_sql(column, resolve(clock), params))
    return MatchQuery(
        f"{select.columns} FROM customers c{select.joins} WHERE c.customer_id = {customer}",
        params.values,
        select.nodes,
        select.names,
    )


def match_many_query(
    root: Node,
    clocks: Sequence[Clock],
    params: Params,
    rows: RowBounds,
    extra: Sequence[str] = (),
    counted: Collection[int] = (),
) -> MatchQuery:
    """``match_query`` for the customers of ``rows``, row ``r`` at ``clocks[r]``, in one query: of its
    columns (each row's own intervals) only those that decide a leaf (``decisive_column``: no
    explanation is built from these rows), but no count of the nodes ``counted`` (indexes in
    ``walk(root)``: the caller counts their events in ``extra``), then ``extra`` (built with
    ``rows`` before this call). ``params`` is shared with the caller's other queries.

    Customers that do not exist give no row when the tree has profile conditions. Without any,
    every row's customer is its id alone (``MatchQuery.keyed`` False): the caller learns which of
    them exist in the same statement, once per customer (``existing_query``), rather than by a
    primary-key probe of ``customers`` per row, which was a tenth of the consumer's evaluation
    statement with the bench's 50 segments (docs/performance.md, "the consumer's PostgreSQL per
    event")."""

    def bounded(column: str, resolve: Callable[[Clock], Interval]) -> list[str]:
        # Rows of one instant share their clock (a consumer batch: all of them): resolve it once.
        once = {clock: resolve(clock) for clock in set(clocks)}
        return rows.interval(column, [once[clock] for clock in clocks])

    select = _match_select(root, params, bounded, extra, decisive=True, counted=counted)
    # Each row's customer by the primary key (a lateral subquery the planner cannot flatten), never
    # a scan of ``customers``: the generic plan (real-time segments plan each statement once per
    # connection) expects 10 rows from the unnest, and against a small table it hashed them and
    # scanned every customer, once per segment of the statement (docs/performance.md, "The
    # consumer's PostgreSQL").
    keyed = _uses_profile(root)
    customer = (
        "SELECT * FROM customers c WHERE c.customer_id = q.customer_id OFFSET 0"
        if keyed
        else "SELECT q.customer_id"
    )
    return MatchQuery(
        f"{select.columns} FROM {rows.source()} CROSS JOIN LATERAL ({customer}) c{select.joins}",
        params.values,
        select.nodes,
        select.names,
        keyed,
    )


def existing_query(params: Params, customer_ids: Collection[str]) -> str:
    """The customers of ``customer_ids`` that exist (column ``customer_id``): what a query of
    ``match_many_query`` that is not ``keyed`` leaves to its caller, in the same statement (one
    snapshot: a customer erased meanwhile is gone from both or from neither)."""
    return f"SELECT c.customer_id FROM customers c WHERE c.customer_id = ANY({params.add_ids(sorted(customer_ids))})"


@dataclass(frozen=True)
class _Select:
    columns: str
    joins: str
    nodes: list[Node]
    names: list[str]


def decisive_column(node: EventNode | CustomerNode, i: int) -> str:
    """The one column of ``match_query`` that decides leaf ``i``: its count for a count test, its
    last occurrence for days since and "last occurred", its first for "first occurred", and
    whether it held for a customer condition."""
    if isinstance(node, CustomerNode):
        return f"h{i}"
    return {"count": "n", "first": "f"}.get(node.test, "l") + str(i)


def _match_select(
    root: Node,
    params: Params,
    interval: IntervalSql,
    extra: Sequence[str] = (),
    *,
    decisive: bool = False,
    counted: Collection[int] = (),
) -> _Select:
    """The columns of ``match_query`` (all of them; with ``decisive``, only ``decisive_column``, and
    none for the nodes ``counted``)."""
    nodes = walk(root)
    events = [n for n in nodes if isinstance(n, EventNode)]
    full_scan = any(n.predicates and (n.test != "count" or n.period is None) for n in events)
    in_periods = [
        n.period
        for i, n in enumerate(nodes)
        if isinstance(n, EventNode) and n.test == "count" and n.period is not None and i not in counted
    ]
    outer: list[str] = []
    aggregates: list[str] = []
    scanned: list[str] = []
    for i, node in enumerate(nodes):
        if isinstance(node, EventNode):
            if i in counted:
                continue
            wanted = decisive_column(node, i)[0] if decisive else "nlf"
            name = params.add(node.name, "text")
            stats = f"FROM customer_event_stats s WHERE s.customer_id = c.customer_id AND s.name = {name}"
            matching = [f"e.name = {name}", *(predicate_sql(p, "e.context", params) for p in node.predicates)]
            if "n" in wanted:
                if node.test == "count" and node.period is not None:
                    in_period = matching + interval("e.occurred_at", _resolver(node.period))
                    aggregates.append(f"count(*) FILTER (WHERE {' AND '.join(in_period)}) AS n{i}")
                    outer.append(f"a.n{i}")
                    scanned.append(node.name)
                elif not node.predicates:
                    outer.append(f"COALESCE((SELECT s.count {stats}), 0) AS n{i}")
                else:
                    aggregates.append(f"count(*) FILTER (WHERE {' AND '.join(matching)}) AS n{i}")
                    outer.append(f"a.n{i}")
                    scanned.append(node.name)
            for letter, column, aggregate in (("l", "last_at", "max"), ("f", "first_at", "min")):
                if letter not in wanted:
                    continue
                if not node.predicates:
                    outer.append(f"(SELECT s.{column} {stats}) AS {letter}{i}")
                elif full_scan:
                    filtered = f"FILTER (WHERE {' AND '.join(matching)})"
                    aggregates.append(f"{aggregate}(e.occurred_at) {filtered} AS {letter}{i}")
                    outer.append(f"a.{letter}{i}")
                    scanned.append(node.name)
                else:
                    where = " AND ".join(["e.customer_id = c.customer_id", *matching])
                    outer.append(
                        f"(SELECT {aggregate}(e.occurred_at) FROM customer_events e WHERE {where}) AS {letter}{i}"
                    )
        elif isinstance(node, CustomerNode):
            outer.append(f"{customer_sql(node, params)} AS h{i}")
            if node.predicate is not None and not decisive:
                outer.append(f"(c.attributes -> {params.add(node.predicate.field, 'text')})::text AS v{i}")
    outer += extra
    names = ["customer_id", *(_alias(column) for column in outer)]
    columns = "SELECT " + ", ".join(["c.customer_id", *outer])
    joins = ""
    if aggregates:
        scan = [
            "e.customer_id = c.customer_id",
            f"e.name = ANY({params.add(sorted(set(scanned)), 'text[]')})",
        ]
        if not full_scan:
            scan += interval("e.occurred_at", lambda clock: _hull([clock.resolve(p) for p in in_periods]))
        joins = (
            f" CROSS JOIN LATERAL (SELECT {', '.join(aggregates)} FROM customer_events e "
            f"WHERE {' AND '.join(scan)}) a"
        )
    return _Select(columns, joins, nodes, names)


def _resolver(period: PeriodSpec) -> Callable[[Clock], Interval]:
    return lambda clock: clock.resolve(period)


def _alias(column: str) -> str:
    """The name of an output column: its ``AS`` alias, or the column of ``a.<name>``."""
    head, _, alias = column.rpartition(" AS ")
    return alias if head else column.removeprefix("a.")
