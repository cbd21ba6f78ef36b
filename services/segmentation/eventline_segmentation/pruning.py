"""Probes a consumer batch need not evaluate: its events provably change nothing (issue 13).

The consumer evaluates every real-time segment that names one of a customer's new events
(``realtime.Affected``). Most of those evaluations find nothing, and two rules tell some of them
apart, exactly, for every instant from the batch's ``now`` on (the first before any database
read, the second from the stored membership and timer):

* **Horizon.** A condition whose answer at every instant ``t >= now`` depends only on events after
  a lower bound that only moves forward with ``t`` (a count or "last occurred" in a sliding
  period: its start; "days since last" below, at most or equal to a number of days: the start of
  that day) is never changed by a matching event older than that bound at ``now``: it is never
  counted again, never the latest one that decides. A segment none of whose conditions any of the
  customer's new events touches (by name, context predicates, and that bound) keeps its answer at
  every instant ``t >= now``, so its stored membership and timer stay right: the probe is not
  evaluated (``UNTOUCHED``).
* **Monotone.** Adding an event makes some conditions truer at every instant, whatever the
  history (a count at least N; "last occurred" in a period ending now, for an event not dated
  ahead; days since last below or at most N) and others falser (a count at most N); through the
  tree (``all``/``any`` keep the direction, ``not`` flips it) the segment's answer then moves one
  way only (``TRUER`` / ``FALSER``). A customer stored in a segment that can only become truer, or
  out of one that can only become falser, keeps that membership at every instant until their stored
  timer (computed without the events: the true next change is no earlier), provided that timer is
  not overdue: the timer then fires and evaluates exactly (``RealtimeSegments._evaluate`` checks
  the stored membership and timer, read in the evaluation's transaction).

Anything else is ``MIXED`` and evaluated as before: "first occurred" (an older event becomes the
first), days since last above, at least or unequal to N (without an earlier event, an old one
makes it hold), counts between two bounds, all-time counts and absolute periods (for the horizon
rule), a segment an empty customer matches (an event may create the customer), a profile notice for
a segment with profile conditions, an event without an instant. docs/segmentation.md ("Probes that
cannot change anything") says more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates.evaluation import predicate_holds
from eventline_predicates.filters import BoolNode, EventNode, Node, Predicate
from eventline_predicates.periods import Clock
from eventline_segmentation.transitions import SETTLED_MARGIN, to_micros
from eventline_shared.values import timestamp_micros

MIXED, TRUER, FALSER, UNTOUCHED = 0, 1, -1, 2
"""What a customer's new events do to a segment's answer at every instant from now on: anything
(evaluate it), only make it truer, only make it falser, nothing."""

_NO_BOUND = -(2**62)
"""A lower bound no event lies before: any matching event may change the condition."""
_LESS_DAYS = {pb.COMPARISON_LESS, pb.COMPARISON_LESS_OR_EQUAL, pb.COMPARISON_EQUAL}
"""Days since last comparisons that hold only for a last event at or after a day's start."""


@dataclass(frozen=True)
class Leaf:
    """One event condition of a tree as the rules read it at one ``now``."""

    node: EventNode
    polarity: int
    """1, or -1 under an odd number of ``not``."""
    bound: int
    """Microseconds since 1970: a matching event before it changes the condition at no instant
    from now on (``_NO_BOUND``: any may)."""
    direction: int
    """``TRUER``, ``FALSER`` or ``MIXED``: what a matching event from the bound on does to the
    condition (``UNTOUCHED``: nothing, a count of at least 0)."""
    ahead_mixed: bool
    """Whether an event dated after now is ``MIXED`` whatever ``direction`` says ("last occurred")."""
    predicates: tuple[Predicate, ...]
    """The condition's context predicates (the node's)."""


class Arrival(NamedTuple):
    """A new event as the rules read it (made once per customer, read for each of their segments)."""

    name: str
    at: int | None
    """``occurred_at`` in microseconds since 1970 (None: not given)."""
    event: common_pb2.Event


def arrivals(events: Iterable[common_pb2.Event]) -> list[Arrival]:
    return [
        Arrival(
            e.name,
            timestamp_micros(e.occurred_at) if e.HasField("occurred_at") else None,
            e,
        )
        for e in events
    ]


