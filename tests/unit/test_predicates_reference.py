"""The reference evaluator of the segmentation filter language, and its own tests.

Written straight from the semantics in segmentation.proto, in plain Python,
with no code shared with the service (no SQL, no period resolution into
intervals, no stats): it is the oracle of the differential tests in
tests/integration/test_segmentation_differential.py and of the forecasts of
tests/unit/test_segment_transitions.py. Day periods compare instants with the
proto's "start of day D" (the first instant whose local date is D), found by
its own search over the zone's UTC offsets; days since compares local dates.
The two differ where a clock change after midnight returns to the day before
(St. John's until 2010).
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb

from tests.support import value

UTC = dt.UTC


def _offset_pieces(
    zone: dt.tzinfo, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, dt.timedelta]]:
    """(first instant, UTC offset) of each stretch of one offset over [start, end).

    Offsets are probed every hour and each change is pinned to the microsecond
    by bisection: no zone has changed its offset twice within three days since 1900.
    """

    def offset(t: dt.datetime) -> dt.timedelta:
        found = t.astimezone(zone).utcoffset()
        assert found is not None
        return found

    pieces = [(start, offset(start))]
    probe = start
    while probe < end:
        following = probe + dt.timedelta(hours=1)
        if offset(following) != pieces[-1][1]:
            low, high = probe, following  # the offset changes in (low, high]
            while high - low > dt.timedelta(microseconds=1):
                middle = low + (high - low) // 2
                if offset(middle) == pieces[-1][1]:
                    low = middle
                else:
                    high = middle
            pieces.append((high, offset(high)))
        probe = following
    return pieces


@functools.cache
def start_of_day(time_zone: str, day: dt.date) -> dt.datetime:
    """The proto's "start of day D": the first instant whose local date is D
    (or later, for a date the zone skipped, such as Apia's 2011-12-30)."""
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
    if not time_zone or time_zone == "UTC":
        return midnight
    window = (midnight - dt.timedelta(days=2), midnight + dt.timedelta(days=2))
    pieces = _offset_pieces(zoneinfo.ZoneInfo(time_zone), *window)
    ends = [begin for begin, _ in pieces[1:]] + [window[1]]
    # Within one offset the local date only moves forward: a piece's first
    # instant of D or later is where its wall clock reaches midnight of D.
    firsts = [max(begin, midnight - offset) for (begin, offset), end in zip(pieces, ends, strict=True)]
    return min(first for first, end in zip(firsts, ends, strict=True) if first < end)


@dataclass
class Customer:
    customer_id: str
    email: str = ""
    phone: str = ""
    push_tokens: list[str] = field(default_factory=list)
    attributes: dict[str, common_pb2.Value] = field(default_factory=dict)
    email_consent: int = 0
    sms_consent: int = 0
    push_consent: int = 0


@dataclass
class Event:
    customer_id: str
    name: str
    occurred_at: dt.datetime
    context: dict[str, common_pb2.Value] = field(default_factory=dict)


@dataclass
class NodeResult:
    path: str
    held: bool
    count: int = 0
    last: dt.datetime | None = None
    first: dt.datetime | None = None
    days_since_last: int | None = None
    value: common_pb2.Value | None = None


def typed(v: common_pb2.Value) -> tuple[str, Any]:
    """A value as (kind, comparable python value); integers and decimals are both numbers."""
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return ("string", v.string_value)
    if kind == "integer_value":
        return ("number", Decimal(v.integer_value))
    if kind == "decimal_value":
        return ("number", Decimal(v.decimal_value))
    if kind == "boolean_value":
        return ("boolean", v.boolean_value)
    ts = v.timestamp_value
    # Microsecond precision: finer digits are dropped.
    return (
        "timestamp",
        dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000),
    )


