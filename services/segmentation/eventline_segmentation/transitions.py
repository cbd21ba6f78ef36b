"""When a customer's membership of a segment changes with time alone.

A filter's answer for one customer depends on the clock through two things
only: the instant ``now`` (hour periods, and the inclusive end ``<= now`` of
"last N days") and ``today``, the local date of ``now`` in the time zone (day
periods, ``days_ago``, days since). Everything else is fixed until an event
arrives or the profile changes: which events match (names, and predicates on
contexts that never change), counts over all time, absolute periods (fixed
instants, compared with fixed ``occurred_at``), profile conditions.

For one tree, one customer, a time zone and ``now``:

* ``plan`` says what to load (one ``Load`` per leaf, the least each needs);
* ``forecast`` answers membership at ``now`` and every instant after it at
  which membership changes with no new event and no profile change (up to
  where the loaded data stops telling);
* ``dependencies`` says which events and profile fields can change the answer.

Semantics are MatchCustomer's (eventline_predicates.evaluation): periods resolve through
``periods.Clock`` (start of day = ``Clock.day_start``), days since through
``Clock.days_since`` (local dates). Instants are exact to the microsecond, the
precision of timestamps: an hour period holds an event for
``occurred_at <= now <= occurred_at + hours``, so the event leaves at
``occurred_at + hours + 1 µs``. docs/segmentation.md ("When membership changes
with time") explains the algorithm.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates.filters import BoolNode, CustomerNode, EventNode, Node, PeriodSpec, walk
from eventline_predicates.periods import Clock, Interval, day_start

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_HOUR = 3_600_000_000  # microseconds
_DAY = 24 * _HOUR
_LAST_DAY = (dt.date.max - _EPOCH.date()).days
"""The last date (9999-12-31) in days since 1970-01-01."""

# Instants are whole microseconds since 1970 here; these two lie beyond every datetime.
_BEFORE_ALL = (dt.datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND - 1
_AFTER_ALL = (dt.datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND + 1

_ADDRESS_FIELDS: dict[int, str] = {
    pb.CHANNEL_EMAIL: "email",
    pb.CHANNEL_SMS: "phone",
    pb.CHANNEL_PUSH: "push_tokens",
}
_CONSENT_FIELDS: dict[int, str] = {
    pb.CHANNEL_EMAIL: "email_consent",
    pb.CHANNEL_SMS: "sms_consent",
    pb.CHANNEL_PUSH: "push_consent",
}


def to_micros(t: dt.datetime) -> int:
    """``t`` (aware) in whole microseconds since 1970, as the forecast counts instants."""
    return (t - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> dt.datetime:
    """The instant ``micros`` microseconds after 1970 (UTC)."""
    return _EPOCH + dt.timedelta(microseconds=micros)


# What can change the answer ----------------------------------------------------------


@dataclass(frozen=True)
class Dependencies:
    """What can change a filter's answer for one customer."""

    event_names: frozenset[str]
    """A new event changes the answer only if its name is one of these."""
    profile_fields: frozenset[str]
    """A profile change changes the answer only if it touches one of these fields
    of eventline.common.v1.Customer ("email", "phone", "push_tokens",
    "email_consent", "sms_consent", "push_consent", "attributes.<code>")."""
    changes_with_time: bool
    """Whether time alone can change the answer (whether the segment needs timers)."""


def dependencies(root: Node) -> Dependencies:
    """The events, profile fields and clock a tree's answer depends on.

    The creation of a customer (by a profile or by their first event) and an
    erasure are not in it: they change who is a candidate at all.
    """
    names: set[str] = set()
    fields: set[str] = set()
    timed = False
    for node in walk(root):
        if isinstance(node, EventNode):
            names.add(node.name)
            timed = timed or _varies_with_time(node)
        elif isinstance(node, CustomerNode):
            if node.test == "address":
                fields.add(_ADDRESS_FIELDS[node.channel])
            elif node.test == "consent":
                fields.add(_CONSENT_FIELDS[node.channel])
            else:
                assert node.predicate is not None
                fields.add(f"attributes.{node.predicate.field}")
    return Dependencies(frozenset(names), frozenset(fields), timed)


