"""When membership changes with time alone (eventline_segmentation.transitions).

The oracle is the reference evaluator of tests/unit/test_predicates_reference.py,
asked at many instants. Membership depends on the clock only through ``now``
and the local date of ``now``, so it can change only at

* an event's ``occurred_at`` (an event enters "last N hours/days" at its time),
* ``occurred_at + N hours + 1 µs`` (it leaves "last N hours"),
* an instant where the local date changes (wall-clock midnights under each
  UTC offset, and the offset changes themselves),

and the scans below evaluate the reference at every such instant of a
horizon (and just before it, and in between) to find every change. Filters,
predicates and contexts come from the differential test's strategies (every
node, operator, period and test); the time zones and ``now`` values sit around
clock changes: DST, midnight gaps, a skipped day, and dates that go back.
"""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventline_predicates import filters, periods
from eventline_predicates.filters import PeriodSpec
from eventline_segmentation import transitions
from eventline_shared import values
from tests.integration.test_segmentation_differential import (
    _group,
    bindings_strategy,
    contexts,
    customer_conditions,
    filters_strategy,
    predicates,
)
from tests.unit.test_predicates_reference import (
    Customer,
    Evaluator,
    Event,
    _offset_pieces,
    start_of_day,
)

UTC = dt.UTC
MICROSECOND = dt.timedelta(microseconds=1)
EXAMPLES = int(os.environ.get("EVENTLINE_TRANSITIONS_EXAMPLES", "200"))
HORIZON = dt.timedelta(days=45)
"""Every change of the generated filters happens within this of ``now``: periods
and days since reach at most 41 days, and events lie at most 24 hours ahead."""

# (zone, an instant near one of its clock changes)
SCENARIOS = [
    ("", dt.datetime(2026, 11, 26, 12, tzinfo=UTC)),
    ("Asia/Kolkata", dt.datetime(2026, 11, 26, 12, tzinfo=UTC)),
    ("Europe/Berlin", dt.datetime(2026, 3, 29, 1, tzinfo=UTC)),  # 02:00 -> 03:00
    ("Europe/Berlin", dt.datetime(2026, 10, 25, 1, tzinfo=UTC)),  # 03:00 -> 02:00
    ("America/New_York", dt.datetime(2026, 3, 8, 7, tzinfo=UTC)),
    ("America/New_York", dt.datetime(2026, 11, 1, 6, tzinfo=UTC)),
    ("America/Santiago", dt.datetime(2026, 9, 6, 4, tzinfo=UTC)),  # 00:00 -> 01:00: no midnight
    ("America/Santiago", dt.datetime(2026, 4, 5, 3, tzinfo=UTC)),  # 00:00 -> 23:00 the day before
    ("America/Havana", dt.datetime(2026, 3, 8, 5, tzinfo=UTC)),
    ("America/Havana", dt.datetime(2026, 11, 1, 5, tzinfo=UTC)),  # 01:00 -> 00:00: midnight twice
    ("Pacific/Chatham", dt.datetime(2026, 4, 4, 14, tzinfo=UTC)),  # +13:45 -> +12:45
    ("Australia/Lord_Howe", dt.datetime(2026, 4, 4, 15, tzinfo=UTC)),  # 30-minute DST
    ("America/Sao_Paulo", dt.datetime(2018, 2, 18, 2, tzinfo=UTC)),  # 00:00 -> 23:00 the day before
    ("America/Sao_Paulo", dt.datetime(2018, 11, 4, 3, tzinfo=UTC)),  # 00:00 -> 01:00
    ("Pacific/Apia", dt.datetime(2011, 12, 30, 10, tzinfo=UTC)),  # skipped 2011-12-30
    ("America/St_Johns", dt.datetime(2005, 10, 30, 2, 31, tzinfo=UTC)),  # 00:01 -> 23:01: date goes back
    ("America/St_Johns", dt.datetime(2005, 4, 3, 3, 31, tzinfo=UTC)),  # 00:01 -> 01:01
    ("Antarctica/Casey", dt.datetime(2010, 3, 4, 15, tzinfo=UTC)),  # 02:00 +11 -> 23:00 +08
]