class Evaluator:
    def __init__(
        self,
        customers: Sequence[Customer],
        events: Sequence[Event],
        bindings: Mapping[str, common_pb2.Value],
        now: dt.datetime,
        time_zone: str,
    ) -> None:
        self.customers = customers
        self.events_of: dict[str, list[Event]] = {c.customer_id: [] for c in customers}
        for e in events:
            self.events_of[e.customer_id].append(e)
        self.bindings = bindings
        self.now = now
        self.time_zone = time_zone
        self.zone = zoneinfo.ZoneInfo(time_zone) if time_zone else UTC
        self.today = self.local_date(now)

    def local_date(self, t: dt.datetime) -> dt.date:
        return t.astimezone(self.zone).date()

    # Values and predicates -------------------------------------------------------

    def operand(self, o: pb.Operand) -> tuple[str, Any]:
        if o.WhichOneof("kind") == "reference":
            return typed(self.bindings[o.reference[1:]])
        return typed(o.literal)

    def predicate(self, p: pb.Predicate, fields: Mapping[str, common_pb2.Value]) -> bool:
        op = p.operator
        if op == pb.OPERATOR_NOT_EXISTS:
            return p.field not in fields
        if p.field not in fields:
            return False  # a missing field never holds for the other operators
        if op == pb.OPERATOR_EXISTS:
            return True
        kind, value = typed(fields[p.field])
        if op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
            found = any((kind, value) == self.operand(o) for o in p.values)
            return found if op == pb.OPERATOR_IN else not found
        other_kind, other = self.operand(p.value)
        if op == pb.OPERATOR_EQUALS:
            return (kind, value) == (other_kind, other)
        if op == pb.OPERATOR_NOT_EQUALS:
            return (kind, value) != (other_kind, other)
        if op == pb.OPERATOR_CONTAINS:
            return kind == "string" and other in value
        if op == pb.OPERATOR_STARTS_WITH:
            return kind == "string" and value.startswith(other)
        if kind != other_kind:
            return False  # values of different kinds are never ordered
        if op == pb.OPERATOR_GREATER:
            return bool(value > other)
        if op == pb.OPERATOR_GREATER_OR_EQUAL:
            return bool(value >= other)
        if op == pb.OPERATOR_LESS:
            return bool(value < other)
        return bool(value <= other)

    # Periods -----------------------------------------------------------------------

    def in_period(self, period: pb.Period, t: dt.datetime) -> bool:
        kind = period.WhichOneof("kind")
        if kind == "absolute":
            a = period.absolute
            if a.HasField("start") and t < a.start.ToDatetime(UTC):
                return False
            return not (a.HasField("end") and t >= a.end.ToDatetime(UTC))
        if kind == "last":
            if period.last.unit == pb.TIME_UNIT_HOUR:
                return self.now - dt.timedelta(hours=period.last.amount) <= t <= self.now
            # Today counts as one of the days.
            return self.day_start(period.last.amount - 1) <= t <= self.now
        days_ago = period.days_ago
        return self.day_start(days_ago.max_days_ago) <= t < self.day_start(days_ago.min_days_ago - 1)

    def day_start(self, days_before_today: int) -> dt.datetime:
        return start_of_day(self.time_zone, self.today - dt.timedelta(days=days_before_today))

    # Conditions --------------------------------------------------------------------

    def event(self, cond: pb.EventCondition, customer: Customer, path: str) -> NodeResult:
        matching = [
            e
            for e in self.events_of[customer.customer_id]
            if e.name == cond.name and all(self.predicate(p, e.context) for p in cond.predicates)
        ]
        last = max((e.occurred_at for e in matching), default=None)
        first = min((e.occurred_at for e in matching), default=None)
        days = (self.today - self.local_date(last)).days if last is not None else None
        result = NodeResult(path, False, len(matching), last, first, days)
        test = cond.WhichOneof("test")
        if test is None or test == "count":
            c = cond.count
            if test == "count" and c.HasField("period"):
                result.count = sum(1 for e in matching if self.in_period(c.period, e.occurred_at))
            n = result.count
            bound = c.WhichOneof("bound") if test else None
            if bound is None:
                result.held = n >= 1
            elif bound == "at_least":
                result.held = n >= c.at_least
            elif bound == "at_most":
                result.held = n <= c.at_most
            elif bound == "exactly":
                result.held = n == c.exactly
            else:
                result.held = c.between.min <= n <= c.between.max
        elif test == "last_occurred":
            result.held = last is not None and self.in_period(cond.last_occurred, last)
        elif test == "first_occurred":
            result.held = first is not None and self.in_period(cond.first_occurred, first)
        else:
            d = cond.days_since_last
            result.held = (
                days is not None
                and {
                    pb.COMPARISON_EQUAL: days == d.days,
                    pb.COMPARISON_NOT_EQUAL: days != d.days,
                    pb.COMPARISON_LESS: days < d.days,
                    pb.COMPARISON_LESS_OR_EQUAL: days <= d.days,
                    pb.COMPARISON_GREATER: days > d.days,
                    pb.COMPARISON_GREATER_OR_EQUAL: days >= d.days,
                }[d.comparison]
            )
        return result

    def customer_condition(self, cond: pb.CustomerCondition, customer: Customer, path: str) -> NodeResult:
        test = cond.WhichOneof("test")
        if test == "has_address":
            held = {
                pb.CHANNEL_EMAIL: customer.email != "",
                pb.CHANNEL_SMS: customer.phone != "",
                pb.CHANNEL_PUSH: len(customer.push_tokens) > 0,
            }[cond.has_address]
            return NodeResult(path, held)
        if test == "consent_granted":
            consent = {
                pb.CHANNEL_EMAIL: customer.email_consent,
                pb.CHANNEL_SMS: customer.sms_consent,
                pb.CHANNEL_PUSH: customer.push_consent,
            }[cond.consent_granted]
            return NodeResult(path, consent == common_pb2.CONSENT_GRANTED)
        p = cond.attribute
        return NodeResult(
            path, self.predicate(p, customer.attributes), value=customer.attributes.get(p.field)
        )

    def explain(self, f: pb.Filter, customer: Customer, path: str = "filter") -> list[NodeResult]:
        """Every node's result for one customer, in depth-first pre-order."""
        kind = f.WhichOneof("node")
        if kind in ("all_of", "any_of"):
            children: list[list[NodeResult]] = [
                self.explain(child, customer, f"{path}.{kind}.filters[{i}]")
                for i, child in enumerate(getattr(f, kind).filters)
            ]
            combine = all if kind == "all_of" else any
            held = combine(c[0].held for c in children)
            return [NodeResult(path, held)] + [r for c in children for r in c]
        if kind == "negation":
            inner = self.explain(f.negation, customer, f"{path}.negation")
            return [NodeResult(path, not inner[0].held), *inner]
        if kind == "event":
            return [self.event(f.event, customer, path)]
        return [self.customer_condition(f.customer, customer, path)]

    def matching_ids(self, f: pb.Filter) -> list[str]:
        """The matching customer ids in ascending byte order."""
        ids = [c.customer_id for c in self.customers if self.explain(f, c)[0].held]
        return sorted(ids, key=lambda i: i.encode())