SETTLED_MARGIN = dt.timedelta(days=2)
"""Kept below the earliest sliding bound: local dates, DST changes and a date that goes back
move a day's bounds by less than this (also the consumer's pruning, ``pruning.bound``)."""


def settled_before(root: Node, now: dt.datetime, zone: dt.tzinfo) -> dt.datetime | None:
    """An instant such that time alone never changes the answer of a customer whose events of the
    tree's names all happened before it (until a new event): every sliding period only moves
    forward, so an event before its start at ``now`` never counts again, and a last event older
    than a days-since threshold keeps the comparison's answer. None when time changes nothing.
    (A backfill gives timers only to customers with an event at or after it.)"""
    clock = Clock(now, zone)
    bounds: list[dt.datetime] = []
    for node in walk(root):
        if not isinstance(node, EventNode) or not _varies_with_time(node):
            continue
        if node.test == "days":
            bounds.append(clock.day_start(node.days + 1))
        else:
            assert node.period is not None
            start = clock.resolve(node.period).start
            assert start is not None  # sliding periods always have a start
            bounds.append(start)
    return min(bounds) - SETTLED_MARGIN if bounds else None


def _sliding(period: PeriodSpec | None) -> bool:
    return period is not None and period.kind != "absolute"


def _varies_with_time(node: EventNode) -> bool:
    if node.test == "days":
        return True
    if node.test == "count" and node.low <= 0 and node.high is None:
        return False  # at least 0: holds for everyone
    return _sliding(node.period)


def _count_limit(node: EventNode) -> int:
    """How far a count must be known: its bound tells counts apart only up to this.

    ``count >= low`` is the same test on min(count, low); ``low <= count <= high``
    on min(count, high + 1).
    """
    return node.high + 1 if node.high is not None else node.low


# What to load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerNow:
    """Load whether the condition holds at ``now``; time alone never changes it.

    Profile conditions, counts over all time or in an absolute period, last or
    first occurred in an absolute period. Give an ``Answer``.
    """

    node: EventNode | CustomerNode


@dataclass(frozen=True)
class LatestOccurrence:
    """Load ``occurred_at`` of the customer's latest matching event, over all time.

    For days since and "last occurred" in a sliding period. Without predicates
    it is ``customer_event_stats.last_at``. Give an ``Occurrence``.
    """

    node: EventNode


@dataclass(frozen=True)
class EarliestOccurrence:
    """Load ``occurred_at`` of the customer's earliest matching event, over all time.

    For "first occurred" in a sliding period. Without predicates it is
    ``customer_event_stats.first_at``. Give an ``Occurrence``.
    """

    node: EventNode


@dataclass(frozen=True)
class WindowOccurrences:
    """Load, for a count in a sliding period, the ``occurred_at`` of:

    * the newest ``limit`` matching events inside ``window`` (the period at
      ``now``), and
    * the earliest ``limit`` matching events after it (``occurred_at > end``
      when the end is inclusive, ``>= end`` otherwise): events that will enter
      the period.

    Give a ``WindowEvents``. Periods only move forward, so an event before the
    window never counts again (until the local date goes back, where the
    forecast stops); the events inside leave oldest first, and the
    bound tells counts apart only up to ``limit``, so the older ones cannot
    matter. When ``limit`` events come back after the window there may be
    more: the forecast then looks no further than the last one's entry.
    """

    node: EventNode
    window: Interval
    limit: int

    def after(self, occurred_at: dt.datetime) -> bool:
        """Whether an event at ``occurred_at`` lies after the window (it will enter it)."""
        end = self.window.end
        assert end is not None  # sliding periods end at now or at a day start
        return occurred_at > end if self.window.end_inclusive else occurred_at >= end


Load = AnswerNow | LatestOccurrence | EarliestOccurrence | WindowOccurrences


@dataclass(frozen=True)
class Answer:
    """Whether an ``AnswerNow`` condition holds at ``now``."""

    held: bool


