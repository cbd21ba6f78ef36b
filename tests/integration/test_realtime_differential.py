"""Real-time membership against MatchCustomer, step by step (Hypothesis).

Random real-time segments (counts in hour and day periods, days ago, days since, first and
last occurred, under all_of / any_of / negation) in zones with and without DST, then random
interleavings of new events (also dated in the past), their consumption (at once, or later: an
event stored and not read yet, as while a hinted import defers the consumer; the events handed
to the consumer as the stream does, so that it prunes the probes they cannot change, or only
their names), clock advances
(across the European DST change of 2026-03-29; due timers fire) and single pages of the
backfill's forecast sweep, all after the clock has moved on from the backfill. After every clock
advance that leaves no event unread (and after the last step), once due timers have fired and the
sweep has ended, each customer's stored membership equals MatchCustomer's answer at the clock's now, and the transitions recorded for a customer alternate (never "entered" twice in a
row) and end in the stored membership; every transition agrees with the reference evaluator
(tests/unit/test_predicates_reference.py) at its own instant over the events (and profiles)
that had arrived by then: none is stamped before the event that caused it.

The second test plays the same steps (with profile changes and erasures among them) over the
shapes the consumer's pruning rules decide (eventline_segmentation.pruning), so that many of its
examples leave probes out by each rule (docs/performance.md says how many);
``EVENTLINE_REALTIME_PRUNING_EXAMPLES`` sets its count.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import asyncpg
import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc
from hypothesis import event, given
from hypothesis import strategies as st

from eventline_shared import values
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream
from eventline_shared.streams.reserved import PROFILE_CHANGED
from tests.conftest import service_env
from tests.fuzzing import differential_examples
from tests.unit.test_predicates_reference import Customer, Evaluator, Event

UTC = dt.UTC
START = dt.datetime(2026, 3, 27, 9, 30, tzinfo=UTC)
CUSTOMERS = ["c0", "c1", "c2"]
EXAMPLES = int(os.environ.get("EVENTLINE_REALTIME_EXAMPLES", "25"))

_STORE = """
WITH stored AS (
    INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at)
    VALUES ($1, $2, $3, $4, $5) RETURNING customer_id, name, occurred_at
)
INSERT INTO customer_event_stats AS s (customer_id, name, first_at, last_at, count)
SELECT customer_id, name, occurred_at, occurred_at, 1 FROM stored
ON CONFLICT (customer_id, name) DO UPDATE SET
    first_at = least(s.first_at, excluded.first_at),
    last_at = greatest(s.last_at, excluded.last_at),
    count = s.count + 1