def zone_of(name: str) -> dt.tzinfo:
    return periods.time_zone(name)


def local_day_start(zone: str, now: dt.datetime, days_before: int) -> dt.datetime:
    today = now.astimezone(zone_of(zone)).date()
    return start_of_day(zone, today - dt.timedelta(days=days_before))


# (zone, the instant its local date went back to the day before)
DATES_GOING_BACK = [
    ("America/St_Johns", dt.datetime(2005, 10, 30, 2, 31, tzinfo=UTC)),
    ("America/Goose_Bay", dt.datetime(2006, 10, 29, 3, 1, tzinfo=UTC)),
    ("America/Moncton", dt.datetime(2005, 10, 30, 3, 1, tzinfo=UTC)),
    ("Antarctica/Casey", dt.datetime(2010, 3, 4, 15, tzinfo=UTC)),
]


@st.composite
def situations(draw: st.DrawFn, going_back: bool = False) -> tuple[Customer, list[Event], dt.datetime, str]:
    """One customer, their events and profile, a time zone and a ``now`` near a clock change.

    With ``going_back``, ``now`` lies in the 4 days before a date goes back (or in the
    hour it does), and the events in the days around it.
    """
    if going_back:
        zone, anchor = draw(st.sampled_from(DATES_GOING_BACK))
        minutes = st.integers(-4 * 24 * 60, 90)
    else:
        zone, anchor = draw(st.sampled_from(SCENARIOS))
        minutes = st.integers(-3 * 24 * 60, 3 * 24 * 60)
    now = anchor + dt.timedelta(
        minutes=draw(minutes), microseconds=draw(st.sampled_from([0, 0, 1, -1, 499_999]))
    )
    customer = Customer(
        "c",
        email=draw(st.sampled_from(["", "x@example.com"])),
        push_tokens=draw(st.sampled_from([[], ["tok"]])),
        attributes=draw(contexts),
        email_consent=draw(st.integers(0, 2)),
    )
    # Times on the edges the filters use, a microsecond either side, and anywhere.
    if going_back:
        back = [
            anchor,
            *(t for t in local_date_changes(zone, anchor, anchor + dt.timedelta(hours=2)) if t > anchor),
        ]
        edges = st.one_of(
            st.integers(-1, 6).map(lambda days: local_day_start(zone, anchor, days)),
            st.sampled_from(back),
            st.just(now),
        )
        anywhere = st.integers(-6 * 24 * 60, 120).map(lambda m: anchor + dt.timedelta(minutes=m))
    else:
        edges = st.one_of(
            st.integers(-1, 41).map(lambda days: local_day_start(zone, now, days)),
            st.just(now),
            st.integers(0, 72).map(lambda hours: now - dt.timedelta(hours=hours)),
        )
        anywhere = st.integers(-42 * 24 * 60, 24 * 60).map(lambda m: now + dt.timedelta(minutes=m))
    times = st.one_of(
        anywhere, st.tuples(edges, st.sampled_from([0, 0, -1, 1])).map(lambda e: e[0] + e[1] * MICROSECOND)
    )
    events = draw(
        st.lists(
            st.builds(Event, st.just("c"), st.sampled_from(["A", "A", "B", "C"]), times, contexts),
            min_size=2,
            max_size=12,
        )
    )
    return customer, events, now, zone