@dataclass(frozen=True)
class Occurrence:
    """The ``occurred_at`` asked by a Latest/EarliestOccurrence; None when there is no matching event."""

    at: dt.datetime | None


@dataclass(frozen=True)
class WindowEvents:
    """The ``occurred_at`` values asked by a ``WindowOccurrences``, in any order."""

    inside: tuple[dt.datetime, ...]
    after: tuple[dt.datetime, ...]


Loaded = Answer | Occurrence | WindowEvents


@dataclass(frozen=True)
class LoadPlan:
    """What to load for one customer to forecast ``root`` from ``now`` in ``zone``.

    ``loads`` has one item per leaf of the tree, in pre-order; the loaded values
    are keyed by the leaf's path (``load.node.path``).
    """

    root: Node
    now: dt.datetime
    zone: dt.tzinfo
    loads: tuple[Load, ...]
    clock: Clock = field(compare=False, repr=False)
    """``now`` in ``zone``: its day starts are computed once for every forecast of the plan (a
    consumer batch forecasts hundreds of customers from one plan)."""
    day_starts: dict[dt.date, int] = field(default_factory=dict, compare=False, repr=False)
    """``_Calendar.day_start`` by date, filled by the plan's forecasts (they ask for the same few
    dates)."""
    steps: tuple[_Step, ...] = field(default=(), compare=False, repr=False)
    """Per load, what the forecast reads of it, worked out once for every forecast of the plan."""
    now_micros: int = field(default=0, compare=False, repr=False)
    utc_today: int | None = field(default=None, compare=False, repr=False)
    """In UTC, today in days since 1970-01-01 (``_reach_utc``); else None."""


ANSWER, WINDOW, OCCURRENCE = 0, 1, 2
"""A load's kind (``_Step.kind``): an answer read now, a window's events, an occurrence."""


@dataclass(frozen=True)
class _Step:
    """One load as the forecast reads it: its kind, its leaf's path, and for a window its bounds
    in microseconds since 1970 (``start <= t``, ``t <= end`` or ``t < end``)."""

    kind: int
    path: str
    load: Load
    start: int = _BEFORE_ALL
    end: int = _AFTER_ALL
    end_inclusive: bool = False
    limit: int = 0


def _step(load: Load) -> _Step:
    path = load.node.path
    if isinstance(load, AnswerNow):
        return _Step(ANSWER, path, load)
    if isinstance(load, WindowOccurrences):
        window = load.window
        assert window.end is not None  # sliding periods end at now or at a day start
        start = _BEFORE_ALL if window.start is None else to_micros(window.start)
        return _Step(WINDOW, path, load, start, to_micros(window.end), window.end_inclusive, load.limit)
    return _Step(OCCURRENCE, path, load)


def plan(root: Node, now: dt.datetime, zone: dt.tzinfo, clock: Clock | None = None) -> LoadPlan:
    """What ``forecast`` needs for ``root`` at ``now`` (aware, from 1970 on) in ``zone``; ``clock``:
    a ``Clock`` of that ``now`` and ``zone`` to share (its periods and day starts, resolved once)."""
    if now.tzinfo is None or now < _EPOCH:
        raise ValueError("now must be an aware datetime from 1970 on")
    if clock is None:
        clock = Clock(now, zone)
    elif clock.now != now or clock.zone is not zone:
        raise ValueError("the clock must be at the plan's now and zone")
    loads: list[Load] = []
    for node in walk(root):
        if isinstance(node, CustomerNode):
            loads.append(AnswerNow(node))
        elif isinstance(node, EventNode):
            if not _varies_with_time(node):
                loads.append(AnswerNow(node))
            elif node.test == "count":
                assert node.period is not None
                loads.append(WindowOccurrences(node, clock.resolve(node.period), _count_limit(node)))
            elif node.test == "first":
                loads.append(EarliestOccurrence(node))
            else:
                loads.append(LatestOccurrence(node))
    return LoadPlan(
        root,
        now,
        zone,
        tuple(loads),
        clock,
        steps=tuple(map(_step, loads)),
        now_micros=to_micros(now),
        utc_today=(clock.today - _EPOCH.date()).days if clock.zone is UTC else None,
    )