def bound(node: EventNode, clock: Clock) -> int:
    """The horizon rule's lower bound of one condition at ``clock.now`` (see ``Leaf.bound``)."""
    try:
        return _bound(node, clock)
    except (OverflowError, ValueError):
        return _NO_BOUND  # a day before the calendar's first: no bound


def _bound(node: EventNode, clock: Clock) -> int:
    if node.test == "first":
        return _NO_BOUND  # an older event becomes the first
    if node.test == "days":
        if node.comparison not in _LESS_DAYS:
            return _NO_BOUND  # without an earlier event, an old one makes "more than" hold
        # Holds only for a last event whose local date is at most ``days`` before today.
        return to_micros(clock.day_start(node.days) - SETTLED_MARGIN)  # local days: the margin
    period = node.period
    if period is None or period.kind == "absolute":
        return _NO_BOUND  # all time, or fixed instants
    start = clock.resolve(period).start
    assert start is not None  # sliding periods always have a start
    return to_micros(start if period.kind == "hours" else start - SETTLED_MARGIN)


def direction(node: EventNode) -> int:
    """The monotone rule's direction of one condition for a matching event (not dated ahead)."""
    if node.test == "count":
        if node.high is None:
            return UNTOUCHED if node.low <= 0 else TRUER
        return FALSER if node.low <= 0 else MIXED
    if node.test == "last":
        # The latest event over all time, in a period that ends now: a new latest one is in it
        # whenever the old one was (it is later, and not after now). Days ago periods end earlier.
        assert node.period is not None
        return TRUER if node.period.kind in ("hours", "days") else MIXED
    if node.test == "days":
        # The latest event only gets later: fewer days since.
        return TRUER if node.comparison in (pb.COMPARISON_LESS, pb.COMPARISON_LESS_OR_EQUAL) else MIXED
    return MIXED


def leaves(root: Node, clock: Clock) -> dict[str, list[Leaf]]:
    """The tree's event conditions by event name, read at ``clock.now``."""
    found: dict[str, list[Leaf]] = {}

    def walk(node: Node, polarity: int) -> None:
        if isinstance(node, BoolNode):
            for child in node.children:
                walk(child, -polarity if node.op == "not" else polarity)
        elif isinstance(node, EventNode):
            leaf = Leaf(
                node, polarity, bound(node, clock), direction(node), node.test == "last", node.predicates
            )
            found.setdefault(node.name, []).append(leaf)

    walk(root, 1)
    return found


class Pruning:
    """The rules for one segment at one ``now``: ``verdict`` of a customer's new events."""

    def __init__(self, root: Node, clock: Clock, *, empty_matches: bool, profile_conditions: bool) -> None:
        self.now = to_micros(clock.now)
        self.by_name = leaves(root, clock)
        self.empty_matches = empty_matches
        self.profile_conditions = profile_conditions
        # What ``verdict`` reads of each leaf an event can touch, by name: its bound, the way it
        # moves the segment (``direction`` times ``polarity``; MIXED stays MIXED), whether an event
        # dated ahead is MIXED, its predicates (a consumer batch asks thousands of verdicts).
        self._checks = {
            name: [
                (leaf.bound, leaf.direction * leaf.polarity, leaf.ahead_mixed, leaf.predicates)
                for leaf in named
                if leaf.direction != UNTOUCHED
            ]
            for name, named in self.by_name.items()
        }

    def verdict(self, events: Iterable[Arrival], profile_changed: bool = False) -> int:
        """What ``events`` (a customer's, new: ``arrivals``) and a profile change do to the
        segment's answer at every instant from now on (``UNTOUCHED``, ``TRUER``, ``FALSER`` or
        ``MIXED``)."""
        if self.empty_matches or (profile_changed and self.profile_conditions):
            return MIXED  # an event may create the customer; the profile moves its conditions
        moved = UNTOUCHED
        for name, at, event in events:
            checks = self._checks.get(name)
            if not checks:
                continue
            if at is None:
                return MIXED
            for bound, way, ahead_mixed, predicates in checks:
                if at < bound or (
                    predicates and not all(predicate_holds(p, event.context) for p in predicates)
                ):
                    continue  # too old for the condition, or not an event it matches
                if way == MIXED or (ahead_mixed and at > self.now):
                    return MIXED
                if moved == UNTOUCHED:
                    moved = way
                elif moved != way:
                    return MIXED
        return moved
