"""Differential tests: the service's answers equal the reference evaluator's.

Hypothesis generates small event histories (customers, their events with
typed contexts, profiles) and filters using every node kind, operator,
period shape and test, with references bound from generated bindings, a
pinned ``now`` and a time zone. One database and one server serve all the
examples of a test: each example replaces the data, then compares
CountCustomers, ListCustomers (paged), StreamCustomers and MatchCustomer
(per-node explanations) with tests/unit/test_predicates_reference.py.

The second variant runs the same checks with sequential scans and hash joins
disabled in the service's sessions, so the index paths (GIN containment,
the (name, occurred_at) index, the stats index) are exercised too.
"""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from eventline_predicates import filters
from eventline_predicates.periods import Clock, time_zone
from eventline_segmentation import compiler
from eventline_shared import values
from tests.conftest import service_env
from tests.fuzzing import differential_examples
from tests.unit.test_predicates_reference import Customer, Evaluator, Event, NodeResult

UTC = dt.UTC
EXAMPLES = int(os.environ.get("EVENTLINE_SEGMENTATION_EXAMPLES", "250"))

NAMES = ["A", "B", "C"]
FIELDS = ["item_id", "amount", "tag", "when"]
ZONES = [
    "",
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Santiago",
]
CUSTOMER_IDS = ["a", "B", "c-1", "c_2", "Z9", "a.b", "a@x", "+1", "aa", "_"]
NOWS = [
    dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
    dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC),  # Europe's DST change day
    dt.datetime(2026, 11, 26, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(2027, 1, 1, 4, 0, tzinfo=UTC),
]


def _ts(t: dt.datetime) -> common_pb2.Value:
    return common_pb2.Value(timestamp_value=values.datetime_to_timestamp(t))


BASE = dt.datetime(2026, 11, 26, tzinfo=UTC)
string_values = st.sampled_from(["5", "42", "abc", "ab", "", "a'b", "--", "é", "É", "x\\y", 'q"'])
number_values = st.one_of(
    st.sampled_from([-1, 0, 5, 42, 7]).map(lambda i: common_pb2.Value(integer_value=i)),
    st.sampled_from(["5", "5.0", "42.00", "-0.5", "1e1", "7.25", "0.0"]).map(
        lambda d: common_pb2.Value(decimal_value=d)
    ),
)
timestamp_values = st.sampled_from(
    [BASE - dt.timedelta(days=3), BASE, BASE + dt.timedelta(hours=12, microseconds=1)]
).map(_ts)
any_values = st.one_of(
    string_values.map(lambda s: common_pb2.Value(string_value=s)),
    number_values,
    st.booleans().map(lambda b: common_pb2.Value(boolean_value=b)),
    timestamp_values,
)
contexts = st.dictionaries(st.sampled_from(FIELDS), any_values, max_size=3)

# Bindings: one reference per kind, so references can be used with any operator.
REFERENCES = {"string": "$ref_s", "number": "$ref_n", "timestamp": "$ref_t", "any": "$ref_a"}
bindings_strategy = st.fixed_dictionaries(
    {
        "ref_s": string_values.map(lambda s: common_pb2.Value(string_value=s)),
        "ref_n": number_values,
        "ref_t": timestamp_values,
        "ref_a": any_values,
    }
)

STRING_OPS = [pb.OPERATOR_CONTAINS, pb.OPERATOR_STARTS_WITH]
ORDER_OPS = [pb.OPERATOR_GREATER, pb.OPERATOR_GREATER_OR_EQUAL, pb.OPERATOR_LESS, pb.OPERATOR_LESS_OR_EQUAL]
EQ_OPS = [pb.OPERATOR_EQUALS, pb.OPERATOR_NOT_EQUALS]