# The forecast ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """Membership at ``now`` and how time alone changes it, if no event arrives and the profile stays."""

    member: bool
    """Whether the customer matches at ``now``."""
    changes: tuple[dt.datetime, ...]
    """Every instant after ``now`` and before ``recheck`` at which membership
    flips, in order: membership is ``member`` up to (not including) the first,
    the opposite from the first up to the second, and so on."""
    recheck: dt.datetime | None
    """Where the loaded data stops telling (more events may enter a period, or
    the local date goes back to the day before): evaluate again there. None:
    after the last change, membership never changes by time alone."""

    @property
    def next_change(self) -> dt.datetime | None:
        """The first instant after ``now`` at which membership may change: it is
        ``member`` at every instant from ``now`` up to, not including, it."""
        return self.changes[0] if self.changes else self.recheck


def forecast(plan: LoadPlan, loaded: Mapping[str, Loaded]) -> Forecast:
    """Membership at ``plan.now`` and its changes, from the values ``plan`` asked for.

    Each moving condition becomes the instants where it flips; sweeping them in
    time order through the tree gives the instants where the whole answer flips.
    Two shortcuts give the same answer with less work: the conditions time cannot
    move for this customer (answered now, or an occurrence that never happened)
    are read first, and when they decide the tree alone nothing moves it; with a
    single condition flipping, the tree flips at each of its instants or at none.
    """
    values: list[Value] = []
    for step in plan.steps:
        value = loaded.get(step.path)
        if step.kind == ANSWER:
            values.append(_expect(value, Answer, step.path).held)
        elif step.kind == WINDOW:
            events = _expect(value, WindowEvents, step.path)
            values.append((tuple(map(to_micros, events.inside)), tuple(map(to_micros, events.after))))
        else:
            at = _expect(value, Occurrence, step.path).at
            values.append(None if at is None else to_micros(at))
    member, changes, horizon = _forecast(plan, values, every=True)
    return Forecast(
        member, tuple(map(from_micros, changes)), from_micros(horizon) if horizon < _AFTER_ALL else None
    )


_Events = tuple[tuple[int, ...], tuple[int, ...]]
"""A window's instants inside and after it (``WindowEvents``), in microseconds since 1970."""
Value = bool | int | None | _Events
"""A loaded value as ``next_change`` takes it, per load of the plan: an ``AnswerNow``'s answer;
an occurrence's instant (None: no matching event); a window's instants inside and after it. Instants
in microseconds since 1970."""


def next_change(plan: LoadPlan, values: Sequence[Value]) -> tuple[bool, int | None]:
    """``forecast``'s ``member`` and ``next_change`` (in microseconds since 1970), from the loaded
    values in ``plan.loads``' order as ``Value`` says: what a consumer needs of a forecast, without
    its objects (each value's ``Loaded``, the instants' datetimes) or the changes after the first."""
    member, changes, horizon = _forecast(plan, values, every=False)
    if changes:
        return member, changes[0]
    return member, horizon if horizon < _AFTER_ALL else None