"""

names = st.sampled_from(["a", "b"])
day_periods = st.one_of(
    st.builds(lambda n: pb.Period(last=pb.RecentPeriod(amount=n, unit=pb.TIME_UNIT_DAY)), st.integers(1, 4)),
    st.builds(
        lambda n: pb.Period(last=pb.RecentPeriod(amount=n, unit=pb.TIME_UNIT_HOUR)), st.integers(1, 60)
    ),
    st.builds(
        lambda low, extra: pb.Period(days_ago=pb.DaysAgoPeriod(min_days_ago=low, max_days_ago=low + extra)),
        st.integers(0, 2),
        st.integers(0, 2),
    ),
)


def _count(name: str, period: pb.Period, bound: str, n: int) -> pb.Filter:
    return pb.Filter(event=pb.EventCondition(name=name, count=pb.CountTest(period=period, **{bound: n})))


leaves = st.one_of(
    st.builds(
        _count, names, day_periods, st.sampled_from(["at_least", "at_most", "exactly"]), st.integers(0, 2)
    ),
    st.builds(
        lambda name, comparison, days: pb.Filter(
            event=pb.EventCondition(
                name=name, days_since_last=pb.DaysSinceTest(comparison=comparison, days=days)
            )
        ),
        names,
        st.integers(1, 6),
        st.integers(0, 3),
    ),
    st.builds(
        lambda name, period: pb.Filter(event=pb.EventCondition(name=name, last_occurred=period)),
        names,
        day_periods,
    ),
    st.builds(
        lambda name, period: pb.Filter(event=pb.EventCondition(name=name, first_occurred=period)),
        names,
        day_periods,
    ),
)


def _trees(conditions: st.SearchStrategy[pb.Filter]) -> st.SearchStrategy[pb.Filter]:
    """Up to three of ``conditions`` under all_of / any_of / negation."""
    return st.recursive(
        conditions,
        lambda children: st.one_of(
            st.builds(
                lambda fs: pb.Filter(all_of=pb.FilterList(filters=fs)),
                st.lists(children, min_size=1, max_size=2),
            ),
            st.builds(
                lambda fs: pb.Filter(any_of=pb.FilterList(filters=fs)),
                st.lists(children, min_size=1, max_size=2),
            ),
            st.builds(lambda f: pb.Filter(negation=f), children),
        ),
        max_leaves=3,
    )


trees = _trees(leaves)
steps = st.lists(
    st.one_of(
        # An event stored, and read by the consumer at once or not (then by a later "read" step).
        # Hours before now: within the filters' periods, or also older than most (ten days).
        st.tuples(
            st.just("event"),
            st.sampled_from(CUSTOMERS),
            names,
            st.one_of(st.integers(0, 80), st.integers(0, 240)),
            st.booleans(),
        ),
        st.tuples(st.just("read")),
        st.tuples(st.just("advance"), st.integers(1, 60 * 60)),  # minutes: up to 2.5 days
        st.tuples(st.just("sweep")),  # one page of one customer of the backfill's forecast sweep
    ),
    min_size=1,
    max_size=8,
)


@pytest.fixture
async def served(db_url: str, stream_key: str, redis_client: stream.Client) -> AsyncIterator[Any]:
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    clock = ManualClock(START)
    connection = await asyncpg.connect(db_url)
    async with running(
        Settings.from_env(service_env(db_url, stream_key)), clock=clock, background=False
    ) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield clock, connection, server, segmentation_pb2_grpc.SegmentationServiceStub(channel)
    await connection.close()


class Scenario(NamedTuple):
    """One example: ``flt`` made real-time in ``zone`` over ``history``, then ``plan``'s steps
    ``lag`` minutes after the backfill (``swept``: its forecast sweep walked first; ``hand_events``:
    the events handed to the consumer, so that it prunes)."""

    flt: pb.Filter
    zone: str
    history: list[tuple[str, str, int]]
    plan: list[tuple[Any, ...]]
    lag: int
    hand_events: bool
    swept: bool


@differential_examples(EXAMPLES)
@given(
    scenario=st.builds(
        Scenario,
        flt=trees,
        zone=st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns"]),
        history=st.lists(st.tuples(st.sampled_from(CUSTOMERS), names, st.integers(0, 120)), max_size=6),
        plan=steps,
        lag=st.sampled_from([0, 0, 30, 6 * 60, 40 * 60]),
        hand_events=st.sampled_from([True, True, False]),
        swept=st.booleans(),
    )
)
async def test_stored_membership_equals_match_customer_at_every_step(served: Any, scenario: Scenario) -> None:
    untouched, monotone = await play(served, scenario)
    if scenario.hand_events:
        event(f"pruned untouched {untouched > 0}, monotone {monotone > 0}")


async def play(served: Any, scenario: Scenario) -> tuple[int, int]:
    """``scenario`` played and checked after every step (the module's docstring); returns how many
    probes the consumer pruned by the horizon rule and by the monotone rule."""
    flt, zone, history, plan, lag, hand_events, swept = scenario
    clock, db, server, stub = served
    clock.set(START)
    await db.execute("DELETE FROM segments")
    await db.execute("DELETE FROM customers")
    await db.execute("DELETE FROM event_outbox")
    for customer in CUSTOMERS:
        # Changed long before the steps (by the test's clock, not the database's): a probe at a
        # past instant is moved to the last profile change only when one came after it.
        await db.execute(
            "INSERT INTO customers (customer_id, created_at, updated_at) VALUES ($1, $2, $2)",
            customer,
            START - dt.timedelta(days=30),
        )
    sequence = 0
    stored_events: list[tuple[Event, dt.datetime]] = []  # with when each arrived
    erased: set[int] = set()  # the indexes in ``stored_events`` of the events erased since
    # Each customer's profile as it changed (email, or None: erased), with when, for the reference.
    profiles: list[tuple[dt.datetime, str, str | None]] = [
        (START - dt.timedelta(days=30), customer, "") for customer in CUSTOMERS
    ]
    unread: dict[str, set[str]] = {}  # names of the events stored and not read yet, by customer
    # The events themselves, handed to the consumer as the stream does (``hand_events``: the
    # probes they provably change nothing of are not evaluated, eventline_segmentation.pruning).
    unread_events: dict[str, list[common_pb2.Event]] = {}
    # How many events and profile changes were stored when each transition (by cursor) was first
    # seen, after the step that recorded it: one stored later, even at the same instant, cannot
    # have caused it.
    stored_by: dict[int, tuple[int, int]] = {}

    def exists(customer: str) -> bool:
        return next(email for _, c, email in reversed(profiles) if c == customer) is not None

    def notify(customer: str, name: str, sent: common_pb2.Event) -> None:
        unread.setdefault(customer, set()).add(name)
        unread_events.setdefault(customer, []).append(sent)

    async def store(customer: str, name: str, hours_ago: int) -> None:
        nonlocal sequence
        sequence += 1
        now = clock.now()
        if not exists(customer):  # an event of an erased customer creates them again
            await db.execute(
                "INSERT INTO customers (customer_id, created_at, updated_at) VALUES ($1, $2, $2)",
                customer,
                now,
            )
            profiles.append((now, customer, ""))
        occurred_at = now - dt.timedelta(hours=hours_ago)
        await db.execute(_STORE, customer, f"e{sequence}", name, occurred_at, now)
        stored_events.append((Event(customer, name, occurred_at), now))
        sent = common_pb2.Event(event_id=f"e{sequence}", customer_id=customer, name=name)
        sent.occurred_at.CopyFrom(values.datetime_to_timestamp(occurred_at))
        notify(customer, name, sent)

    async def change_profile(customer: str, email: str) -> None:
        # UpsertCustomer (creating an erased customer again), then its notice on the stream.
        nonlocal sequence
        sequence += 1
        now = clock.now()
        await db.execute(
            "INSERT INTO customers (customer_id, email, created_at, updated_at) VALUES ($1, $2, $3, $3) "
            "ON CONFLICT (customer_id) DO UPDATE SET email = $2, updated_at = $3",
            customer,
            email,
            now,
        )
        profiles.append((now, customer, email))
        notice = common_pb2.Event(event_id=f"profile.{sequence}", customer_id=customer, name=PROFILE_CHANGED)
        notify(customer, PROFILE_CHANGED, notice)

    async def erase(customer: str) -> None:
        # EraseCustomer: the profile and, by cascade, the events, memberships, timers and
        # transitions go; the customer's entries leave the stream unread.
        await db.execute("DELETE FROM customers WHERE customer_id = $1", customer)
        if exists(customer):
            profiles.append((clock.now(), customer, None))
        erased.update(i for i, (e, _) in enumerate(stored_events) if e.customer_id == customer)
        unread.pop(customer, None)
        unread_events.pop(customer, None)

    def reference(at: dt.datetime, stored: tuple[int, int]) -> Evaluator:
        """The reference evaluator at ``at`` over the first ``stored`` events and profile changes,
        those that had arrived by then."""
        emails = {c: email for when, c, email in profiles[: stored[1]] if when <= at}
        customers = [Customer(c, email=email) for c, email in emails.items() if email is not None]
        arrived = [
            e
            for i, (e, received_at) in enumerate(stored_events[: stored[0]])
            if received_at <= at and i not in erased and emails[e.customer_id] is not None
        ]
        return Evaluator(customers, arrived, {}, at, zone)

    async def read() -> None:
        # Each customer's entries in order, as the consumer group hands them over.
        for customer, seen in sorted(unread.items()):
            await engine.customer_events(customer, seen, unread_events[customer] if hand_events else None)
        unread.clear()
        unread_events.clear()

    for customer, name, hours_ago in history:
        await store(customer, name, hours_ago)
    unread.clear()
    unread_events.clear()  # the backfill reads these
    await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="s", segment=pb.Segment(display_name="S", filter=flt, realtime=True, time_zone=zone)
        )
    )
    engine = server.realtime
    pruned = (engine.pruned_untouched, engine.pruned_monotone)
    await engine.backfill_all()
    backfilled_at = clock.now()
    # The clock moves on ``lag`` minutes before the steps, so the backfill's forecast sweep runs
    # (at the first advance, or page by page) after it: a change due meanwhile is recorded at its
    # own instant when the sweep reaches its customer, unless an event of theirs arrived since.
    clock.advance(dt.timedelta(minutes=lag))
    while swept and await engine.sweep_forecasts() is not None:
        pass  # the whole sweep before the steps (no probe of a segment is pruned while it runs)
    for step in [*plan, ("read",), ("advance", 0)]:
        if step[0] == "event":
            _, customer, name, hours_ago, read_now = step
            await store(customer, name, hours_ago)
            if read_now:
                await read()
        elif step[0] == "profile":
            _, customer, email, read_now = step
            await change_profile(customer, email)
            if read_now:
                await read()
        elif step[0] == "erase":
            await erase(step[1])
        elif step[0] == "read":
            await read()
        elif step[0] == "sweep":
            await engine.sweep_forecasts(limit=1)
        else:
            clock.advance(dt.timedelta(minutes=step[1]))
            while await engine.fire_due():
                pass
        transitions = await db.fetch(
            "SELECT cursor, customer_id, entered, occurred_at FROM segment_transitions "
            "WHERE segment_id = 's' ORDER BY cursor"
        )
        for cursor, customer, entered, at in transitions:
            assert backfilled_at <= at <= clock.now(), (step, customer, at)
            then = reference(at, stored_by.setdefault(cursor, (len(stored_events), len(profiles))))
            assert (customer in then.matching_ids(flt)) == entered, (step, customer, entered, at, flt)
        if step[0] != "advance" or unread:
            continue  # the stored membership waits for the due timers, the sweep or the consumer
        now = values.datetime_to_timestamp(clock.now())
        stored = {
            r[0] for r in await db.fetch("SELECT customer_id FROM segment_members WHERE segment_id = 's'")
        }
        for customer in CUSTOMERS:
            if not exists(customer):
                assert customer not in stored, (step, customer)
                continue
            answer = await stub.MatchCustomer(
                pb.MatchCustomerRequest(segment_id="s", customer_id=customer, now=now, time_zone=zone)
            )
            assert (customer in stored) == answer.matched, (step, customer, clock.now(), flt)
            kinds = [entered for _, c, entered, _ in transitions if c == customer]
            assert all(a != b for a, b in itertools.pairwise(kinds)), (customer, kinds)
            if kinds:
                assert kinds[-1] == (customer in stored), (customer, kinds)
    return engine.pruned_untouched - pruned[0], engine.pruned_monotone - pruned[1]


# Shapes the consumer's pruning rules decide (eventline_segmentation.pruning): counts at least /
# at most and "last occurred" in sliding periods, days since below, at most or equal, each under
# all / any / not, most with a condition an empty customer fails (else every probe is evaluated),
# some with a profile condition; events older than the periods' starts, recent and dated ahead.
names_mostly_a = st.sampled_from(["a", "a", "b"])  # filters and events: most events named by it
sliding = st.one_of(
    st.builds(lambda n: pb.Period(last=pb.RecentPeriod(amount=n, unit=pb.TIME_UNIT_DAY)), st.integers(1, 3)),
    st.builds(
        lambda n: pb.Period(last=pb.RecentPeriod(amount=n, unit=pb.TIME_UNIT_HOUR)), st.integers(1, 30)
    ),
)


def _last_occurred(name: str, period: pb.Period) -> pb.Filter:
    return pb.Filter(event=pb.EventCondition(name=name, last_occurred=period))


def _days_since(name: str, comparison: int, days: int) -> pb.Filter:
    return pb.Filter(
        event=pb.EventCondition(name=name, days_since_last=pb.DaysSinceTest(comparison=comparison, days=days))
    )


def _anchors(named: st.SearchStrategy[str]) -> st.SearchStrategy[pb.Filter]:
    """Conditions on events ``named`` an empty customer fails, each one the rules decide (an
    event makes them truer)."""
    return st.one_of(
        st.builds(_count, named, sliding, st.just("at_least"), st.integers(1, 2)),
        st.builds(_last_occurred, named, sliding),
        st.builds(
            _days_since,
            named,
            st.sampled_from([pb.COMPARISON_LESS, pb.COMPARISON_LESS_OR_EQUAL]),
            st.integers(0, 2),
        ),
    )


anchors = _anchors(names_mostly_a)
prunable_leaves = st.one_of(
    anchors,
    st.builds(_count, names_mostly_a, sliding, st.just("at_most"), st.integers(0, 1)),
    st.builds(_days_since, names_mostly_a, st.just(pb.COMPARISON_EQUAL), st.integers(0, 2)),
)
prunable_trees = _trees(prunable_leaves)
has_email = pb.Filter(customer=pb.CustomerCondition(has_address=pb.CHANNEL_EMAIL))
prunable_filters = st.one_of(
    st.builds(lambda a, t: pb.Filter(all_of=pb.FilterList(filters=[a, t])), anchors, prunable_trees),
    st.builds(lambda a, b: pb.Filter(any_of=pb.FilterList(filters=[a, b])), anchors, anchors),
    st.builds(lambda t: pb.Filter(all_of=pb.FilterList(filters=[t, has_email])), prunable_trees),
    st.builds(lambda a: pb.Filter(any_of=pb.FilterList(filters=[a, has_email])), anchors),
    anchors,
    # An "a" makes these falser: a non-member's stays out until their timer.
    st.builds(
        lambda b, a: pb.Filter(all_of=pb.FilterList(filters=[b, a])),
        _anchors(st.just("b")),
        st.one_of(
            st.builds(_count, st.just("a"), sliding, st.just("at_most"), st.integers(0, 1)),
            _anchors(st.just("a")).map(lambda f: pb.Filter(negation=f)),
        ),
    ),
    prunable_trees,  # an empty customer may match these (then every probe is evaluated)
)
# Hours before now: dated ahead, recent, or older than every condition's horizon (a day's bound
# lies two days before its start: transitions.SETTLED_MARGIN).
hours_ago = st.one_of(st.integers(-30, -1), st.integers(0, 12), st.integers(130, 400), st.integers(130, 400))
events_now = st.tuples(st.just("event"), st.sampled_from(CUSTOMERS), names_mostly_a, hours_ago, st.just(True))
prunable_steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.sampled_from(CUSTOMERS), names_mostly_a, hours_ago, st.booleans()),
        events_now,
        events_now,
        events_now,
        events_now,
        st.tuples(st.just("read")),
        # Minutes: within the hour (timers not yet due), or up to two days (due ones fire).
        st.tuples(st.just("advance"), st.one_of(st.integers(1, 60), st.integers(1, 48 * 60))),
        st.tuples(st.just("sweep")),
        st.tuples(
            st.just("profile"),
            st.sampled_from(CUSTOMERS),
            st.sampled_from(["", "x@example.com"]),
            st.booleans(),
        ),
        st.tuples(st.just("erase"), st.sampled_from(CUSTOMERS)),
    ),
    min_size=4,
    max_size=12,
)
PRUNING_EXAMPLES = int(os.environ.get("EVENTLINE_REALTIME_PRUNING_EXAMPLES", "60"))


@differential_examples(PRUNING_EXAMPLES)
@given(
    scenario=st.builds(
        Scenario,
        flt=prunable_filters,
        zone=st.sampled_from(
            ["UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "America/Santiago"]
        ),
        history=st.lists(
            st.tuples(
                st.sampled_from(CUSTOMERS), names, st.one_of(st.integers(0, 10), st.integers(-20, 100))
            ),
            min_size=3,
            max_size=9,
        ),
        plan=prunable_steps,
        lag=st.sampled_from([0, 0, 30, 6 * 60]),
        hand_events=st.just(True),
        # No probe of a segment is pruned while its forecast sweep runs: mostly walked first.
        swept=st.sampled_from([True, True, True, True, True, False]),
    )
)
async def test_pruned_probes_leave_the_membership_match_customer_gives(
    served: Any, scenario: Scenario
) -> None:
    """The same checks as above, with the events handed to the consumer, over the shapes its
    pruning rules decide, so that many examples prune by each rule."""
    untouched, monotone = await play(served, scenario)
    event(f"pruned untouched {untouched > 0}")
    event(f"pruned monotone {monotone > 0}")
