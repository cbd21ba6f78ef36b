"""Unit tests of the filter language (eventline_predicates): period arithmetic, the checker and
its limits, and evaluation in Python (no sockets)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from eventline_predicates import evaluation, filters, periods
from eventline_predicates.filters import PeriodSpec
from eventline_shared.errors import InvalidArgument
from tests.support import value
from tests.unit.test_predicates_reference import Evaluator

UTC = dt.UTC
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "America/Santiago"]
instants = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1), timezones=st.just(UTC)
)
clocks = st.builds(
    lambda now, zone: periods.Clock(now, zoneinfo.ZoneInfo(zone)), instants, st.sampled_from(ZONES)
)


@given(clock=clocks, t=instants, comparison=st.integers(1, 6), days=st.integers(0, 400))
def test_days_since_intervals_agree_with_calendar_days(
    clock: periods.Clock, t: dt.datetime, comparison: int, days: int
) -> None:
    """The SQL form (bounds on the last event's time) equals the definition (local dates)."""
    inside = any(i.holds(t) for i in clock.days_since_intervals(comparison, days))
    assert inside == periods.compare(comparison, clock.days_since(t), days)


@given(clock=clocks, t=instants, amount=st.integers(1, 400), low=st.integers(0, 50), span=st.integers(0, 50))
def test_day_periods_agree_with_local_dates(
    clock: periods.Clock, t: dt.datetime, amount: int, low: int, span: int
) -> None:
    days_ago = (clock.today - clock.local_date(t)).days
    last = clock.resolve(PeriodSpec("days", amount=amount))
    assert last.holds(t) == (days_ago <= amount - 1 and t <= clock.now)
    between = clock.resolve(PeriodSpec("days_ago", min_days_ago=low, max_days_ago=low + span))
    assert between.holds(t) == (low <= days_ago <= low + span)


def test_day_start_when_midnight_does_not_exist() -> None:
    # Chile skips 00:00-01:00 on 2026-09-06: the day starts at 01:00 local.
    zone = zoneinfo.ZoneInfo("America/Santiago")
    clock = periods.Clock(dt.datetime(2026, 9, 6, 12, tzinfo=UTC), zone)
    start = clock.day_start(0)
    assert start.astimezone(zone).date() == dt.date(2026, 9, 6)
    assert (start - dt.timedelta(microseconds=1)).astimezone(zone).date() == dt.date(2026, 9, 5)


def test_time_zone_names_are_checked() -> None:
    assert periods.time_zone("") is UTC
    assert str(periods.time_zone("Europe/Berlin")) == "Europe/Berlin"
    for bad in ["Mars/Base", "../etc/passwd", "/etc/localtime", "x" * 100, "a\x00b"]:
        with pytest.raises(InvalidArgument):
            periods.time_zone(bad)


def sample_filter(name: str, code: str, text: str, ref: str) -> pb.Filter:
    event = pb.EventCondition(
        name=name,
        predicates=[
            pb.Predicate(
                field=code,
                operator=pb.OPERATOR_EQUALS,
                value=pb.Operand(literal=common_pb2.Value(string_value=text)),
            ),
            pb.Predicate(field=code, operator=pb.OPERATOR_CONTAINS, value=pb.Operand(reference="$" + ref)),
            pb.Predicate(
                field=code,
                operator=pb.OPERATOR_NOT_IN,
                values=[
                    pb.Operand(literal=common_pb2.Value(string_value=text)),
                    pb.Operand(literal=common_pb2.Value(decimal_value="1.5")),
                ],
            ),
        ],
        count=pb.CountTest(
            at_least=2, period=pb.Period(last=pb.RecentPeriod(amount=3, unit=pb.TIME_UNIT_DAY))
        ),
    )
    attribute = pb.Predicate(
        field=code,
        operator=pb.OPERATOR_STARTS_WITH,
        value=pb.Operand(literal=common_pb2.Value(string_value=text)),
    )
    return pb.Filter(
        any_of=pb.FilterList(
            filters=[
                pb.Filter(event=event),
                pb.Filter(negation=pb.Filter(customer=pb.CustomerCondition(attribute=attribute))),
            ]
        )
    )


def test_checker_reports_every_violation_with_its_path() -> None:
    flt = pb.Filter(
        all_of=pb.FilterList(
            filters=[
                pb.Filter(
                    event=pb.EventCondition(
                        name="A", days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_LESS, days=-1)
                    )
                ),
                pb.Filter(
                    event=pb.EventCondition(
                        name="B",
                        last_occurred=pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=5, max_days_ago=2)),
                    )
                ),
                pb.Filter(customer=pb.CustomerCondition()),
                pb.Filter(
                    event=pb.EventCondition(name="C", first_occurred=pb.Period(absolute=pb.TimeRange()))
                ),
                pb.Filter(
                    event=pb.EventCondition(
                        name="D",
                        predicates=[
                            pb.Predicate(
                                field="x", operator=pb.OPERATOR_EQUALS, value=pb.Operand(reference="item_id")
                            )
                        ],
                    )
                ),
            ]
        )
    )
    checked = filters.check(flt, "filter", {})
    assert checked.root is None
    assert [v.field for v in checked.violations] == [
        "filter.all_of.filters[0].event.days_since_last.days",
        "filter.all_of.filters[1].event.last_occurred.days_ago.max_days_ago",
        "filter.all_of.filters[2].customer",
        "filter.all_of.filters[3].event.first_occurred.absolute",
        "filter.all_of.filters[4].event.predicates[0].value.reference",
    ]