def _forecast(plan: LoadPlan, values: Sequence[Value], every: bool) -> tuple[bool, list[int], int]:
    """``forecast``: membership at now, the changes (only the first unless ``every``) and where the
    loaded data stops telling (``_AFTER_ALL``: never), in microseconds since 1970."""
    horizon = _AFTER_ALL  # where the loaded data stops telling
    held: dict[str, bool] = {}
    moving: list[tuple[_Step, Value]] = []
    for step, value in zip(plan.steps, values, strict=True):
        if step.kind == ANSWER:
            held[step.path] = cast(bool, value)
        elif step.kind == WINDOW:
            _check_window(step, cast(_Events, value))  # (an alias: a subscript here costs per call)
            moving.append((step, value))
        elif value is None:
            held[step.path] = False  # every test but counts needs a matching event
        else:
            moving.append((step, value))
    if not moving:
        return _holds(plan.root, held), [], horizon
    if held and (decided := _decided(plan.root, held)) is not None:
        return decided, [], horizon  # time moves nothing the answer depends on
    calendar = _Calendar(plan)
    now = calendar.now
    counted: list[tuple[str, list[tuple[int, int]], int, int | None]] = []
    for step, value in moving:
        node = cast(EventNode, step.load.node)
        if step.kind == WINDOW:
            inside, after = cast(_Events, value)
            period = node.period
            assert period is not None
            if period.kind != "hours" and calendar.utc_today is None:
                # Events that left the period at the start of today (not loaded) come
                # back if today later goes back to the day before.
                calendar.reach(calendar.clock.today)
            spans = [_presence(period, t, calendar) for t in (*inside, *after)]
            if len(after) >= step.limit:
                # More events may follow the last one loaded: nothing is known from its entry on.
                horizon = min(horizon, max(enter for enter, _ in spans[len(inside) :]))
            low, high = node.low, node.high
        else:
            at = cast(int, value)
            low, high = 1, None
            if node.test == "days":
                spans = _days_since_spans(node, at, calendar)
            else:
                assert node.period is not None
                spans = [_presence(node.period, at, calendar)]
        counted.append((step.path, spans, low, high))
    horizon = min(horizon, calendar.recheck)

    flipped: list[tuple[str, list[int]]] = []
    for path, spans, low, high in counted:
        held[path], instants = _count_flips(spans, low, high, now, horizon)
        if instants:
            flipped.append((path, instants))
    member = current = _holds(plan.root, held)
    changes: list[int] = []
    if len(flipped) == 1:
        # The other conditions hold still: the tree flips at every flip of this one, or at none.
        path, instants = flipped[0]
        held[path] = not held[path]
        if _holds(plan.root, held) != member:
            changes = instants
    elif flipped:
        flips: dict[int, list[str]] = {}
        for path, instants in flipped:
            for instant in instants:
                flips.setdefault(instant, []).append(path)
        for instant in sorted(flips):
            for path in flips[instant]:
                held[path] = not held[path]
            if _holds(plan.root, held) != current:
                current = not current
                changes.append(instant)
                if not every:
                    break
    return member, changes, horizon


def _decided(node: Node, held: Mapping[str, bool]) -> bool | None:
    """The tree's answer when the leaves in ``held`` decide it whatever the others are, else None."""
    if isinstance(node, BoolNode):
        if node.op == "not":
            negated = _decided(node.children[0], held)
            return None if negated is None else not negated
        decisive = node.op == "any"  # True decides "any", False decides "all"
        undecided = False
        for child in node.children:
            answer = _decided(child, held)
            if answer is None:
                undecided = True
            elif answer == decisive:
                return decisive
        return None if undecided else not decisive
    return held.get(node.path)


_T = TypeVar("_T")


def _expect(value: Loaded | None, kind: type[_T], path: str) -> _T:
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected a {kind.__name__}, got {value!r}")
    return value


def _check_window(step: _Step, events: _Events) -> None:
    inside, after = events
    limit = step.limit
    if len(inside) > limit or len(after) > limit:
        raise ValueError(f"{step.path}: at most {limit} events inside and after the window")
    # The window is an interval and "after" a ray (``WindowOccurrences.after``): their extremes
    # hold exactly when all do.
    end, inclusive = step.end, step.end_inclusive
    if inside:
        latest = max(inside)
        if min(inside) < step.start or (latest > end if inclusive else latest >= end):
            raise ValueError(f"{step.path}: an event is not where the plan asked for it")
    if after:
        earliest = min(after)
        if earliest <= end if inclusive else earliest < end:
            raise ValueError(f"{step.path}: an event is not where the plan asked for it")


def _holds(node: Node, held: Mapping[str, bool]) -> bool:
    if isinstance(node, BoolNode):
        return node.combine(_holds(child, held) for child in node.children)
    return held[node.path]