@st.composite
def sliding_periods(draw: st.DrawFn, days: int) -> pb.Period:
    kind = draw(st.sampled_from(["hours", "days", "days_ago"]))
    if kind == "hours":
        return pb.Period(last=pb.RecentPeriod(amount=draw(st.integers(1, 72)), unit=pb.TIME_UNIT_HOUR))
    if kind == "days":
        return pb.Period(last=pb.RecentPeriod(amount=draw(st.integers(1, days)), unit=pb.TIME_UNIT_DAY))
    low = draw(st.integers(0, days // 4))
    return pb.Period(
        days_ago=pb.DaysAgoPeriod(min_days_ago=low, max_days_ago=low + draw(st.integers(0, days - low)))
    )


@st.composite
def timed_conditions(draw: st.DrawFn, days: int = 40) -> pb.Filter:
    """Event conditions that time alone can change, seldom with a predicate; periods and
    days since of at most ``days`` days."""
    condition = pb.EventCondition(name=draw(st.sampled_from(["A", "B"])))
    if draw(st.integers(0, 3)) == 0:
        condition.predicates.append(draw(predicates()))
    test = draw(st.sampled_from(["count", "count", "count", "last", "first", "days", "days"]))
    if test == "count":
        count = pb.CountTest(period=draw(sliding_periods(days)))
        bound = draw(st.sampled_from(["at_least", "at_most", "exactly", "between"]))
        n = draw(st.sampled_from([1, 1, 2, 3] if bound == "at_least" else [0, 1, 1, 2]))
        if bound == "between":
            count.between.min = n
            count.between.max = n + draw(st.integers(0, 2))
        else:
            setattr(count, bound, n)
        condition.count.CopyFrom(count)
    elif test in ("last", "first"):
        getattr(condition, f"{test}_occurred").CopyFrom(draw(sliding_periods(days)))
    else:
        condition.days_since_last.comparison = draw(st.integers(1, 6))
        condition.days_since_last.days = draw(st.integers(0, days))
    return pb.Filter(event=condition)


def timed_trees(days: int) -> st.SearchStrategy[pb.Filter]:
    return st.recursive(
        st.one_of(timed_conditions(days), timed_conditions(days), customer_conditions()),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(_group("all_of")),
            st.lists(inner, min_size=1, max_size=3).map(_group("any_of")),
            inner.map(lambda f: pb.Filter(negation=f)),
        ),
        max_leaves=4,
    )


# Every node, operator, period and test (the differential test's filters), and more
# often conditions and trees whose answer moves with time.
any_filters = st.one_of(timed_conditions(), timed_trees(40), filters_strategy)
# Short periods and thresholds, so that they fall on the day whose date goes back.
short_filters = st.one_of(timed_conditions(4), timed_trees(4))


class Oracle:
    """The reference evaluator for one customer, filter and zone, at any instant."""

    def __init__(
        self,
        flt: pb.Filter,
        customer: Customer,
        events: list[Event],
        bindings: dict[str, common_pb2.Value],
        zone: str,
    ) -> None:
        self.flt, self.customer, self.events, self.bindings, self.zone = flt, customer, events, bindings, zone
        self.conditions = dict(_leaves(flt, "filter"))

    def at(self, now: dt.datetime) -> Evaluator:
        return Evaluator([self.customer], self.events, self.bindings, now, self.zone)

    def member(self, now: dt.datetime) -> bool:
        return self.at(now).explain(self.flt, self.customer)[0].held

    def load(self, plan: transitions.LoadPlan) -> dict[str, transitions.Loaded]:
        """What the plan asks for, read from the whole history the way its docstrings say."""
        reference = self.at(plan.now)
        explained = {r.path: r for r in reference.explain(self.flt, self.customer)}
        loaded: dict[str, transitions.Loaded] = {}
        for load in plan.loads:
            path = load.node.path
            if isinstance(load, transitions.AnswerNow):
                loaded[path] = transitions.Answer(explained[path].held)
                continue
            condition = self.conditions[path].event
            matching = sorted(
                e.occurred_at
                for e in self.events
                if e.name == condition.name
                and all(reference.predicate(p, e.context) for p in condition.predicates)
            )
            if isinstance(load, transitions.LatestOccurrence):
                loaded[path] = transitions.Occurrence(matching[-1] if matching else None)
            elif isinstance(load, transitions.EarliestOccurrence):
                loaded[path] = transitions.Occurrence(matching[0] if matching else None)
            else:
                inside = [t for t in matching if load.window.holds(t)]
                # The window is the reference's period at now.
                assert len(inside) == sum(reference.in_period(condition.count.period, t) for t in matching)
                after = [t for t in matching if load.after(t)]
                assert all(t > i for t in after for i in inside)
                loaded[path] = transitions.WindowEvents(
                    tuple(inside[::-1][: load.limit]), tuple(after[: load.limit])
                )
        return loaded

    def forecast(self, root: filters.Node, now: dt.datetime) -> transitions.Forecast:
        plan = transitions.plan(root, now, zone_of(self.zone))
        loaded = self.load(plan)
        found = transitions.forecast(plan, loaded)
        # What the real-time consumer asks of the same values: the answer and the first change.
        assert transitions.next_change(plan, as_values(plan, loaded)) == (
            found.member,
            None if found.next_change is None else micros(found.next_change),
        )
        return found

    def candidates(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        """Every instant in (start, end] where the reference's answer can change (see the module docstring)."""
        hours = {
            c.event.count.period.last.amount
            for c in self.conditions.values()
            if c.event.count.period.last.unit == pb.TIME_UNIT_HOUR
        } | {
            getattr(c.event, test).last.amount
            for c in self.conditions.values()
            for test in ("last_occurred", "first_occurred")
            if getattr(c.event, test).last.unit == pb.TIME_UNIT_HOUR
        }
        found = set()
        for e in self.events:
            found.add(e.occurred_at)
            found.update(e.occurred_at + dt.timedelta(hours=h) + MICROSECOND for h in hours)
        found.update(local_date_changes(self.zone, start, end))
        return sorted(t for t in found if start < t <= end)


def micros(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=UTC)) // MICROSECOND


def as_values(plan: transitions.LoadPlan, loaded: dict[str, transitions.Loaded]) -> list[transitions.Value]:
    """``loaded`` as ``transitions.next_change`` takes it (what the consumer reads from its rows)."""
    found: list[transitions.Value] = []
    for load in plan.loads:
        value = loaded[load.node.path]
        if isinstance(value, transitions.Answer):
            found.append(value.held)
        elif isinstance(value, transitions.Occurrence):
            found.append(None if value.at is None else micros(value.at))
        else:
            found.append((tuple(map(micros, value.inside)), tuple(map(micros, value.after))))
    return found


def _leaves(f: pb.Filter, path: str) -> Iterator[tuple[str, pb.Filter]]:
    kind = f.WhichOneof("node")
    if kind in ("all_of", "any_of"):
        for i, child in enumerate(getattr(f, kind).filters):
            yield from _leaves(child, f"{path}.{kind}.filters[{i}]")
    elif kind == "negation":
        yield from _leaves(f.negation, f"{path}.negation")
    elif kind == "event":
        yield path, f


def local_date_changes(zone: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Every instant in [start, end) at which the local date may change: offset changes, and
    each wall-clock midnight under the offset of its stretch."""
    if not zone or zone == "UTC":
        day = start.date()
        return [
            dt.datetime(day.year, day.month, day.day, tzinfo=UTC) + dt.timedelta(days=i)
            for i in range((end - start).days + 2)
        ]
    pieces = _offset_pieces(zoneinfo.ZoneInfo(zone), start, end)
    ends = [begin for begin, _ in pieces[1:]] + [end]
    found = []
    for (begin, offset), stop in zip(pieces, ends, strict=True):
        found.append(begin)
        day = (begin + offset).date() + dt.timedelta(days=1)
        while (midnight := dt.datetime(day.year, day.month, day.day, tzinfo=UTC) - offset) < stop:
            found.append(midnight)
            day += dt.timedelta(days=1)
    return found


def scan(oracle: Oracle, start: dt.datetime, end: dt.datetime) -> tuple[bool, list[dt.datetime]]:
    """The reference's membership at ``start`` and every instant in (start, end] where it changes."""
    member = first = oracle.member(start)
    changes = []
    previous = start
    for t in oracle.candidates(start, end):
        # Between candidates the answer cannot move: check just before this one and midway.
        assert oracle.member(t - MICROSECOND) == member, ("changed before a candidate", t)
        assert oracle.member(previous + (t - previous) / 2) == member, ("changed between candidates", t)
        if oracle.member(t) != member:
            member = not member
            changes.append(t)
        previous = t
    return first, changes


def checked_tree(flt: pb.Filter, bindings: dict[str, common_pb2.Value]) -> filters.Node:
    checked = filters.check(flt, "filter", bindings)
    assert checked.root is not None, checked.violations
    return checked.root


PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_first_change(situation: Any, flt: pb.Filter, bindings: dict[str, common_pb2.Value]) -> None:
    """The forecast's changes are exactly the reference's up to the recheck; membership is
    constant from now up to the next one, a microsecond before it and across clock changes."""
    customer, events, now, zone = situation
    oracle = Oracle(flt, customer, events, bindings, zone)
    forecast = oracle.forecast(checked_tree(flt, bindings), now)
    member, changes = scan(oracle, now, now + HORIZON)
    assert forecast.member == member
    recheck = forecast.recheck
    assert list(forecast.changes) == [c for c in changes if recheck is None or c < recheck]
    t = forecast.next_change
    if t is None:
        return
    assert t > now
    for sample in (now, now + MICROSECOND, t - MICROSECOND, now + (t - now) / 3):
        if sample < t:
            assert oracle.member(sample) == member, sample
    for change in local_date_changes(zone, now, min(t, now + HORIZON)):
        if now <= change < t:
            assert oracle.member(change) == member, change
    if forecast.changes:
        assert oracle.member(t) != member


def assert_jumps_meet_every_change(
    situation: Any, flt: pb.Filter, bindings: dict[str, common_pb2.Value]
) -> None:
    """What a scheduler does: evaluate, wait until the forecast instant, repeat. It sees the
    reference's membership at every stop, stops at exactly the changes a dense scan finds,
    and finally hears that nothing more will change."""
    customer, events, now, zone = situation
    oracle = Oracle(flt, customer, events, bindings, zone)
    root = checked_tree(flt, bindings)
    member, changes = scan(oracle, now, now + HORIZON)
    seen: list[dt.datetime] = []
    forecast = oracle.forecast(root, now)
    assert forecast.member == member
    while forecast.next_change is not None:
        t = forecast.next_change
        assert t <= now + HORIZON, "a change after the last one the scan found"
        previous = forecast
        forecast = oracle.forecast(root, t)
        assert forecast.member == oracle.member(t), t
        if forecast.member != previous.member:
            seen.append(t)
        else:
            assert not previous.changes, ("a forecast change that did not happen", t)
        assert len(seen) <= len(changes), "a change the scan did not find"
    assert seen == changes


@pytest.mark.slow
@pytest.mark.timeout(900)  # examples x a scan each; generous for a busy machine
@PROPERTY_SETTINGS
@given(situation=situations(), flt=any_filters, bindings=bindings_strategy)
def test_the_forecast_is_the_first_change(situation: Any, flt: pb.Filter, bindings: Any) -> None:
    assert_first_change(situation, flt, bindings)


@pytest.mark.slow
@pytest.mark.timeout(900)  # examples x a scan each; generous for a busy machine
@PROPERTY_SETTINGS
@given(situation=situations(), flt=any_filters, bindings=bindings_strategy)
def test_jumping_from_forecast_to_forecast_meets_every_change(
    situation: Any, flt: pb.Filter, bindings: Any
) -> None:
    assert_jumps_meet_every_change(situation, flt, bindings)


@pytest.mark.slow
@pytest.mark.timeout(900)  # examples x a scan each; generous for a busy machine
@PROPERTY_SETTINGS
@given(situation=situations(going_back=True), flt=short_filters, bindings=bindings_strategy)
def test_forecasts_where_the_date_goes_back(situation: Any, flt: pb.Filter, bindings: Any) -> None:
    """Zones whose local date went back to the day before for an hour (until 2010)."""
    assert_first_change(situation, flt, bindings)
    assert_jumps_meet_every_change(situation, flt, bindings)


# Worked examples ----------------------------------------------------------------------------

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def event_filter(name: str, **test: Any) -> pb.Filter:
    return pb.Filter(event=pb.EventCondition(name=name, **test))


def last_days(amount: int, unit: int = pb.TIME_UNIT_DAY) -> pb.Period:
    return pb.Period(last=pb.RecentPeriod(amount=amount, unit=unit))


def days_since(comparison: int, days: int) -> pb.DaysSinceTest:
    return pb.DaysSinceTest(comparison=comparison, days=days)


def forecast_of(
    flt: pb.Filter, events: list[Event], now: dt.datetime, zone: str, customer: Customer | None = None
) -> transitions.Forecast:
    oracle = Oracle(flt, customer or Customer("c"), events, {}, zone)
    return oracle.forecast(checked_tree(flt, {}), now)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


def test_three_purchases_in_30_days_ends_when_the_third_newest_turns_30_days_old() -> None:
    purchases = [
        berlin(2026, 3, 2, 9),
        berlin(2026, 3, 10, 18),
        berlin(2026, 3, 20, 7),
        berlin(2026, 3, 25, 7),
    ]
    flt = event_filter("purchase", count=pb.CountTest(period=last_days(30), at_least=3))
    now = berlin(2026, 3, 26, 12)
    forecast = forecast_of(flt, [Event("c", "purchase", t) for t in purchases], now, "Europe/Berlin")
    # Last 30 days = today and the 29 days before: the purchase of March 10th drops out
    # when April 9th begins, at local midnight (summer time by then).
    assert forecast == transitions.Forecast(True, (berlin(2026, 4, 9),), None)
    assert forecast.next_change == dt.datetime(2026, 4, 8, 22, tzinfo=UTC)

    hourly = event_filter(
        "purchase", count=pb.CountTest(period=last_days(720, pb.TIME_UNIT_HOUR), at_least=3)
    )
    forecast = forecast_of(hourly, [Event("c", "purchase", t) for t in purchases], now, "Europe/Berlin")
    assert forecast.changes == (purchases[1] + dt.timedelta(hours=720, microseconds=1),)


def test_days_since_last_visit_above_14_starts_at_the_midnight_that_begins_the_15th_day() -> None:
    flt = event_filter("visit", days_since_last=days_since(pb.COMPARISON_GREATER, 14))
    last_visit = berlin(2026, 3, 14, 23, 59)
    now = berlin(2026, 3, 20, 8)
    forecast = forecast_of(flt, [Event("c", "visit", last_visit)], now, "Europe/Berlin")
    # March 29th (DST starts at 02:00) is the 15th day: it begins at 00:00 CET.
    assert forecast == transitions.Forecast(False, (dt.datetime(2026, 3, 28, 23, tzinfo=UTC),), None)


def test_time_alone_never_changes_absolute_periods_counts_or_profiles() -> None:
    start = dt.datetime(2026, 3, 1, tzinfo=UTC)
    absolute = pb.Period(absolute=pb.TimeRange(start=values.datetime_to_timestamp(start)))
    flt = pb.Filter(
        all_of=pb.FilterList(
            filters=[
                event_filter("A", count=pb.CountTest(period=absolute, at_least=1)),
                event_filter("A", last_occurred=absolute),
                event_filter("A", count=pb.CountTest(at_most=5)),
                pb.Filter(customer=pb.CustomerCondition(has_address=pb.CHANNEL_EMAIL)),
            ]
        )
    )
    now = dt.datetime(2026, 3, 26, tzinfo=UTC)
    events = [Event("c", "A", now - dt.timedelta(days=2)), Event("c", "A", now + dt.timedelta(hours=5))]
    forecast = forecast_of(flt, events, now, "", Customer("c", email="x@example.com"))
    assert forecast == transitions.Forecast(True, (), None)
    plan = transitions.plan(checked_tree(flt, {}), now, UTC)
    assert all(isinstance(load, transitions.AnswerNow) for load in plan.loads)
    assert not transitions.dependencies(checked_tree(flt, {})).changes_with_time


def test_the_forecast_is_where_the_whole_filter_changes_not_the_first_condition() -> None:
    # A visit 1 hour ago holds "visited in the last 2 hours" for one more hour, but the
    # customer is in only while the NOT(purchase in the last 3 days) holds as well.
    now = dt.datetime(2026, 5, 10, 12, tzinfo=UTC)
    flt = pb.Filter(
        any_of=pb.FilterList(
            filters=[
                pb.Filter(
                    all_of=pb.FilterList(
                        filters=[
                            event_filter("visit", count=pb.CountTest(period=last_days(2, pb.TIME_UNIT_HOUR))),
                            pb.Filter(
                                negation=event_filter("purchase", count=pb.CountTest(period=last_days(3)))
                            ),
                        ]
                    )
                ),
                event_filter("visit", days_since_last=days_since(pb.COMPARISON_EQUAL, 2)),
            ]
        )
    )
    events = [
        Event("c", "visit", now - dt.timedelta(hours=1)),
        Event("c", "purchase", now - dt.timedelta(days=1)),
    ]
    # Out now (a purchase yesterday); the visit leaves its 2 hours at 13:00 (no change: still
    # out); "days since the visit = 2" holds on May 12th only.
    forecast = forecast_of(flt, events, now, "")
    may = [dt.datetime(2026, 5, day, tzinfo=UTC) for day in (12, 13)]
    assert forecast == transitions.Forecast(False, tuple(may), None)


def test_events_beyond_the_loaded_ones_make_the_forecast_a_recheck() -> None:
    # "Between 7 and 14 days ago, at most once": events of the last 7 days will enter.
    flt = event_filter(
        "A",
        count=pb.CountTest(
            period=pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=7, max_days_ago=14)), at_most=1
        ),
    )
    now = dt.datetime(2026, 5, 10, 12, tzinfo=UTC)
    events = [Event("c", "A", now - dt.timedelta(days=d)) for d in (1, 2, 3, 4)]
    plan = transitions.plan(checked_tree(flt, {}), now, UTC)
    (load,) = plan.loads
    assert isinstance(load, transitions.WindowOccurrences) and load.limit == 2
    # The earliest two (4 and 3 days ago) are loaded. The count reaches 2 when the second
    # enters, 7 days after its day; more events could enter then too (none loaded), so
    # that is a recheck.
    assert forecast_of(flt, events, now, "") == transitions.Forecast(
        True, (), dt.datetime(2026, 5, 14, tzinfo=UTC)
    )