# The reference's own tests: worked examples from the proto comments. ----------------

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _eq(code: str, x: Any) -> pb.Predicate:
    return pb.Predicate(field=code, operator=pb.OPERATOR_EQUALS, value=pb.Operand(literal=value(x)))


def test_a_string_never_equals_a_number_but_integers_equal_decimals() -> None:
    ev = Evaluator([Customer("c")], [], {}, NOW, "")
    assert not ev.predicate(_eq("x", 5), {"x": value("5")})
    assert ev.predicate(_eq("x", 5), {"x": value(Decimal("5.00"))})
    ne = pb.Predicate(field="x", operator=pb.OPERATOR_NOT_EQUALS, value=pb.Operand(literal=value(5)))
    assert ev.predicate(ne, {"x": value("5")})
    assert not ev.predicate(ne, {})  # NOT_EQUALS needs the field


def test_days_since_and_last_days_use_the_time_zone() -> None:
    # 23:30 UTC on the 25th is already the 26th in Berlin: 0 days ago there, 1 in UTC.
    late = dt.datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    cond = pb.EventCondition(
        name="A", days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_EQUAL, days=0)
    )
    for zone, held in (("", False), ("Europe/Berlin", True)):
        ev = Evaluator([Customer("c")], [Event("c", "A", late)], {}, NOW, zone)
        assert ev.explain(pb.Filter(event=cond), ev.customers[0])[0].held is held