def _count_flips(
    spans: list[tuple[int, int]], low: int, high: int | None, now: int, horizon: int
) -> tuple[bool, list[int]]:
    """Whether ``low <= count <= high`` holds at ``now``, and the instants before
    ``horizon`` where it flips, where count(t) is the number of spans
    ``[enter, leave)`` holding t."""
    count = 0
    changes: dict[int, int] = {}
    for enter, leave in spans:
        if leave <= max(enter, now):
            continue
        if enter <= now:
            count += 1
        else:
            changes[enter] = changes.get(enter, 0) + 1
        if leave < _AFTER_ALL:
            changes[leave] = changes.get(leave, 0) - 1

    def bound(n: int) -> bool:
        return n >= low and (high is None or n <= high)

    held = current = bound(count)
    flips: list[int] = []
    for at in sorted(changes):
        if at >= horizon:
            break
        count += changes[at]
        if bound(count) != current:
            current = not current
            flips.append(at)
    return held, flips


def _presence(period: PeriodSpec, at: int, calendar: _Calendar) -> tuple[int, int]:
    """When an event at ``at`` is in a sliding period, from now on: ``[enter, leave)``."""
    if period.kind == "hours":
        return at, min(at + period.amount * _HOUR + 1, _AFTER_ALL)
    today = calendar.utc_today
    if today is not None:  # the same in whole days since 1970 (a UTC day is 24 hours)
        number = at // _DAY
        if period.kind == "days":
            return at, _reach_utc(number + period.amount, today)
        return (
            _reach_utc(number + period.min_days_ago, today),
            _reach_utc(number + period.max_days_ago + 1, today),
        )
    day = calendar.day_of(at)
    if period.kind == "days":
        # start of day (today - (amount - 1)) <= at <= now
        return at, calendar.reach(_plus(day, period.amount))
    # start of day (today - max) <= at < start of day (today - min + 1)
    return (
        calendar.reach(_plus(day, period.min_days_ago)),
        calendar.reach(_plus(day, period.max_days_ago + 1)),
    )


def _days_since_spans(node: EventNode, last: int, calendar: _Calendar) -> list[tuple[int, int]]:
    """When ``days_since <comparison> days`` holds: days since = today - the local date of ``last``
    (microseconds since 1970)."""
    today = calendar.utc_today
    if today is not None:  # the same in whole days since 1970
        number = last // _DAY
        reached, passed = _reach_utc(number + node.days, today), _reach_utc(number + node.days + 1, today)
    else:
        day = calendar.clock.local_date(from_micros(last))
        reached = calendar.reach(_plus(day, node.days))  # days since becomes `days`
        passed = calendar.reach(_plus(day, node.days + 1))  # days since becomes `days + 1`
    comparison = node.comparison
    if comparison == pb.COMPARISON_GREATER:
        return [(passed, _AFTER_ALL)]
    if comparison == pb.COMPARISON_GREATER_OR_EQUAL:
        return [(reached, _AFTER_ALL)]
    if comparison == pb.COMPARISON_LESS:
        return [(_BEFORE_ALL, reached)]
    if comparison == pb.COMPARISON_LESS_OR_EQUAL:
        return [(_BEFORE_ALL, passed)]
    if comparison == pb.COMPARISON_EQUAL:
        return [(reached, passed)]
    return [(_BEFORE_ALL, reached), (passed, _AFTER_ALL)]