def test_a_date_that_goes_back_is_a_recheck() -> None:
    # St. John's, 2005-10-30: 00:01 NDT became 23:01 NST of the 29th.
    flt = event_filter("A", days_since_last=days_since(pb.COMPARISON_GREATER_OR_EQUAL, 1))
    last = dt.datetime(2005, 10, 29, 12, tzinfo=UTC)
    now = dt.datetime(2005, 10, 29, 20, tzinfo=UTC)
    forecast = forecast_of(flt, [Event("c", "A", last)], now, "America/St_Johns")
    # The 30th begins at 00:00 NDT (02:30 UTC): days since becomes 1. A minute later the
    # 29th comes back for an hour, and days since is 0 again: evaluate there.
    at_0230, at_0231, at_0330 = (
        dt.datetime(2005, 10, 30, h, m, tzinfo=UTC) for h, m in ((2, 30), (2, 31), (3, 30))
    )
    assert forecast == transitions.Forecast(False, (at_0230,), at_0231)
    assert forecast_of(flt, [Event("c", "A", last)], at_0230, "America/St_Johns") == transitions.Forecast(
        True, (), at_0231
    )
    assert forecast_of(flt, [Event("c", "A", last)], at_0231, "America/St_Johns") == transitions.Forecast(
        False, (at_0330,), None
    )