def test_has_not_done_holds_for_customers_without_events() -> None:
    cond = pb.EventCondition(
        name="A",
        count=pb.CountTest(
            period=pb.Period(last=pb.RecentPeriod(amount=7, unit=pb.TIME_UNIT_DAY)), at_most=0
        ),
    )
    old = Event("b", "A", NOW - dt.timedelta(days=30))
    recent = Event("c", "A", NOW - dt.timedelta(days=1))
    ev = Evaluator([Customer("a"), Customer("b"), Customer("c")], [old, recent], {}, NOW, "")
    assert ev.matching_ids(pb.Filter(event=cond)) == ["a", "b"]


def test_ids_are_in_byte_order() -> None:
    ev = Evaluator([Customer("b"), Customer("B"), Customer("a"), Customer("_")], [], {}, NOW, "")
    everyone = pb.Filter(negation=pb.Filter(customer=pb.CustomerCondition(has_address=pb.CHANNEL_EMAIL)))
    assert ev.matching_ids(everyone) == ["B", "_", "a", "b"]


def test_start_of_day_is_the_first_instant_of_the_local_date() -> None:
    def start(zone: str, day: dt.date) -> dt.datetime:
        return start_of_day(zone, day)

    utc = dt.datetime
    assert start("Europe/Berlin", dt.date(2026, 3, 29)) == utc(2026, 3, 28, 23, tzinfo=UTC)
    # Chile skips 00:00-01:00: the day starts at the jump.
    assert start("America/Santiago", dt.date(2026, 9, 6)) == utc(2026, 9, 6, 4, tzinfo=UTC)
    # Toronto jumped from 23:30 to 00:30: the day started at the jump, not an hour later.
    assert start("America/Toronto", dt.date(1919, 3, 31)) == utc(1919, 3, 31, 4, 30, tzinfo=UTC)
    # St. John's set 00:01 back to 23:01: the 31st began at 00:00 NDT, before the day before came back.
    assert start("America/St_Johns", dt.date(1993, 10, 31)) == utc(1993, 10, 31, 2, 30, tzinfo=UTC)
    # Apia skipped 2011-12-30: it starts with the 31st.
    skipped = start("Pacific/Apia", dt.date(2011, 12, 30))
    assert skipped == start("Pacific/Apia", dt.date(2011, 12, 31)) == utc(2011, 12, 30, 10, tzinfo=UTC)


def test_day_periods_use_the_start_of_day_where_the_date_goes_back() -> None:
    # 23:30 NST on Oct 30 came after 00:00 NDT on Oct 31: "today" (days ago 0) by
    # the start of day, one day ago by its local date.
    in_the_hour_back = dt.datetime(1993, 10, 31, 3, 0, tzinfo=UTC)
    now = dt.datetime(1993, 10, 31, 15, 0, tzinfo=UTC)
    ev = Evaluator([Customer("c")], [Event("c", "A", in_the_hour_back)], {}, now, "America/St_Johns")
    today = pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=0, max_days_ago=0))
    assert ev.in_period(today, in_the_hour_back)
    days = pb.EventCondition(
        name="A", days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_EQUAL, days=1)
    )
    assert ev.explain(pb.Filter(event=days), ev.customers[0])[0].held
