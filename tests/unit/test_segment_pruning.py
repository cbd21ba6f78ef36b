"""Probes a consumer batch need not evaluate (eventline_segmentation.pruning).

Worked examples per condition kind, then a property on the reference evaluator (the oracle of
tests/unit/test_segment_transitions.py): whenever the rules say an added event changes nothing,
or moves the answer one way only, the reference answers with and without it say so at the probe's
instant and at every instant where either answer can change after it (and just before each).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from hypothesis import event, given
from hypothesis import strategies as st

from eventline_predicates import periods
from eventline_segmentation import pruning
from eventline_segmentation.pruning import FALSER, MIXED, TRUER, UNTOUCHED
from eventline_shared import values
from tests.integration.test_segmentation_differential import bindings_strategy
from tests.unit.test_predicates_reference import Event
from tests.unit.test_segment_transitions import (
    HORIZON,
    MICROSECOND,
    PROPERTY_SETTINGS,
    Oracle,
    any_filters,
    checked_tree,
    situations,
    zone_of,
)

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def condition(name: str = "A", *predicates: pb.Predicate, **test: Any) -> pb.Filter:
    return pb.Filter(event=pb.EventCondition(name=name, predicates=predicates, **test))


def recent(amount: int, unit: int = pb.TIME_UNIT_DAY) -> pb.Period:
    return pb.Period(last=pb.RecentPeriod(amount=amount, unit=unit))


def counted(period: pb.Period | None = None, **bound: Any) -> pb.Filter:
    count = pb.CountTest(**bound)
    if period is not None:
        count.period.CopyFrom(period)
    return condition(count=count)


def sent(at: dt.datetime | None, name: str = "A", **context: common_pb2.Value) -> common_pb2.Event:
    found = common_pb2.Event(customer_id="c", name=name, context=context)
    if at is not None:
        found.occurred_at.CopyFrom(values.datetime_to_timestamp(at))
    return found


def verdict(
    flt: pb.Filter,
    *events: common_pb2.Event,
    zone: str = "",
    empty_matches: bool = False,
    profile_conditions: bool = False,
    profile_changed: bool = False,
) -> int:
    rules = pruning.Pruning(
        checked_tree(flt, {}),
        periods.Clock(NOW, zone_of(zone)),
        empty_matches=empty_matches,
        profile_conditions=profile_conditions,
    )
    return rules.verdict(pruning.arrivals(events), profile_changed)


def test_a_count_at_least_in_a_sliding_period_grows_with_a_recent_event_and_ignores_an_old_one() -> None:
    flt = counted(recent(7), at_least=2)
    assert verdict(flt, sent(NOW - 3 * DAY)) == TRUER
    assert verdict(flt, sent(NOW + DAY)) == TRUER  # dated ahead: it enters later, counts more
    assert verdict(flt, sent(NOW - 20 * DAY)) == UNTOUCHED
    # "Last 7 days" starts at the local day 6 days before today: within the two days' margin an
    # event is still looked at.
    assert verdict(flt, sent(NOW - 8 * DAY)) == TRUER
    assert verdict(flt, sent(NOW - 9 * DAY)) == UNTOUCHED


def test_hours_periods_have_an_exact_bound() -> None:
    flt = counted(recent(5, pb.TIME_UNIT_HOUR), at_least=1)
    assert verdict(flt, sent(NOW - dt.timedelta(hours=5))) == TRUER
    assert verdict(flt, sent(NOW - dt.timedelta(hours=5) - MICROSECOND)) == UNTOUCHED


def test_days_ago_periods_are_bounded_by_their_oldest_day() -> None:
    flt = counted(pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=3, max_days_ago=10)), at_least=1)
    assert verdict(flt, sent(NOW - DAY)) == TRUER  # enters the period in two days
    assert verdict(flt, sent(NOW - 11 * DAY)) == TRUER  # within the margin
    assert verdict(flt, sent(NOW - 14 * DAY)) == UNTOUCHED


def test_counts_at_most_shrink_and_bounded_both_ways_are_mixed() -> None:
    assert verdict(counted(recent(7), at_most=1), sent(NOW - DAY)) == FALSER
    assert verdict(counted(recent(7), at_most=1), sent(NOW - 30 * DAY)) == UNTOUCHED
    assert verdict(counted(recent(7), exactly=0), sent(NOW - DAY)) == FALSER
    assert verdict(counted(recent(7), exactly=2), sent(NOW - DAY)) == MIXED
    assert verdict(counted(recent(7), between=pb.CountRange(min=1, max=3)), sent(NOW - DAY)) == MIXED
    assert verdict(counted(recent(7), at_least=0), sent(NOW - DAY)) == UNTOUCHED  # holds for everyone


def test_all_time_counts_and_absolute_periods_have_no_horizon() -> None:
    assert verdict(counted(at_least=1), sent(NOW - 3000 * DAY)) == TRUER
    absolute = pb.Period(absolute=pb.TimeRange(end=values.datetime_to_timestamp(NOW - 100 * DAY)))
    assert verdict(counted(absolute, at_least=1), sent(NOW - 3000 * DAY)) == TRUER
    assert verdict(counted(absolute, at_most=1), sent(NOW - 3000 * DAY)) == FALSER


def test_last_occurred_in_a_period_ending_now_only_grows() -> None:
    flt = condition(last_occurred=recent(7))
    assert verdict(flt, sent(NOW - DAY)) == TRUER
    assert verdict(flt, sent(NOW + MICROSECOND)) == MIXED  # dated ahead: the latest, outside the period
    assert verdict(flt, sent(NOW - 20 * DAY)) == UNTOUCHED
    days_ago = pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=2, max_days_ago=5))
    assert verdict(condition(last_occurred=days_ago), sent(NOW - DAY)) == MIXED
    assert verdict(condition(last_occurred=days_ago), sent(NOW - 20 * DAY)) == UNTOUCHED


def test_first_occurred_is_always_mixed() -> None:
    flt = condition(first_occurred=recent(7))
    assert verdict(flt, sent(NOW - DAY)) == MIXED
    assert verdict(flt, sent(NOW - 200 * DAY)) == MIXED  # it may become the first, outside the period


@pytest.mark.parametrize(
    ("comparison", "recent_event", "old_event"),
    [
        (pb.COMPARISON_LESS, TRUER, UNTOUCHED),
        (pb.COMPARISON_LESS_OR_EQUAL, TRUER, UNTOUCHED),
        (pb.COMPARISON_EQUAL, MIXED, UNTOUCHED),
        # Without an earlier event, an old one makes "more than" hold: never untouched.
        (pb.COMPARISON_GREATER, MIXED, MIXED),
        (pb.COMPARISON_GREATER_OR_EQUAL, MIXED, MIXED),
        (pb.COMPARISON_NOT_EQUAL, MIXED, MIXED),
    ],
)
def test_days_since_last(comparison: int, recent_event: int, old_event: int) -> None:
    flt = condition(days_since_last=pb.DaysSinceTest(comparison=comparison, days=7))
    assert verdict(flt, sent(NOW - DAY)) == recent_event
    assert verdict(flt, sent(NOW - 20 * DAY)) == old_event


def test_negation_flips_and_opposite_moves_are_mixed() -> None:
    bought = counted(recent(7), at_least=1)
    assert verdict(pb.Filter(negation=bought), sent(NOW - DAY)) == FALSER
    assert verdict(pb.Filter(negation=pb.Filter(negation=bought)), sent(NOW - DAY)) == TRUER
    both = pb.Filter(all_of=pb.FilterList(filters=[counted(at_least=1), pb.Filter(negation=bought)]))
    assert verdict(both, sent(NOW - DAY)) == MIXED  # the all-time count truer, the negation falser
    assert verdict(both, sent(NOW - 20 * DAY)) == TRUER  # only the all-time count is touched
    either = pb.Filter(any_of=pb.FilterList(filters=[bought, condition("B", last_occurred=recent(3))]))
    assert verdict(either, sent(NOW - DAY), sent(NOW - DAY, "B")) == TRUER


def test_events_of_other_names_or_contexts_touch_nothing() -> None:
    item_5 = pb.Predicate(
        field="item_id",
        operator=pb.OPERATOR_EQUALS,
        value=pb.Operand(literal=common_pb2.Value(integer_value=5)),
    )
    flt = condition("A", item_5, count=pb.CountTest(period=recent(7), at_least=1))
    assert verdict(flt, sent(NOW - DAY, "B")) == UNTOUCHED
    assert verdict(flt, sent(NOW - DAY, item_id=common_pb2.Value(integer_value=4))) == UNTOUCHED
    assert verdict(flt, sent(NOW - DAY)) == UNTOUCHED  # no item_id at all
    assert verdict(flt, sent(NOW - DAY, item_id=common_pb2.Value(integer_value=5))) == TRUER


def test_what_the_rules_cannot_tell_is_mixed() -> None:
    flt = counted(recent(7), at_least=1)
    # An empty customer matches: the event may have created the customer.
    assert verdict(flt, sent(NOW - 20 * DAY), empty_matches=True) == MIXED
    # A profile notice for a segment with profile conditions.
    assert verdict(flt, profile_changed=True, profile_conditions=True) == MIXED
    assert verdict(flt, profile_changed=True) == UNTOUCHED
    assert verdict(flt, sent(None)) == MIXED  # an event without an instant


def test_a_zone_with_dst_keeps_its_margin() -> None:
    # Europe/Berlin: "last 7 days" starts at local midnight 6 days ago (23:00 UTC the day before).
    flt = counted(recent(7), at_least=1)
    start = dt.datetime(2026, 11, 19, 23, 0, tzinfo=UTC)
    assert verdict(flt, sent(start - 2 * DAY), zone="Europe/Berlin") == TRUER
    assert verdict(flt, sent(start - 2 * DAY - MICROSECOND), zone="Europe/Berlin") == UNTOUCHED


# The property ---------------------------------------------------------------------------------


def as_sent(added: Event) -> common_pb2.Event:
    return sent(added.occurred_at, added.name, **added.context)


@pytest.mark.slow
@pytest.mark.timeout(900)  # examples x a few scans each; generous for a busy machine
@PROPERTY_SETTINGS
@given(
    situation=situations(),
    flt=any_filters,
    bindings=bindings_strategy,
    added=st.sampled_from([-1, -2]),
)
def test_what_the_rules_say_holds_at_every_instant_from_now(
    situation: Any, flt: pb.Filter, bindings: Any, added: int
) -> None:
    """The history without one of its events (the one added), against it with: untouched, the
    same answer; truer, never a member without it and not with it; falser, the reverse. So a
    member a truer event cannot move stays one until the next change computed without it (the
    monotone rule), checked there too."""
    customer, events, now, zone = situation
    root = checked_tree(flt, bindings)
    new = events[added]
    history = [e for i, e in enumerate(events) if i != len(events) + added]
    rules = pruning.Pruning(
        root, periods.Clock(now, zone_of(zone)), empty_matches=False, profile_conditions=False
    )
    found = rules.verdict(pruning.arrivals([as_sent(new)]))
    event({UNTOUCHED: "untouched", TRUER: "truer", FALSER: "falser", MIXED: "mixed"}[found])
    if found == MIXED:
        return
    before = Oracle(flt, customer, history, bindings, zone)
    after = Oracle(flt, customer, events, bindings, zone)
    instants = [now, now + MICROSECOND]
    for t in after.candidates(now, now + HORIZON):
        instants += [t - MICROSECOND, t]
    if len(instants) > 60:
        instants = instants[:: len(instants) // 60 + 1] + instants[-2:]
    for t in instants:
        if t < now:
            continue
        without, with_it = before.member(t), after.member(t)
        if found == UNTOUCHED:
            assert with_it == without, (t, new)
        elif found == TRUER:
            assert with_it or not without, (t, new)
        else:
            assert without or not with_it, (t, new)
    if found in (TRUER, FALSER):
        forecast = before.forecast(root, now)
        if forecast.member == (found == TRUER):
            until = forecast.next_change or now + HORIZON
            for t in (now, now + (until - now) / 2, until - MICROSECOND):
                assert after.member(t) == forecast.member, (t, new)