def test_validation_mode_lists_references_without_violations() -> None:
    flt = sample_filter("A", "x", "v", "item_id")
    checked = filters.check(flt, "filter", None)
    assert not checked.violations
    assert checked.references == {"item_id"} and checked.unresolved == {"item_id"}


def test_checking_stops_at_the_node_limit() -> None:
    """300 event conditions with a bad name each: the names met before the 201st node are
    reported, then the node limit, and nothing of the rest is looked at."""
    bad = pb.Filter(event=pb.EventCondition(name="bad name"))
    checked = filters.check(pb.Filter(any_of=pb.FilterList(filters=[bad] * 100)), "f", {})
    assert len(checked.violations) == 100  # under the limit, every problem is listed
    huge = pb.Filter(all_of=pb.FilterList(filters=[pb.Filter(any_of=pb.FilterList(filters=[bad] * 100))] * 3))
    found = [(v.field, v.description) for v in filters.check(huge, "f", {}).violations]
    # Pre-order: the root (1), the first any_of (2) and its 100 leaves (102), the second any_of
    # (103) and its leaves; the 201st node is leaf 97 of the second any_of.
    assert found[-1] == ("f.all_of.filters[1].any_of.filters[97]", "a filter has at most 200 nodes")
    assert len(found) == 100 + 97 + 1
    assert not any(field.startswith("f.all_of.filters[2]") for field, _ in found)


def test_checking_stops_at_the_operand_limit() -> None:
    many = pb.Predicate(
        field="x",
        operator=pb.OPERATOR_IN,
        values=[pb.Operand(literal=common_pb2.Value(integer_value=i)) for i in range(1000)],
    )
    flt = pb.Filter(event=pb.EventCondition(name="A", predicates=[many] * 6))
    found = [(v.field, v.description) for v in filters.check(flt, "f", {}).violations]
    assert found == [("f.event.predicates[5].values[0]", "a filter has at most 5000 operands in all")]
    five = pb.Filter(event=pb.EventCondition(name="A", predicates=[many] * 5))
    assert filters.check(five, "f", {}).root is not None  # 5,000 is allowed


def test_a_million_node_filter_is_refused_after_looking_at_201_nodes() -> None:
    """The attack's filter (100 x 100 x 100 leaves, 1,010,101 nodes): checked in the time of 201."""
    leaf = pb.Filter(event=pb.EventCondition(name="A"))
    level = leaf
    for _ in range(3):
        level = pb.Filter(all_of=pb.FilterList(filters=[level] * 100))
    checked = filters.check(level, "filter", {})
    assert [v.description for v in checked.violations] == ["a filter has at most 200 nodes"]
    # The checker's own count of the nodes it looked at (each ``_Checker.filter`` call counts
    # one first): not a patched method, which the compiled module would never call
    # (eventline_shared.compiled).
    checker = filters._Checker({})
    with pytest.raises(filters._LimitCrossed):
        checker.filter(level, "filter", 1)
    assert checker.nodes == 201


# Trigger predicates: checked by the filter rules, evaluated in Python. -------------------


def decimal(text: str) -> common_pb2.Value:
    return common_pb2.Value(decimal_value=text)


def literal_predicate(op: int, *operands: common_pb2.Value) -> pb.Predicate:
    p = pb.Predicate(field="f", operator=op)  # type: ignore[arg-type]
    if op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        p.values.extend(pb.Operand(literal=o) for o in operands)
    elif operands:
        p.value.CopyFrom(pb.Operand(literal=operands[0]))
    return p


