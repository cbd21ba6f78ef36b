"""Unit tests of the segmentation checker, period arithmetic and SQL compiler (no sockets)."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from eventline_segmentation import compiler, filters, periods
from eventline_segmentation.filters import PeriodSpec
from eventline_shared.errors import InvalidArgument

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


def _filter(name: str, code: str, text: str, ref: str) -> pb.Filter:
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


codes = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
# No lone surrogates: protobuf cannot hold them (a client cannot send them), so they only made
# the test fail when Hypothesis happened to draw one.
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30)


@given(name=codes, code=codes, text=texts, ref=codes, bound=texts)
def test_sql_text_depends_only_on_the_shape_of_the_filter(
    name: str, code: str, text: str, ref: str, bound: str
) -> None:
    """Names, codes and values are parameters: hostile ones change nothing in the SQL text."""
    clock = periods.Clock(dt.datetime(2026, 11, 26, tzinfo=UTC), UTC)
    plain = filters.check(_filter("A", "x", "v", "r"), "filter", {"r": common_pb2.Value(string_value="b")})
    wild = filters.check(
        _filter(name, code, text, ref), "filter", {ref: common_pb2.Value(string_value=bound)}
    )
    assert plain.root is not None and wild.root is not None, wild.violations
    for build in (
        lambda root: compiler.count_query(root, clock),
        lambda root: compiler.ids_query(root, clock, "after", 10),
        lambda root: compiler.match_query(root, clock, "someone"),
    ):
        a, b = build(plain.root), build(wild.root)
        assert a.sql == b.sql
        used = {int(n) for n in re.findall(r"\$(\d+)::", a.sql)}
        assert used == set(range(1, len(a.params) + 1)) and len(b.params) == len(a.params)
    hostile = compiler.count_query(wild.root, clock)
    assert text in hostile.params or any(text in str(p) for p in hostile.params)


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
    flt = _filter("A", "x", "v", "item_id")
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
    seen: list[int] = []
    original = filters._Checker.filter

    def counting(self: filters._Checker, f: pb.Filter, path: str, depth: int) -> filters.Node | None:
        seen.append(1)
        return original(self, f, path, depth)

    filters._Checker.filter = counting  # type: ignore[method-assign]
    try:
        checked = filters.check(level, "filter", {})
    finally:
        filters._Checker.filter = original  # type: ignore[method-assign]
    assert [v.description for v in checked.violations] == ["a filter has at most 200 nodes"]
    assert len(seen) == 201