def _operand(kind: str) -> st.SearchStrategy[pb.Operand]:
    literal = {
        "string": string_values.map(lambda s: common_pb2.Value(string_value=s)),
        "order": st.one_of(number_values, timestamp_values),
        "any": any_values,
    }[kind]
    refs = {
        "string": [REFERENCES["string"]],
        "order": [REFERENCES["number"], REFERENCES["timestamp"]],
        "any": list(REFERENCES.values()),
    }[kind]
    return st.one_of(
        literal.map(lambda v: pb.Operand(literal=v)),
        st.sampled_from(refs).map(lambda r: pb.Operand(reference=r)),
    )


@st.composite
def predicates(draw: st.DrawFn, fields: list[str] = FIELDS) -> pb.Predicate:
    code = draw(st.sampled_from([*fields, "missing"]))
    group = draw(st.sampled_from(["eq", "set", "string", "order", "presence"]))
    if group == "eq":
        return pb.Predicate(field=code, operator=draw(st.sampled_from(EQ_OPS)), value=draw(_operand("any")))
    if group == "set":
        op = draw(st.sampled_from([pb.OPERATOR_IN, pb.OPERATOR_NOT_IN]))
        return pb.Predicate(
            field=code, operator=op, values=draw(st.lists(_operand("any"), min_size=1, max_size=3))
        )
    if group == "string":
        return pb.Predicate(
            field=code, operator=draw(st.sampled_from(STRING_OPS)), value=draw(_operand("string"))
        )
    if group == "order":
        return pb.Predicate(
            field=code, operator=draw(st.sampled_from(ORDER_OPS)), value=draw(_operand("order"))
        )
    op = draw(st.sampled_from([pb.OPERATOR_EXISTS, pb.OPERATOR_NOT_EXISTS]))
    return pb.Predicate(field=code, operator=op)


@st.composite
def periods(draw: st.DrawFn) -> pb.Period:
    kind = draw(st.sampled_from(["absolute", "last", "days_ago"]))
    if kind == "absolute":
        instants = st.one_of(
            st.none(),
            st.integers(-40 * 24, 2 * 24).map(lambda h: BASE + dt.timedelta(hours=h)),
        )
        start, end = draw(instants), draw(instants)
        if start is None and end is None:
            start = BASE - dt.timedelta(days=5)
        r = pb.TimeRange()
        if start is not None:
            r.start.CopyFrom(values.datetime_to_timestamp(start))
        if end is not None:
            r.end.CopyFrom(values.datetime_to_timestamp(end))
        return pb.Period(absolute=r)
    if kind == "last":
        unit = draw(st.sampled_from([pb.TIME_UNIT_HOUR, pb.TIME_UNIT_DAY]))
        amount = draw(st.integers(1, 72 if unit == pb.TIME_UNIT_HOUR else 40))
        return pb.Period(last=pb.RecentPeriod(amount=amount, unit=unit))
    low = draw(st.integers(0, 10))
    high = draw(st.integers(low, low + 30))
    return pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=low, max_days_ago=high))


@st.composite
def event_conditions(draw: st.DrawFn) -> pb.Filter:
    cond = pb.EventCondition(
        name=draw(st.sampled_from([*NAMES, "D"])), predicates=draw(st.lists(predicates(), max_size=2))
    )
    test = draw(st.sampled_from(["none", "count", "last", "first", "days"]))
    if test == "count":
        c = pb.CountTest()
        if draw(st.booleans()):
            c.period.CopyFrom(draw(periods()))
        bound = draw(st.sampled_from(["none", "at_least", "at_most", "exactly", "between"]))
        n = draw(st.integers(0, 4))
        if bound == "between":
            c.between.min = n
            c.between.max = n + draw(st.integers(0, 3))
        elif bound != "none":
            setattr(c, bound, n)
        cond.count.CopyFrom(c)
    elif test in ("last", "first"):
        getattr(cond, f"{test}_occurred").CopyFrom(draw(periods()))
    elif test == "days":
        cond.days_since_last.comparison = draw(st.integers(1, 6))
        cond.days_since_last.days = draw(st.integers(0, 40))
    return pb.Filter(event=cond)