@pytest.mark.parametrize(
    ("op", "operands", "field", "holds"),
    [
        (pb.OPERATOR_EQUALS, [value(5)], value(5), True),
        (pb.OPERATOR_EQUALS, [value(5)], value("5"), False),
        (pb.OPERATOR_EQUALS, [decimal("5.0")], value(5), True),
        (pb.OPERATOR_NOT_EQUALS, [value(5)], value("5"), True),
        (pb.OPERATOR_NOT_EQUALS, [value(5)], None, False),
        (pb.OPERATOR_IN, [value(1), value(2)], value(2), True),
        (pb.OPERATOR_NOT_IN, [value(1), value(2)], value(3), True),
        (pb.OPERATOR_NOT_IN, [value(1)], None, False),
        (pb.OPERATOR_CONTAINS, [value("ett")], value("kettle"), True),
        (pb.OPERATOR_STARTS_WITH, [value("ket")], value("kettle"), True),
        (pb.OPERATOR_STARTS_WITH, [value("ket")], value(5), False),
        (pb.OPERATOR_GREATER, [value(100)], decimal("100.5"), True),
        (pb.OPERATOR_GREATER_OR_EQUAL, [value(100)], value(100), True),
        (pb.OPERATOR_LESS, [value(100)], value("50"), False),
        (
            pb.OPERATOR_LESS_OR_EQUAL,
            [value(dt.datetime(2026, 1, 2, tzinfo=dt.UTC))],
            value(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
            True,
        ),
        (pb.OPERATOR_EXISTS, [], value(False), True),
        (pb.OPERATOR_EXISTS, [], None, False),
        (pb.OPERATOR_NOT_EXISTS, [], None, True),
    ],
)
def test_trigger_predicates(
    op: int, operands: list[common_pb2.Value], field: common_pb2.Value | None, holds: bool
) -> None:
    """A campaign trigger's predicates on an event's context: the segmentation semantics."""
    context = {"f": field} if field is not None else {}
    checked = filters.check_trigger_predicates([literal_predicate(op, *operands)], "p")
    assert checked.violations == []
    [predicate] = checked.predicates
    assert evaluation.predicate_holds(predicate, context) is holds


def test_trigger_predicates_take_literals_within_the_limits_of_an_event_condition() -> None:
    reference = pb.Predicate(field="item-id", operator=pb.OPERATOR_EQUALS, value=pb.Operand(reference="$x"))
    found = filters.check_trigger_predicates([reference], "p")
    assert found.predicates == ()
    assert [(v.field, v.description) for v in found.violations] == [
        ("p[0].field", "field code 'item-id' must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$"),
        ("p[0].value", "trigger predicates take literal values, not references"),
    ]
    ok = literal_predicate(pb.OPERATOR_EXISTS)
    assert [v.field for v in filters.check_trigger_predicates([ok] * 21, "p").violations] == ["p"]
    assert len(filters.check_trigger_predicates([ok] * 20, "p").predicates) == 20
    many = literal_predicate(pb.OPERATOR_IN, *[value(i) for i in range(1001)])
    assert [v.field for v in filters.check_trigger_predicates([many], "p").violations] == ["p[0].values"]
    # 20 predicates of 1,000 operands: more than a filter may hold in all, as a trigger always allowed.
    most = literal_predicate(pb.OPERATOR_IN, *[value(i) for i in range(1000)])
    assert len(filters.check_trigger_predicates([most] * 20, "p").predicates) == 20


_values = st.one_of(
    st.sampled_from(["", "a", "ab", "ba", "5"]).map(value),
    st.integers(-2, 2).map(value),
    st.sampled_from(["-0.5", "1.0", "2", "1e0"]).map(decimal),
    st.booleans().map(value),
    st.sampled_from([dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 2, tzinfo=UTC)]).map(value),
)
_operands_for = {
    **{
        op: _values for op in (pb.OPERATOR_EQUALS, pb.OPERATOR_NOT_EQUALS, pb.OPERATOR_IN, pb.OPERATOR_NOT_IN)
    },
    pb.OPERATOR_CONTAINS: st.sampled_from(["", "a", "b", "ab"]).map(value),
    pb.OPERATOR_STARTS_WITH: st.sampled_from(["", "a", "b", "ab"]).map(value),
    **{
        op: _values.filter(lambda v: v.WhichOneof("kind") not in ("string_value", "boolean_value"))
        for op in (
            pb.OPERATOR_GREATER,
            pb.OPERATOR_GREATER_OR_EQUAL,
            pb.OPERATOR_LESS,
            pb.OPERATOR_LESS_OR_EQUAL,
        )
    },
}


@st.composite
def _checked_predicates(draw: st.DrawFn) -> tuple[pb.Predicate, filters.Predicate]:
    op = draw(st.integers(1, 12))
    if op in (pb.OPERATOR_EXISTS, pb.OPERATOR_NOT_EXISTS):
        sent = literal_predicate(op)
    else:
        count = 3 if op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN) else 1
        sent = literal_predicate(op, *draw(st.lists(_operands_for[op], min_size=1, max_size=count)))
    checked = filters.check_trigger_predicates([sent], "p")
    assert checked.violations == []
    return sent, checked.predicates[0]


@given(predicate=_checked_predicates(), field=st.one_of(st.none(), _values))
def test_predicates_evaluate_as_the_reference_does(
    predicate: tuple[pb.Predicate, filters.Predicate], field: common_pb2.Value | None
) -> None:
    """The Python evaluator (campaign triggers) equals the reference evaluator of the language."""
    sent, checked = predicate
    context = {"f": field} if field is not None else {}
    reference = Evaluator([], [], {}, dt.datetime(2026, 1, 1, tzinfo=UTC), "")
    assert evaluation.predicate_holds(checked, context) is reference.predicate(sent, context)