def _plus(day: dt.date, days: int) -> dt.date | None:
    """``day`` plus ``days``, or None beyond the calendar."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return None


# Days ---------------------------------------------------------------------------------


def _reach_utc(day: int, today: int) -> int:
    """``_Calendar.reach`` in UTC, dates as days since 1970-01-01: no date goes back, each day
    starts at midnight, and a day beyond the calendar is never reached."""
    if day > _LAST_DAY:
        return _AFTER_ALL
    return _BEFORE_ALL if day <= today else day * _DAY


class _Calendar:
    """Day arithmetic of one forecast: MatchCustomer's day starts, and when today reaches a date.

    Local dates move forward, except where a clock change shortly after midnight
    sets the clock back past midnight (St. John's and Goose Bay changed at 00:01
    until 2010, Casey at 02:00 +11 in 2010): the previous date then comes back
    for a while (see ``_date_goes_back``). ``reach`` assumes dates move forward
    and records in ``recheck`` the first such return on a date it was asked
    about; the forecast looks no further.
    """

    def __init__(self, plan: LoadPlan) -> None:
        """The plan's clock, and its day starts found so far (shared by the forecasts of one plan)."""
        self.clock = plan.clock
        self.zone = plan.clock.zone
        self.now = plan.now_micros
        self.recheck = _AFTER_ALL
        self._starts = plan.day_starts
        self.utc_today = plan.utc_today
        """In UTC, today in days since 1970-01-01 (``_reach_utc``); else None."""

    def day_start(self, day: dt.date) -> int:
        """``Clock.day_start`` of ``day``: the first instant whose local date is ``day`` or later."""
        start = self._starts.get(day)
        if start is None:
            start = _day_start(self.zone, day)
            if start is None:
                start = _AFTER_ALL if day > self.clock.today else _BEFORE_ALL
            self._starts[day] = start
        return start

    def day_of(self, at: int) -> dt.date:
        """The latest date D with day_start(D) <= ``at``: an event at ``at`` is at or after
        the start of day D exactly when D <= day_of(at). (Its local date, except in the
        hour a clock change gives back to the previous date.)"""
        day = self.clock.local_date(from_micros(at))
        while (after := _plus(day, 1)) is not None and self.day_start(after) <= at:
            day = after
        while self.day_start(day) > at:
            day -= dt.timedelta(days=1)
        return day

    def reach(self, day: dt.date | None) -> int:
        """The first instant from now on at which today is ``day`` or later:
        before every instant when it already is, after every instant for None."""
        if day is None:
            return _AFTER_ALL
        today = self.clock.today
        if day < today:
            return _BEFORE_ALL  # dates go back by at most one day, and only to the day before
        back = _date_goes_back(self.zone, day)
        if back is not None and self.now < back[0]:
            self.recheck = min(self.recheck, back[0])  # `day` will be undone for a while
        if day == today:
            return _BEFORE_ALL
        start = self.day_start(day)
        if start > self.now:
            return start
        # ``day`` began before now, yet today is earlier: now lies where the clock
        # went back to the previous date, and ``day`` comes back when that ends.
        if back is not None and back[0] <= self.now < back[1]:
            return back[1]
        # Dates going back by more than a day (date-line moves before 1970) or a
        # midnight gap that is not at midnight would lead here; no zone has them from 1970 on.
        raise RuntimeError(f"the local dates of {self.zone} do not move as expected around {day}")


@functools.lru_cache(maxsize=65_536)
def _day_start(zone: dt.tzinfo, day: dt.date) -> int | None:
    """``periods.day_start`` of ``day`` in ``zone`` (it depends on neither ``now`` nor today), None
    beyond the calendar. Kept across plans: each consumer batch makes plans of its own, and their
    forecasts ask for the same dates (the days of the customers' events)."""
    try:
        return to_micros(day_start(zone, day))
    except OverflowError:
        return None


@functools.lru_cache(maxsize=4096)
def _date_goes_back(zone: dt.tzinfo, day: dt.date) -> tuple[int, int] | None:
    """Where the local date goes back from ``day`` to the day before, if it does:
    the instant the previous date returns, and the instant ``day`` begins again.

    When a clock change sets the clock back past midnight after ``day`` has
    begun, the last wall-clock instant of the previous day happens twice, and
    its second occurrence (fold=1, PEP 495) comes after the first midnight.
    """
    if zone is UTC:
        return None
    try:
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=zone)
        begins = to_micros(midnight.astimezone(UTC))
        # Aware arithmetic is wall-clock arithmetic: 23:59:59.999999 of the day before.
        eve = to_micros((midnight - _MICROSECOND).replace(fold=1).astimezone(UTC))
    except OverflowError:
        return None
    if eve <= begins:
        return None
    # The date is `day` from `begins` until the clock goes back, then the day
    # before until `eve`: bisect for the change.
    low, high = begins, eve
    while high - low > 1:
        middle = (low + high) // 2
        if from_micros(middle).astimezone(zone).date() >= day:
            low = middle
        else:
            high = middle
    return high, eve + 1