@st.composite
def customer_conditions(draw: st.DrawFn) -> pb.Filter:
    test = draw(st.sampled_from(["has_address", "consent_granted", "attribute"]))
    if test == "attribute":
        return pb.Filter(customer=pb.CustomerCondition(attribute=draw(predicates())))
    channel = draw(st.sampled_from([pb.CHANNEL_EMAIL, pb.CHANNEL_SMS, pb.CHANNEL_PUSH]))
    return pb.Filter(customer=pb.CustomerCondition(**{test: channel}))


def _group(kind: str) -> Any:
    return lambda children: pb.Filter(**{kind: pb.FilterList(filters=children)})


filters_strategy = st.recursive(
    st.one_of(event_conditions(), event_conditions(), customer_conditions()),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(_group("all_of")),
        st.lists(inner, min_size=1, max_size=3).map(_group("any_of")),
        inner.map(lambda f: pb.Filter(negation=f)),
    ),
    max_leaves=5,
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Customer], list[Event], dt.datetime, str]:
    now = draw(st.sampled_from(NOWS)) + dt.timedelta(minutes=draw(st.sampled_from([0, 0, 1, -90, 600])))
    zone_name = draw(st.sampled_from(ZONES))
    zone = zoneinfo.ZoneInfo(zone_name) if zone_name else UTC
    today = now.astimezone(zone).date()
    ids = draw(st.lists(st.sampled_from(CUSTOMER_IDS), min_size=1, max_size=6, unique=True))
    customers = [
        Customer(
            cid,
            email=draw(st.sampled_from(["", "x@example.com"])),
            phone=draw(st.sampled_from(["", "+4915112345678"])),
            push_tokens=draw(st.sampled_from([[], ["tok"]])),
            attributes=draw(contexts),
            email_consent=draw(st.integers(0, 2)),
            sms_consent=draw(st.integers(0, 2)),
            push_consent=draw(st.integers(0, 2)),
        )
        for cid in ids
    ]

    def day_start(days_ago: int) -> dt.datetime:
        d = today - dt.timedelta(days=days_ago)
        return dt.datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC)

    # Times around the boundaries the filters use: day starts in the zone,
    # exactly now, now minus whole hours, and a microsecond either side.
    boundary = st.one_of(
        st.integers(-1, 40).map(day_start),
        st.just(now),
        st.integers(0, 72).map(lambda h: now - dt.timedelta(hours=h)),
        st.integers(-40 * 24, 2 * 24).map(lambda h: BASE + dt.timedelta(hours=h)),
    )
    times = st.one_of(
        st.integers(-40 * 24 * 60, 30 * 60).map(lambda m: now + dt.timedelta(minutes=m)),
        st.tuples(boundary, st.sampled_from([0, 0, -1, 1])).map(
            lambda t: t[0] + dt.timedelta(microseconds=t[1])
        ),
    )
    events = draw(
        st.lists(
            st.builds(Event, st.sampled_from(ids), st.sampled_from(NAMES), times, contexts),
            max_size=20,
        )
    )
    return customers, events, now, zone_name


async def load(connection: asyncpg.Connection, customers: list[Customer], events: list[Event]) -> None:
    await connection.execute("DELETE FROM customers")  # cascades; cheaper than TRUNCATE here
    await connection.executemany(
        """INSERT INTO customers (customer_id, email, phone, push_tokens, attributes,
               email_consent, sms_consent, push_consent)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)""",
        [
            (
                c.customer_id,
                c.email,
                c.phone,
                c.push_tokens,
                values.encode_values(c.attributes, "a").json,
                c.email_consent,
                c.sms_consent,
                c.push_consent,
            )
            for c in customers
        ],
    )
    await connection.executemany(
        """INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at, context)
           VALUES ($1, $2, $3, $4, $4, $5::jsonb)""",
        [
            (e.customer_id, f"e{i}", e.name, e.occurred_at, values.encode_values(e.context, "c").json)
            for i, e in enumerate(events)
        ],
    )
    # The invariant ingestion maintains in the same statement as the events.
    await connection.execute(
        """INSERT INTO customer_event_stats (customer_id, name, first_at, last_at, count)
           SELECT customer_id, name, min(occurred_at), max(occurred_at), count(*)
           FROM customer_events GROUP BY customer_id, name"""
    )