def test_plans_load_the_least_each_condition_needs() -> None:
    now = dt.datetime(2026, 5, 10, 12, tzinfo=UTC)
    flt = pb.Filter(
        all_of=pb.FilterList(
            filters=[
                event_filter("A", count=pb.CountTest(period=last_days(30), at_least=3)),
                event_filter(
                    "A", count=pb.CountTest(period=last_days(30), between=pb.CountRange(min=1, max=4))
                ),
                event_filter("B", days_since_last=days_since(pb.COMPARISON_GREATER, 14)),
                event_filter("B", first_occurred=last_days(7)),
                event_filter("C", count=pb.CountTest(period=last_days(2), at_least=0)),
                pb.Filter(
                    customer=pb.CustomerCondition(
                        attribute=pb.Predicate(field="tier", operator=pb.OPERATOR_EXISTS)
                    )
                ),
            ]
        )
    )
    root = checked_tree(flt, {})
    loads = transitions.plan(root, now, UTC).loads
    kinds = [type(load).__name__ for load in loads]
    assert kinds == [
        "WindowOccurrences",
        "WindowOccurrences",
        "LatestOccurrence",
        "EarliestOccurrence",
        "AnswerNow",
        "AnswerNow",
    ]
    window = loads[0]
    assert isinstance(window, transitions.WindowOccurrences)
    assert window.limit == 3 and window.window.start == dt.datetime(2026, 4, 11, tzinfo=UTC)
    assert window.window.end == now and window.window.end_inclusive
    assert isinstance(loads[1], transitions.WindowOccurrences) and loads[1].limit == 5
    assert transitions.dependencies(root) == transitions.Dependencies(
        frozenset({"A", "B", "C"}), frozenset({"attributes.tier"}), True
    )