def _ts_or_none(node: pb.NodeExplanation, name: str) -> dt.datetime | None:
    return values.timestamp_to_datetime(getattr(node, name)) if node.HasField(name) else None


def _same_value(a: common_pb2.Value | None, b: common_pb2.Value | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    from tests.unit.test_predicates_reference import typed

    return typed(a) == typed(b)


def assert_explained(got: pb.MatchCustomerResponse, want: list[NodeResult]) -> None:
    assert [n.path for n in got.nodes] == [w.path for w in want]
    for node, w in zip(got.nodes, want, strict=True):
        assert node.held == w.held, (node.path, node, w)
        assert node.count == w.count, node.path
        assert _ts_or_none(node, "last_occurred_at") == w.last, node.path
        assert _ts_or_none(node, "first_occurred_at") == w.first, node.path
        got_days = node.days_since_last if node.HasField("days_since_last") else None
        assert got_days == w.days_since_last, node.path
        assert _same_value(node.value if node.HasField("value") else None, w.value), node.path


@pytest.fixture(params=["plain", "indexes"])
async def differential(request: pytest.FixtureRequest, db_url: str, stream_key: str) -> AsyncIterator[Any]:
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    url = db_url
    if request.param == "indexes":
        url += "?enable_seqscan=off&enable_hashjoin=off"
    settings = Settings.from_env(service_env(url, stream_key))
    connection = await asyncpg.connect(db_url)
    async with running(settings) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            yield connection, segmentation_pb2_grpc.SegmentationServiceStub(channel)
    await connection.close()


@differential_examples(EXAMPLES)
@given(
    history=histories(),
    flts=st.lists(filters_strategy, min_size=1, max_size=3),
    bindings=bindings_strategy,
    page=st.integers(1, 4),
)
async def test_service_equals_reference(
    differential: Any, history: Any, flts: list[pb.Filter], bindings: dict[str, common_pb2.Value], page: int
) -> None:
    connection, stub = differential
    customers, events, now, zone = history
    await load(connection, customers, events)
    reference = Evaluator(customers, events, bindings, now, zone)
    pinned = values.datetime_to_timestamp(now)
    for flt in flts:
        common: dict[str, Any] = {"filter": flt, "bindings": bindings, "now": pinned, "time_zone": zone}
        want = reference.matching_ids(flt)
        counted = await stub.CountCustomers(pb.CountCustomersRequest(**common))
        assert counted.count == len(want), flt

        listed: list[str] = []
        token = ""
        while True:
            reply = await stub.ListCustomers(
                pb.ListCustomersRequest(**common, page_size=page, page_token=token)
            )
            listed += reply.customer_ids
            token = reply.next_page_token
            if not token:
                break
        assert listed == want, flt

        streamed = [
            i
            async for chunk in stub.StreamCustomers(pb.StreamCustomersRequest(**common, chunk_size=page))
            for i in chunk.customer_ids
        ]
        assert streamed == want, flt

        # A real-time backfill: every matching id in one query.
        checked = filters.check(flt, "filter", bindings)
        assert checked.root is not None
        query = compiler.members_query(checked.root, Clock(now, time_zone(zone)))
        members = sorted(r[0] for r in await connection.fetch(query.sql, *query.params))
        assert members == sorted(want), flt

        for customer in customers:
            got = await stub.MatchCustomer(
                pb.MatchCustomerRequest(**common, customer_id=customer.customer_id)
            )
            explained = reference.explain(flt, customer)
            assert got.matched == explained[0].held, (customer.customer_id, flt)
            assert_explained(got, explained)