def test_dependencies_name_profile_fields() -> None:
    flt = pb.Filter(
        any_of=pb.FilterList(
            filters=[
                pb.Filter(customer=pb.CustomerCondition(has_address=pb.CHANNEL_PUSH)),
                pb.Filter(negation=pb.Filter(customer=pb.CustomerCondition(consent_granted=pb.CHANNEL_SMS))),
            ]
        )
    )
    assert transitions.dependencies(checked_tree(flt, {})) == transitions.Dependencies(
        frozenset(), frozenset({"push_tokens", "sms_consent"}), False
    )


def test_loaded_values_must_match_the_plan() -> None:
    now = dt.datetime(2026, 5, 10, 12, tzinfo=UTC)
    root = checked_tree(event_filter("A", count=pb.CountTest(period=last_days(3), at_least=1)), {})
    plan = transitions.plan(root, now, UTC)
    with pytest.raises(ValueError, match="expected a WindowEvents"):
        transitions.forecast(plan, {"filter": transitions.Answer(True)})
    with pytest.raises(ValueError, match="not where the plan asked"):
        transitions.forecast(plan, {"filter": transitions.WindowEvents((now + MICROSECOND,), ())})
    with pytest.raises(ValueError, match="not where the plan asked"):
        transitions.next_change(plan, [((micros(now) + 1,), ())])
    with pytest.raises(ValueError, match="not where the plan asked"):
        transitions.next_change(plan, [((), (micros(now),))])
    with pytest.raises(ValueError, match="at most 1 events"):
        transitions.next_change(plan, [((micros(now), micros(now) - 1), ())])
    with pytest.raises(ValueError, match="from 1970 on"):
        transitions.plan(root, dt.datetime(1969, 12, 31, tzinfo=UTC), UTC)


# The reference is MatchCustomer -------------------------------------------------------------

ALL_ZONES = sorted(periods.iana_zones())


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ALL_ZONES),
    now=st.datetimes(
        min_value=dt.datetime(1970, 1, 3), max_value=dt.datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    back=st.integers(-2 * 24 * 60, 3 * 24 * 60),
    amount=st.integers(1, 4),
    low=st.integers(0, 3),
    span=st.integers(0, 2),
)
def test_the_reference_resolves_periods_as_match_customer_does(
    zone: str, now: dt.datetime, back: int, amount: int, low: int, span: int
) -> None:
    """In every IANA zone: day periods and days since of the reference equal those of
    periods.Clock, which MatchCustomer uses, for events from 1970 on."""
    t = max(now - dt.timedelta(minutes=back), dt.datetime(1970, 1, 1, tzinfo=UTC))
    clock = periods.Clock(now, zone_of(zone))
    reference = Evaluator([Customer("c")], [], {}, now, zone)
    last = pb.Period(last=pb.RecentPeriod(amount=amount, unit=pb.TIME_UNIT_DAY))
    assert clock.resolve(PeriodSpec("days", amount=amount)).holds(t) == reference.in_period(last, t)
    between = pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=low, max_days_ago=low + span))
    spec = PeriodSpec("days_ago", min_days_ago=low, max_days_ago=low + span)
    assert clock.resolve(spec).holds(t) == reference.in_period(between, t)
    assert clock.days_since(t) == (reference.today - reference.local_date(t)).days
