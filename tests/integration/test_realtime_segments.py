"""Real-time segments end to end: ingestion stores events, its relay publishes them, segmentation's
consumer group and timers keep membership; the clock is a ManualClock moved by the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc
from google.protobuf import field_mask_pb2

from eventline_predicates import filters, periods
from eventline_segmentation import compiler, realtime
from eventline_segmentation.membership import Definition
from eventline_shared import values
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup
from eventline_shared.streams.reserved import PROFILE_CHANGED
from tests.conftest import service_env
from tests.support import attribute_equals, customer_event, eventually, plan_scans, violations

UTC = dt.UTC
START = dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def purchases(at_least: int, days: int, unit: int = pb.TIME_UNIT_DAY) -> pb.Filter:
    """At least ``at_least`` purchases in the last ``days`` days (or other ``unit``s)."""
    return pb.Filter(
        event=pb.EventCondition(
            name="purchase",
            count=pb.CountTest(
                period=pb.Period(last=pb.RecentPeriod(amount=days, unit=unit)), at_least=at_least
            ),
        )
    )


@dataclass
class Suite:
    clock: ManualClock
    ingestion_server: Any
    segmentation_server: Any
    ingestion: ingestion_pb2_grpc.IngestionServiceStub
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub
    db: asyncpg.Connection

    async def track(self, customer_id: str, name: str, occurred_at: dt.datetime | None = None) -> None:
        request = customer_event(customer_id, name)
        if occurred_at is not None:
            request.occurred_at.CopyFrom(values.datetime_to_timestamp(occurred_at))
        await self.ingestion.TrackCustomerEvent(request)

    async def settle(self) -> None:
        """Publish what ingestion stored and consume it, twice: transitions are events too."""
        for _ in range(2):
            await self.ingestion_server.relay.drain()
            await self.segmentation_server.consumer.drain()

    async def fire_and_settle(self, *, fire_first: bool) -> None:
        """Fire what is due (forecast sweeps and timers) until nothing is, and ``settle``; or
        ``settle`` first."""
        if not fire_first:
            await self.settle()
        while await self.segmentation_server.realtime.fire_due():
            pass
        if fire_first:
            await self.settle()

    async def save(self, segment_id: str, flt: pb.Filter, *, time_zone: str = "") -> None:
        await self.segmentation.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id=segment_id,
                segment=pb.Segment(
                    display_name=f"name of {segment_id}", filter=flt, realtime=True, time_zone=time_zone
                ),
            )
        )
        await self.segmentation_server.realtime.backfill_all()

    async def members(self, segment_id: str, page_size: int = 0) -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            page = await self.segmentation.ListSegmentMembers(
                pb.ListSegmentMembersRequest(segment_id=segment_id, page_size=page_size, page_token=token)
            )
            found += [m.customer_id for m in page.members]
            token = page.next_page_token
            if not token:
                return found

    async def watch(self, segment_id: str, after: int, count: int) -> list[pb.WatchSegmentResponse]:
        call = self.segmentation.WatchSegment(
            pb.WatchSegmentRequest(segment_id=segment_id, after_cursor=after)
        )
        got: list[pb.WatchSegmentResponse] = []
        async for reply in call:
            got.append(reply)
            if len(got) == count:
                break
        call.cancel()
        return got

    async def transitions(self, segment_id: str) -> list[tuple[str, bool, dt.datetime]]:
        rows = await self.db.fetch(
            "SELECT customer_id, entered, occurred_at FROM segment_transitions WHERE segment_id = $1 ORDER BY cursor",
            segment_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]


@asynccontextmanager
async def serving(
    env: dict[str, str], db: asyncpg.Connection, *, relay: bool, background: bool = False
) -> AsyncIterator[Suite]:
    """Ingestion (its relay running or not) and segmentation (its consumer, timers and backfills in
    the background or not) on one ManualClock at START."""
    from eventline_ingestion.service import running as running_ingestion
    from eventline_ingestion.settings import Settings as IngestionSettings
    from eventline_segmentation.service import running as running_segmentation
    from eventline_segmentation.settings import Settings as SegmentationSettings

    clock = ManualClock(START)
    async with (
        running_ingestion(IngestionSettings.from_env(env), relay=relay, clock=clock) as ingestion_server,
        running_segmentation(
            SegmentationSettings.from_env(env), clock=clock, background=background
        ) as seg_server,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as ingestion_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{seg_server.port}") as segmentation_channel,
    ):
        yield Suite(
            clock,
            ingestion_server,
            seg_server,
            ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel),
            segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel),
            db,
        )


@pytest.fixture
async def suite(
    db_url: str, stream_key: str, redis_url: str, redis_client: stream.Client, db: asyncpg.Connection
) -> AsyncIterator[Suite]:
    async with serving(
        service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url), db, relay=False
    ) as served:
        yield served


async def test_enters_on_events_and_exits_when_the_older_purchase_turns_30_days_old(suite: Suite) -> None:
    await suite.save("buyers", purchases(2, 30))
    first = START - 10 * DAY
    await suite.track("c1", "purchase", first)
    await suite.track("c2", "purchase", START - DAY)  # one purchase: not in
    await suite.settle()
    assert await suite.members("buyers") == []

    await suite.track("c1", "purchase", START)
    await suite.settle()
    assert await suite.members("buyers") == ["c1"]
    size = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="buyers"))
    assert (size.size, size.stored) == (1, True)
    # The transition is a customer event on the timeline, with the segment's id and name.
    timeline = await suite.ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id="c1"))
    entered = [e for e in timeline.events if e.name == "segment_entered"]
    assert len(entered) == 1
    assert entered[0].context["segment_id"].string_value == "buyers"
    assert entered[0].context["segment_name"].string_value == "name of buyers"

    # "Last 30 days" holds the older purchase until today reaches its day + 30: 2026-12-16.
    leaves = dt.datetime(2026, 12, 16, tzinfo=UTC)
    suite.clock.set(leaves - dt.timedelta(microseconds=1))
    assert await suite.segmentation_server.realtime.fire_due() == 0
    assert await suite.members("buyers") == ["c1"]
    suite.clock.set(leaves + dt.timedelta(minutes=5))
    assert await suite.segmentation_server.realtime.fire_due() == 1
    assert await suite.members("buyers") == []
    assert await suite.transitions("buyers") == [("c1", True, START), ("c1", False, leaves)]
    watched = await suite.watch("buyers", 0, 2)
    assert [(w.cursor, w.customer_id, w.kind) for w in watched] == [
        (1, "c1", pb.TRANSITION_KIND_ENTERED),
        (2, "c1", pb.TRANSITION_KIND_EXITED),
    ]
    assert values.timestamp_to_datetime(watched[1].occur_time) == leaves
    exited = await suite.db.fetchval(
        "SELECT count(*) FROM customer_events WHERE customer_id = 'c1' AND name = 'segment_exited'"
    )
    assert exited == 1
    # Nothing else is due: the customer has no purchase that could enter the window again.
    assert await suite.db.fetchval("SELECT count(*) FROM segment_timers") == 0


async def test_probes_the_new_events_cannot_change_are_not_evaluated(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's pruning (eventline_segmentation.pruning): an event too old for every period
    that names it is not evaluated at all; a recent one that can only make a member's answer truer
    (or a non-member's falser) is not evaluated before the stored timer, which then fires and finds
    the later exit at its own instant."""
    evaluated: list[tuple[str, str]] = []
    observe_many = realtime.observe_many

    async def counting(connection: Any, probes: Any) -> Any:
        evaluated.extend((p.segment.definition.segment_id, p.customer_id) for p in probes)
        return await observe_many(connection, probes)

    monkeypatch.setattr(realtime, "observe_many", counting)
    engine = suite.segmentation_server.realtime
    await suite.save("buyers", purchases(2, 7))
    # Visited once, and at most one purchase this week (an empty customer matches neither).
    await suite.save(
        "calm",
        pb.Filter(
            all_of=pb.FilterList(
                filters=[
                    pb.Filter(event=pb.EventCondition(name="visit")),
                    pb.Filter(
                        event=pb.EventCondition(
                            name="purchase",
                            count=pb.CountTest(
                                period=pb.Period(last=pb.RecentPeriod(amount=7, unit=pb.TIME_UNIT_DAY)),
                                at_most=1,
                            ),
                        )
                    ),
                ]
            )
        ),
    )
    while await engine.fire_due():  # the backfills' forecast sweeps end (none is pruned meanwhile)
        pass
    await suite.track("c1", "purchase", START - 2 * DAY)  # 2026-11-24: leaves at 12-01 00:00
    await suite.track("c1", "purchase", START - DAY)  # 2026-11-25: leaves at 12-02 00:00
    await suite.track("c2", "visit", START - DAY)
    await suite.track("c2", "purchase", START - DAY)
    await suite.track("c2", "purchase", START - DAY)  # two this week: not calm before 12-02 00:00
    await suite.settle()
    assert await suite.members("buyers") == ["c1", "c2"]
    assert await suite.members("calm") == []
    # c1 (new, so out of "calm") has only purchases, which can only make "calm" falser.
    assert set(evaluated) == {("buyers", "c1"), ("buyers", "c2"), ("calm", "c2")}
    assert (engine.pruned_untouched, engine.pruned_monotone) == (0, 1)
    evaluated.clear()

    # Older than both periods' start: neither segment is evaluated.
    await suite.track("c1", "purchase", START - 20 * DAY)
    await suite.track("c2", "purchase", START - 20 * DAY)
    await suite.settle()
    assert (evaluated, engine.pruned_untouched, engine.pruned_monotone) == ([], 4, 1)
    # Recent: both are members of "buyers", which can only become truer, and out of "calm", which
    # can only become falser; before their stored timers.
    await suite.track("c1", "purchase", START - HOUR)  # 2026-11-26: leaves at 12-03 00:00
    await suite.track("c2", "purchase", START - HOUR)
    await suite.settle()
    assert (evaluated, engine.pruned_untouched, engine.pruned_monotone) == ([], 4, 5)
    assert await suite.members("buyers") == ["c1", "c2"]
    assert await suite.members("calm") == []

    # c1's stored timer (computed without the last purchase) fires: still a member, a new timer.
    suite.clock.set(dt.datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    assert await engine.fire_due() == 1
    assert evaluated == [("buyers", "c1")]
    assert await suite.members("buyers") == ["c1", "c2"]
    # Then both leave "buyers", and c2 enters "calm" (one purchase this week), at 12-02 00:00.
    suite.clock.set(dt.datetime(2026, 12, 2, 0, 5, tzinfo=UTC))
    assert await engine.fire_due() == 3
    assert await suite.members("buyers") == []
    assert await suite.members("calm") == ["c2"]
    left = dt.datetime(2026, 12, 2, tzinfo=UTC)
    assert sorted(await suite.transitions("buyers")) == [
        ("c1", False, left),
        ("c1", True, START),
        ("c2", False, left),
        ("c2", True, START),
    ]
    assert await suite.transitions("calm") == [("c2", True, left)]
    # MatchCustomer agrees with what is stored, for both customers and segments.
    for segment_id, customer_id in [("buyers", "c1"), ("buyers", "c2"), ("calm", "c1"), ("calm", "c2")]:
        answer = await suite.segmentation.MatchCustomer(
            pb.MatchCustomerRequest(segment_id=segment_id, customer_id=customer_id)
        )
        assert answer.matched is (customer_id in await suite.members(segment_id))


async def test_the_stored_size_follows_entries_and_exits_recorded_together(suite: Suite) -> None:
    """One transaction's transitions of several segments and customers move each size by its own
    entries less its exits (once per segment, not per member)."""
    await suite.save("week", purchases(1, 7))
    await suite.save("month", purchases(1, 30))
    for n, days_ago in enumerate((1, 2, 3, 20)):
        await suite.track(f"s{n}", "purchase", START - days_ago * DAY)
    await suite.settle()

    async def sizes() -> tuple[int, int]:
        found = []
        for segment_id in ("week", "month"):
            reply = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id=segment_id))
            assert reply.stored
            found.append(reply.size)
        return found[0], found[1]

    assert (await suite.members("week"), await suite.members("month")) == (
        ["s0", "s1", "s2"],
        ["s0", "s1", "s2", "s3"],
    )
    assert await sizes() == (3, 4)
    # Eight days on, the three leave "week" in one round of the scheduler; "month" keeps them.
    suite.clock.set(START + 8 * DAY)
    assert await suite.segmentation_server.realtime.fire_due() == 3
    assert await suite.members("week") == []
    assert await sizes() == (0, 4)
    # A new purchase enters s3 into "week" while s0..s2 stay in "month".
    await suite.track("s3", "purchase", START + 8 * DAY)
    await suite.settle()
    assert await sizes() == (1, 4)
    suite.clock.set(START + 40 * DAY)
    while await suite.segmentation_server.realtime.fire_due():
        pass
    assert (await suite.members("week"), await suite.members("month")) == ([], [])
    assert await sizes() == (0, 0)


async def test_days_since_enters_at_the_local_midnight(suite: Suite) -> None:
    flt = pb.Filter(
        event=pb.EventCondition(
            name="visit", days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_GREATER, days=14)
        )
    )
    await suite.save("lapsed", flt, time_zone="Europe/Berlin")
    await suite.track("v1", "visit", START)
    await suite.settle()
    assert await suite.members("lapsed") == []
    # Days since reaches 15 when today is 2026-12-11: its midnight in Berlin is 23:00 UTC the day before.
    enters = dt.datetime(2026, 12, 10, 23, 0, tzinfo=UTC)
    suite.clock.set(enters - dt.timedelta(microseconds=1))
    assert await suite.segmentation_server.realtime.fire_due() == 0
    suite.clock.set(enters + dt.timedelta(seconds=1))
    assert await suite.segmentation_server.realtime.fire_due() == 1
    assert await suite.members("lapsed") == ["v1"]
    assert await suite.transitions("lapsed") == [("v1", True, enters)]


async def test_redelivery_and_two_replicas_record_each_transition_once(suite: Suite) -> None:
    await suite.save("any-purchase", purchases(1, 7))
    await suite.track("r1", "purchase", START)
    await suite.ingestion_server.relay.drain()
    # The same entries consumed by two groups (as a redelivery would hand them again), and the
    # customer evaluated by two engines at once (two replicas).
    other = ConsumerGroup(
        suite.segmentation_server.consumer.client,
        realtime.SegmentEvents(suite.segmentation_server.realtime),
        streams=suite.segmentation_server.consumer.streams,
        group="segmentation-again",
        consumer="again",
    )
    await asyncio.gather(suite.segmentation_server.consumer.drain(), other.drain())
    twin = realtime.RealtimeSegments(
        suite.segmentation_server.realtime.pool, suite.segmentation_server.realtime.repository, suite.clock
    )
    results = await asyncio.gather(
        suite.segmentation_server.realtime.customer_events("r1", {"purchase"}),
        twin.customer_events("r1", {"purchase"}),
    )
    assert sum(results) == 0
    await suite.settle()
    assert await suite.transitions("any-purchase") == [("r1", True, START)]
    assert await suite.db.fetchval("SELECT count(*) FROM customer_events WHERE name = 'segment_entered'") == 1


async def test_watch_resumes_from_its_cursor_without_gaps_or_repeats(suite: Suite) -> None:
    await suite.save("watched", purchases(1, 1000))
    for i in range(5):
        await suite.track(f"w{i}", "purchase", START)
    await suite.settle()
    first = await suite.watch("watched", 0, 2)
    rest = await suite.watch("watched", first[-1].cursor, 3)
    cursors = [w.cursor for w in first + rest]
    assert cursors == [1, 2, 3, 4, 5]
    assert sorted(w.customer_id for w in first + rest) == [f"w{i}" for i in range(5)]
    # A transition recorded while nobody watches is there on resume.
    await suite.track("w9", "purchase", START)
    await suite.settle()
    later = await suite.watch("watched", 5, 1)
    assert [(w.cursor, w.customer_id) for w in later] == [(6, "w9")]


async def test_backfill_is_silent_and_misses_no_event(suite: Suite) -> None:
    for i in range(7):
        await suite.track(f"b{i}", "purchase" if i % 2 == 0 else "browse", START - DAY)
    await suite.settle()
    await suite.segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="filled", segment=pb.Segment(display_name="F", filter=purchases(1, 30), realtime=True)
        )
    )
    listed = await suite.segmentation.ListSegmentMembers(pb.ListSegmentMembersRequest(segment_id="filled"))
    assert listed.backfilling
    size = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="filled"))
    assert not size.stored  # evaluated while backfilling
    # Before the backfill: the consumer leaves b5's purchase to it, which then finds it.
    await suite.track("b5", "purchase", START)
    await suite.settle()
    await suite.segmentation_server.realtime.backfill("filled")
    assert await suite.members("filled", page_size=2) == ["b0", "b2", "b4", "b5", "b6"]
    assert await suite.transitions("filled") == []
    # After it, an event moves membership at once, with a transition.
    await suite.track("b1", "purchase", START)
    await suite.settle()
    assert await suite.transitions("filled") == [("b1", True, START)]
    count = await suite.segmentation.CountCustomers(pb.CountCustomersRequest(segment_id="filled"))
    size = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="filled"))
    assert (size.size, size.stored) == (count.count, True) == (6, True)


async def test_the_forecast_sweep_replays_changes_due_before_it_and_leaves_evaluated_customers_alone(
    suite: Suite,
) -> None:
    """The backfill writes no timer: its sweep gives the customers time can move theirs, the one
    whose latest purchase is oldest first, at the backfill's instant, so an exit that fell due
    before the sweep reached its customer is recorded at its own instant; a customer an event
    evaluated after the backfill keeps the timer that evaluation set."""
    await suite.track("late", "purchase", START - 30 * DAY + 12 * dt.timedelta(hours=1))
    for customer in ("b0", "b1"):
        await suite.track(customer, "purchase", START - DAY)
    await suite.track("b2", "browse", START - DAY)
    await suite.settle()
    await suite.save("buyers", purchases(1, 30))
    assert await suite.members("buyers") == ["b0", "b1", "late"]
    assert await suite.db.fetchval("SELECT count(*) FROM segment_timers") == 0
    engine = suite.segmentation_server.realtime
    # The clock passes late's exit (START + 12 h) and b2 buys before the sweep runs.
    suite.clock.set(START + DAY)
    await suite.track("b2", "purchase", START + DAY)
    await suite.settle()
    assert await engine.sweep_forecasts(limit=1) == 1  # late
    assert await suite.db.fetch("SELECT customer_id, due_at FROM segment_timers ORDER BY customer_id") == [
        ("b2", dt.datetime(2026, 12, 27, tzinfo=UTC)),  # "last 30 days" ends at a midnight
        ("late", START + 12 * dt.timedelta(hours=1)),
    ]
    while await engine.fire_due():
        pass
    assert await suite.transitions("buyers") == [
        ("b2", True, START + DAY),
        ("late", False, START + 12 * dt.timedelta(hours=1)),
    ]
    assert await suite.db.fetch("SELECT customer_id, due_at FROM segment_timers ORDER BY customer_id") == [
        ("b0", dt.datetime(2026, 12, 25, tzinfo=UTC)),
        ("b1", dt.datetime(2026, 12, 25, tzinfo=UTC)),
        ("b2", dt.datetime(2026, 12, 27, tzinfo=UTC)),
    ]
    assert await suite.db.fetchval("SELECT count(*) FROM segment_forecast_sweeps") == 0
    assert await suite.db.fetchval("SELECT count(*) FROM segment_sweep_seen") == 0


@pytest.mark.parametrize("sweep_first", [True, False], ids=["sweep-first", "consumer-first"])
async def test_events_stored_after_a_backfill_move_membership_no_earlier_than_they_arrived(
    suite: Suite, sweep_first: bool
) -> None:
    """Purchases stored a day after a backfill but dated before it (an import of history), not yet
    consumed when the backfill's forecast sweep reaches their customers: the sweep evaluates those
    customers no earlier than the purchases arrived, as the consumer does when it reads them first,
    so either order records the same transitions, none stamped before the purchase that caused it
    ("fresh" bought nothing before the day after the backfill). A customer without new purchases
    still has the exit that fell due before the sweep recorded at its own instant."""
    for customer in ("late", "moved"):
        await suite.track(customer, "purchase", START - 30 * DAY + 12 * HOUR)  # leaves at START + 12 h
    await suite.settle()
    await suite.save("buyers", purchases(1, 30))
    assert await suite.members("buyers") == ["late", "moved"]
    arrived = START + DAY
    suite.clock.set(arrived)
    for customer in ("late", "fresh"):
        await suite.track(customer, "purchase", START - HOUR)  # stored, not consumed yet
    await suite.fire_and_settle(fire_first=sweep_first)
    # "late" exits at START + 12 h only if nothing arrived meanwhile: the purchase that arrived
    # later decides that change with it, as an event read before a due timer fires does.
    assert sorted(await suite.transitions("buyers")) == [
        ("fresh", True, arrived),
        ("moved", False, START + 12 * HOUR),
    ]
    assert await suite.members("buyers") == ["fresh", "late"]
    assert await suite.db.fetch("SELECT customer_id, due_at FROM segment_timers ORDER BY customer_id") == [
        ("fresh", dt.datetime(2026, 12, 26, tzinfo=UTC)),
        ("late", dt.datetime(2026, 12, 26, tzinfo=UTC)),
    ]


@pytest.mark.parametrize("sweep_first", [True, False], ids=["sweep-first", "consumer-first"])
async def test_a_profile_change_after_a_backfill_moves_membership_no_earlier_than_it_was_made(
    suite: Suite, sweep_first: bool
) -> None:
    """As for events: a profile change made a day after a backfill, its notice not consumed yet when
    the backfill's forecast sweep reaches the customer, moves membership when it was made (by
    ingestion's clock, as events arrive), in either order."""
    await suite.track("g", "purchase", START - DAY)
    await suite.settle()
    flt = pb.Filter(all_of=pb.FilterList(filters=[purchases(1, 30), attribute_equals("plan", "gold")]))
    await suite.save("gold", flt)
    assert await suite.members("gold") == []
    changed = START + DAY
    suite.clock.set(changed)
    await suite.ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id="g", attributes={"plan": common_pb2.Value(string_value="gold")}
            )
        )
    )
    await suite.fire_and_settle(fire_first=sweep_first)
    assert await suite.transitions("gold") == [("g", True, changed)]


@pytest.mark.parametrize("timers_first", [True, False], ids=["timers-first", "consumer-first"])
async def test_a_timer_fired_late_reads_events_that_arrived_after_it_no_earlier_than_they_arrived(
    suite: Suite, timers_first: bool
) -> None:
    """A timer due before an event arrived but fired after it, the event not yet consumed: the
    evaluation reads the event, so it is made when the event arrived, not at the timer's instant
    (where the purchase dated 3 h after START would enter at START + 3 h, two hours before it
    arrived); either order records the same transitions."""
    await suite.save("recent", purchases(1, 2, unit=pb.TIME_UNIT_HOUR))
    await suite.track("p", "purchase", START)
    await suite.settle()
    assert await suite.db.fetch("SELECT customer_id, due_at FROM segment_timers") == [
        ("p", START + 2 * HOUR + dt.timedelta(microseconds=1))
    ]
    arrived = START + 5 * HOUR
    suite.clock.set(arrived)  # the exit is due; the scheduler has not looked yet
    await suite.track("p", "purchase", START + 3 * HOUR)  # stored, not consumed yet
    await suite.fire_and_settle(fire_first=timers_first)
    assert await suite.transitions("recent") == [("p", True, START)]
    assert await suite.db.fetch("SELECT customer_id, due_at FROM segment_timers") == [
        ("p", START + 5 * HOUR + dt.timedelta(microseconds=1))
    ]


async def test_only_customers_whose_events_a_segment_depends_on_are_evaluated(suite: Suite) -> None:
    engine = suite.segmentation_server.realtime
    events = {"c1": {"browse"}, "c2": {"purchase", "browse"}}
    assert await engine.concerned_parts(events, 1) == []  # no real-time segment: no transaction at all
    await suite.save("buyers", purchases(1, 30))
    assert await engine.concerned_parts(events, 1) == [["c2"]]
    # A filter an empty customer matches may change on any first event of anyone.
    no_purchase = pb.Filter(
        event=pb.EventCondition(
            name="purchase",
            count=pb.CountTest(
                period=pb.Period(last=pb.RecentPeriod(amount=30, unit=pb.TIME_UNIT_DAY)), at_most=0
            ),
        )
    )
    await suite.save("idle", no_purchase)
    assert await engine.concerned_parts(events, 1) == [["c1", "c2"]]


async def test_an_evaluation_that_does_not_move_a_timer_leaves_its_row_alone(suite: Suite) -> None:
    await suite.save("buyers", purchases(1, 30))
    await suite.track("t1", "purchase", START - DAY)
    await suite.settle()
    timer = "SELECT xmin::text, due_at FROM segment_timers WHERE customer_id = 't1'"
    written = await suite.db.fetchrow(timer)
    assert written is not None
    engine = suite.segmentation_server.realtime
    await engine.customer_events("t1", {"purchase"})  # a redelivery: the same next change
    assert await suite.db.fetchrow(timer) == written
    await suite.track("t1", "purchase", START)  # the window now ends 30 days after this one
    await suite.settle()
    moved = await suite.db.fetchrow(timer)
    assert moved is not None and moved["due_at"] > written["due_at"]


async def test_reading_the_stored_members_plans_the_rest_of_the_transaction_once_per_connection(
    suite: Suite,
) -> None:
    """The evaluation's statement (its text depends only on its segments) is planned generically:
    the statement that reads the stored memberships sets it, without a round trip of its own."""
    await suite.save("buyers", purchases(1, 30))
    engine = suite.segmentation_server.realtime
    async with engine.pool.acquire() as connection:
        async with connection.transaction():
            assert (
                await connection.fetchval("SELECT current_setting('plan_cache_mode')") == "force_custom_plan"
            )
            stored = await engine.repository.keep_segments_reading_members(connection, [("buyers", "t1")])
            assert stored.kept == {"buyers"}
            assert (
                await connection.fetchval("SELECT current_setting('plan_cache_mode')") == "force_generic_plan"
            )
        # Only for the transaction.
        assert await connection.fetchval("SELECT current_setting('plan_cache_mode')") == "force_custom_plan"


async def test_the_evaluation_statement_reads_each_customer_by_key_under_its_generic_plan(
    db: asyncpg.Connection,
) -> None:
    """The generic plan of an evaluation (``observe_many``'s statement, planned once per connection
    for 10 rows of its ``unnest``) looks each row's customer up by key when the tree reads the
    profile: against a small customers table it used to hash the rows and scan every customer, once
    per segment of the statement. A tree without profile conditions reads no customer row at all
    (its caller asks which customers exist once per statement, ``compiler.existing_query``)."""
    await db.execute("INSERT INTO customers (customer_id) SELECT 'c' || i FROM generate_series(1, 2000) AS i")
    await db.execute("ANALYZE customers")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    with_profile = pb.Filter(
        all_of=pb.FilterList(filters=[purchases(1, 30), attribute_equals("plan", "pro")])
    )
    for number, (flt, scans) in enumerate(
        [(with_profile, (["Index Scan"], ["Index Only Scan"])), (purchases(1, 30), (None,))]
    ):
        checked = filters.check(flt, "filter", {})
        assert checked.root is not None
        params = compiler.Params()
        customers = ["c1", "c2", "c3"]
        rows = compiler.RowBounds(params, customers, shared=True)
        clocks = [periods.Clock(START, UTC)] * len(customers)
        query = compiler.match_many_query(checked.root, clocks, params, rows, ["q.position AS position"])
        assert query.keyed == (scans[0] is not None)
        await db.execute(f"PREPARE evaluation{number} AS {query.sql}")

        def literal(value: Any) -> str:
            if isinstance(value, list):
                return "ARRAY[" + ", ".join(map(literal, value)) + "]"
            return "'" + str(value).replace("'", "''") + "'"

        execute = f"EXECUTE evaluation{number}({', '.join(map(literal, params.values))})"
        plan = json.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) {execute}"))
        # By key, once per row; not a scan of every customer per segment.
        assert plan_scans(plan).get("customers") in scans
        assert len(await db.fetch(execute)) == len(customers)


async def test_an_evaluation_reads_the_events_after_its_window_when_a_customer_has_one(
    db: asyncpg.Connection,
) -> None:
    """The events after a window (an event dated after the evaluation's instant, or a timer fired
    late) are read only when some customer has an event of the name after the window's end (the
    name's latest ``customer_event_stats.last_at``), and then exactly as before."""
    await db.execute("INSERT INTO customers (customer_id) VALUES ('c1'), ('c2')")

    async def store(customer_id: str, event_id: str, at: dt.datetime) -> None:
        await db.execute(
            """
            WITH stored AS (
                INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at)
                VALUES ($1, $2, 'purchase', $3, $3) RETURNING customer_id, name, occurred_at
            )
            INSERT INTO customer_event_stats AS s (customer_id, name, first_at, last_at, count)
            SELECT customer_id, name, occurred_at, occurred_at, 1 FROM stored
            ON CONFLICT (customer_id, name) DO UPDATE SET
                first_at = least(s.first_at, excluded.first_at),
                last_at = greatest(s.last_at, excluded.last_at), count = s.count + 1
            """,
            customer_id,
            event_id,
            at,
        )

    await store("c1", "e1", START - DAY)
    await store("c2", "e2", START - 2 * DAY)
    segment = realtime.compile_definition(
        Definition("s", "S", purchases(2, 30).SerializeToString(), "", None, 1)
    )
    probes = [realtime.Probe(segment, "c1", START), realtime.Probe(segment, "c2", START)]
    # One purchase each, none after START: no change until an event comes. A customer that does
    # not exist (erased) has no answer.
    assert await realtime.observe_many(db, [*probes, realtime.Probe(segment, "gone", START)]) == [
        realtime.Observation(False, None),
        realtime.Observation(False, None),
        None,
    ]
    # A purchase dated an hour after the instant enters c1's window then.
    await store("c1", "e3", START + dt.timedelta(hours=1))
    assert await realtime.observe_many(db, probes) == [
        realtime.Observation(False, START + dt.timedelta(hours=1)),
        realtime.Observation(False, None),
    ]
    # Seen from after it, the window holds it; c1 exits when the first purchase is 30 days old.
    later = [realtime.Probe(segment, "c1", START + dt.timedelta(hours=2))]
    assert await realtime.observe_many(db, later) == [
        realtime.Observation(True, dt.datetime(2026, 12, 25, tzinfo=UTC))
    ]


async def test_profile_conditions_are_evaluated_on_profile_notices_not_on_every_event(suite: Suite) -> None:
    engine = suite.segmentation_server.realtime
    events = {"c1": {"browse"}, "c2": {PROFILE_CHANGED}, "c3": {"purchase"}}
    await suite.save("gold", attribute_equals("plan", "gold"))
    assert await engine.concerned_parts(events, 1) == [["c2"]]
    gold_buyers = pb.Filter(
        all_of=pb.FilterList(filters=[attribute_equals("plan", "gold"), purchases(1, 30)])
    )
    await suite.save("gold_buyers", gold_buyers)
    assert await engine.concerned_parts(events, 1) == [["c2", "c3"]]


async def test_a_profile_change_without_notice_in_flight_at_the_first_segment_is_read_by_its_backfill(
    suite: Suite, db_url: str
) -> None:
    """An upsert whose statement found no real-time segment writes no notice; if it commits only
    after the first segment exists, the segment's backfill waits for it and reads its profile."""
    await suite.ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(customer=common_pb2.Customer(customer_id="p1"))
    )
    writer = await asyncpg.connect(db_url)
    try:
        upsert = writer.transaction()
        await upsert.start()
        # As UpsertCustomer's statement does, having found no real-time segment: no notice.
        await writer.execute(
            "UPDATE customers SET attributes = '{\"plan\": \"gold\"}' WHERE customer_id = 'p1'"
        )
        await suite.segmentation.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id="gold",
                segment=pb.Segment(
                    display_name="Gold", filter=attribute_equals("plan", "gold"), realtime=True
                ),
            )
        )
        backfill = asyncio.create_task(suite.segmentation_server.realtime.backfill_all())

        async def waiting_for_the_upsert() -> bool:
            return bool(
                await suite.db.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'customers'::regclass AND NOT granted"
                )
            )

        await eventually(waiting_for_the_upsert, 30, "the backfill did not wait for the profile writer")
        await upsert.commit()
        await backfill
    finally:
        await writer.close()
    assert await suite.db.fetchval("SELECT count(*) FROM event_outbox") == 0  # no notice
    assert await suite.members("gold") == ["p1"]


async def test_filter_change_recomputes_and_unmarking_drops_membership(suite: Suite) -> None:
    await suite.track("f1", "purchase", START)
    await suite.track("f2", "browse", START)
    await suite.save("changing", purchases(1, 30))
    assert await suite.members("changing") == ["f1"]
    browse = pb.Filter(event=pb.EventCondition(name="browse"))
    await suite.segmentation.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(segment_id="changing", filter=browse),
            update_mask=field_mask_pb2.FieldMask(paths=["filter"]),
        )
    )
    await suite.segmentation_server.realtime.backfill_all()
    assert await suite.members("changing") == ["f2"]
    assert await suite.transitions("changing") == []
    await suite.segmentation.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(segment_id="changing", realtime=False),
            update_mask=field_mask_pb2.FieldMask(paths=["realtime"]),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.members("changing")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await suite.db.fetchval("SELECT count(*) FROM segment_members") == 0


async def test_erasure_and_deletion_leave_no_membership_timers_or_exit(suite: Suite) -> None:
    await suite.save("erased", purchases(1, 30))
    await suite.save("deleted", purchases(1, 30))
    await suite.track("e1", "purchase", START)
    await suite.track("e2", "purchase", START)
    await suite.settle()
    assert await suite.db.fetchval("SELECT count(*) FROM segment_timers") == 4
    await suite.ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="e1"))
    assert await suite.members("erased") == ["e2"]
    size = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="erased"))
    assert (size.size, size.stored) == (1, True)
    assert await suite.db.fetchval("SELECT count(*) FROM segment_transitions WHERE customer_id = 'e1'") == 0
    await suite.segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id="deleted"))
    assert await suite.db.fetch("SELECT segment_id, customer_id FROM segment_timers") == [("erased", "e2")]
    assert await suite.db.fetch("SELECT segment_id, customer_id FROM segment_members") == [("erased", "e2")]
    suite.clock.advance(60 * DAY)
    assert await suite.segmentation_server.realtime.fire_due() == 1
    assert await suite.transitions("erased") == [
        ("e2", True, START),
        ("e2", False, dt.datetime(2026, 12, 26, tzinfo=UTC)),
    ]
    assert await suite.db.fetchval("SELECT count(*) FROM customer_events WHERE name = 'segment_exited'") == 1


async def test_an_erasure_during_a_backfill_waits_for_it_and_leaves_no_member(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members have no foreign key to customers (migration 0140): an erasure that comes while a
    backfill has written the customer's membership, uncommitted, waits for the backfill, then
    deletes that membership; the stored size stays exact."""
    from tests.support import eventually

    await suite.track("r1", "purchase", START)
    await suite.track("r2", "purchase", START)
    await suite.settle()
    await suite.segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="racing", segment=pb.Segment(display_name="R", filter=purchases(1, 30), realtime=True)
        )
    )
    segments = suite.segmentation_server.realtime
    written, resume = asyncio.Event(), asyncio.Event()
    backfill = segments.repository.backfill

    async def paused(*args: Any) -> None:
        await backfill(*args)
        written.set()
        await resume.wait()

    monkeypatch.setattr(segments.repository, "backfill", paused)
    backfilling = asyncio.create_task(segments.backfill("racing"))
    try:
        await asyncio.wait(
            [backfilling, asyncio.create_task(written.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        assert written.is_set(), backfilling
        erasing = asyncio.ensure_future(
            suite.ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="r1"))
        )

        async def erasure_waits() -> bool:
            return bool(
                await suite.db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )

        await eventually(erasure_waits, 60, "the erasure did not wait for the backfill")
        assert not erasing.done()
    finally:
        resume.set()
    await backfilling
    await erasing
    assert await suite.members("racing") == ["r2"]
    size = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="racing"))
    assert (size.size, size.stored) == (1, True)


async def test_bad_real_time_segments_are_refused(suite: Suite) -> None:
    with_reference = pb.Filter(
        event=pb.EventCondition(
            name="purchase",
            predicates=[
                pb.Predicate(field="item", operator=pb.OPERATOR_EQUALS, value=pb.Operand(reference="$item"))
            ],
        )
    )
    for segment, field in (
        (pb.Segment(display_name="R", filter=with_reference, realtime=True), "segment.filter"),
        (
            pb.Segment(display_name="Z", filter=purchases(1, 1), realtime=True, time_zone="Mars/Base"),
            "segment.time_zone",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await suite.segmentation.CreateSegment(pb.CreateSegmentRequest(segment=segment))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or "")
    await suite.segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="plain", segment=pb.Segment(display_name="P", filter=purchases(1, 1))
        )
    )
    for call in (
        suite.segmentation.ListSegmentMembers(pb.ListSegmentMembersRequest(segment_id="plain")),
        suite.watch("plain", 0, 1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.members("missing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cli_saves_a_real_time_segment_lists_its_members_and_watches_it(
    suite: Suite, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from eventline_cli.main import cli

    async def run(*args: str) -> Any:
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), catch_exceptions=False)

    monkeypatch.setenv("EVENTLINE_SEGMENTATION_TARGET", f"127.0.0.1:{suite.segmentation_server.port}")
    await suite.track("k1", "purchase", START)
    segment = tmp_path / "segment.yaml"
    segment.write_text("display_name: Buyers\nfilter:\n  event:\n    name: purchase\n")
    saved = await run(
        "segments", "save", "-f", str(segment), "--id", "cli", "--realtime", "--time-zone", "Europe/Paris"
    )
    assert saved.exit_code == 0, saved.output
    assert '"realtime": true' in saved.stdout and "Europe/Paris" in saved.stdout
    await suite.segmentation_server.realtime.backfill_all()
    await suite.track("k2", "purchase", START + dt.timedelta(seconds=1))
    await suite.settle()
    listed = await run("segments", "members", "cli")
    assert listed.exit_code == 0, listed.output
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["k1", "k2"]
    watched = await run("segments", "watch", "cli", "--count", "1")
    assert watched.exit_code == 0, watched.output
    assert '"customer_id": "k2"' in watched.stdout and "TRANSITION_KIND_ENTERED" in watched.stdout


async def test_a_campaign_triggered_by_segment_entered_sends_once(  # type: ignore[no-untyped-def]
    campaigns_server, segmentation_server, segmentation, ingestion, ingestion_server, smtp_server
) -> None:
    """Transitions reach campaigns as ordinary customer events: a campaign on ``segment_entered``
    with a predicate on the segment's id (no SegmentTrigger needed for this)."""
    from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
    from eventline.common.v1 import common_pb2

    from eventline_cli import demo_campaigns
    from tests.support import eventually

    await segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id="vip", segment=pb.Segment(display_name="VIP", filter=purchases(1, 30), realtime=True)
        )
    )

    await segmentation_server.realtime.backfill_all()
    trigger = demo_campaigns.on_customer_event("segment_entered")
    trigger.customer_event.context_predicates.append(
        pb.Predicate(
            field="segment_id",
            operator=pb.OPERATOR_EQUALS,
            value=pb.Operand(literal=common_pb2.Value(string_value="vip")),
        )
    )
    campaign = demo_campaigns.email_campaign(
        trigger,
        None,
        display_name="Welcome to VIP",
        subject="Welcome to {{ client.eventContext.segment_name }}",
        text_body="You are in.",
        html_body="",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_server.port}") as channel:
        campaigns = campaigns_pb2_grpc.CampaignServiceStub(channel)
        created = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
        await campaigns.ActivateCampaign(
            campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
        )
        await campaigns_server.cache.refresh()
        await ingestion.UpsertCustomer(
            ingestion_pb2.UpsertCustomerRequest(
                customer=common_pb2.Customer(
                    customer_id="v1", email="v1@example.com", email_consent=common_pb2.CONSENT_GRANTED
                )
            )
        )
        await ingestion.TrackCustomerEvent(customer_event("v1", "purchase"))
        await ingestion.TrackCustomerEvent(
            customer_event("v1", "purchase")
        )  # still a member: no second entry

        async def delivered() -> bool:
            # Segmentation's outbox row reaches the stream at the relay's next poll.
            await segmentation_server.consumer.drain()
            await campaigns_server.consumer.drain()
            return len(smtp_server.messages) >= 1

        await eventually(delivered, 60, "no message for segment_entered")
        assert smtp_server.messages[0]["Subject"] == "Welcome to VIP"
        assert smtp_server.messages[0]["To"] == "v1@example.com"
        await campaigns_server.consumer.drain()
        assert len(smtp_server.messages) == 1


async def test_a_backfill_gives_timers_only_to_customers_time_can_move(suite: Suite) -> None:
    """Purchases older than the window (and its margin) never count again: their customer gets no
    timer; a customer with a purchase inside does, and still exits on time."""
    await suite.track("old", "purchase", START - 60 * DAY)
    await suite.track("old", "purchase", START - 40 * DAY)
    await suite.track("recent", "purchase", START - 10 * DAY)
    await suite.track("recent", "purchase", START - 5 * DAY)
    await suite.settle()
    await suite.save("buyers", purchases(2, 30))
    assert await suite.members("buyers") == ["recent"]
    engine = suite.segmentation_server.realtime
    while await engine.fire_due():
        pass
    timers = await suite.db.fetch("SELECT customer_id FROM segment_timers WHERE segment_id = 'buyers'")
    assert [r[0] for r in timers] == ["recent"]
    suite.clock.set(START + 25 * DAY)
    while await engine.fire_due():
        pass
    assert await suite.members("buyers") == []
    for customer in ("old", "recent"):
        answer = await suite.segmentation.MatchCustomer(
            pb.MatchCustomerRequest(
                segment_id="buyers",
                customer_id=customer,
                now=values.datetime_to_timestamp(suite.clock.now()),
            )
        )
        assert not answer.matched


async def test_a_profile_change_alone_moves_membership(suite: Suite) -> None:
    """UpsertCustomer publishes a profile notice while real-time segments exist: the customer
    enters and exits with no event of theirs; with no real-time segment, no notice is written."""
    from eventline.common.v1 import common_pb2

    async def set_plan(plan: str) -> None:
        await suite.ingestion.UpsertCustomer(
            ingestion_pb2.UpsertCustomerRequest(
                customer=common_pb2.Customer(
                    customer_id="p1", attributes={"plan": common_pb2.Value(string_value=plan)}
                )
            )
        )

    await set_plan("silver")
    assert await suite.db.fetchval("SELECT count(*) FROM event_outbox") == 0
    await suite.save("gold", attribute_equals("plan", "gold"))
    assert await suite.members("gold") == []
    await set_plan("gold")
    assert await suite.db.fetchval("SELECT count(*) FROM event_outbox") == 1
    await suite.settle()
    assert await suite.members("gold") == ["p1"]
    suite.clock.advance(dt.timedelta(hours=1))
    await set_plan("bronze")
    await suite.settle()
    assert await suite.members("gold") == []
    assert await suite.transitions("gold") == [
        ("p1", True, START),
        ("p1", False, START + dt.timedelta(hours=1)),
    ]
    assert await suite.db.fetchval("SELECT count(*) FROM customer_events WHERE customer_id = 'p1'") == 2


async def test_transitions_older_than_the_retention_are_pruned_and_watching_from_them_fails(
    suite: Suite,
) -> None:
    engine = suite.segmentation_server.realtime
    await suite.save("buyers", purchases(1, 30))
    await suite.track("c1", "purchase", START - DAY)
    await suite.settle()
    suite.clock.advance(3 * DAY)
    await suite.track("c2", "purchase", START)
    await suite.settle()
    assert [c for c, _, _ in await suite.transitions("buyers")] == ["c1", "c2"]
    # Within the retention (7 days by default) nothing goes.
    assert await engine.prune() == 0
    suite.clock.advance(5 * DAY)  # c1's transition is 8 days old, c2's 5
    assert await engine.prune_when_due() == 1
    assert await engine.prune_when_due() == 0  # not due again before a minute of the clock
    assert [c for c, _, _ in await suite.transitions("buyers")] == ["c2"]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.watch("buyers", 0, 1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pruned" in (refused.value.details() or "")
    # From the last pruned cursor on, nothing is missing.
    [watched] = await suite.watch("buyers", 1, 1)
    assert (watched.cursor, watched.customer_id) == (2, "c2")


async def test_the_relay_publishes_transitions_without_waiting_for_its_poll(
    db_url: str, stream_key: str, redis_url: str, redis_client: stream.Client, db: asyncpg.Connection
) -> None:
    """Segmentation's outbox rows wake every ingestion relay through NOTIFY: with a poll of an
    hour, a transition still reaches the stream (the generous wait is for a busy machine), once,
    though two replicas' relays wake for it."""
    from eventline_ingestion.service import running as running_ingestion
    from eventline_ingestion.settings import Settings as IngestionSettings
    from tests.support import eventually, outbox_drained, wait_for_events

    env = service_env(
        db_url, stream_key, EVENTLINE_REDIS_URL=redis_url, EVENTLINE_INGESTION_RELAY_POLL_S="3600"
    )
    async with (
        serving(env, db, relay=True) as suite,
        running_ingestion(IngestionSettings.from_env(env), clock=suite.clock) as second,
    ):
        await suite.save("buyers", purchases(1, 30))
        for replica in (suite.ingestion_server, second):
            await asyncio.wait_for(replica.listener.listening.wait(), 60)
        request = customer_event("c1", "purchase")
        await suite.ingestion.TrackCustomerEvent(request)  # ingestion's own write wakes its relay
        await wait_for_events(redis_client, stream_key, request.event_id)
        await suite.segmentation_server.consumer.drain()
        assert await suite.members("buyers") == ["c1"]

        async def transitions_published() -> int:
            entries = await redis_client.xrange(stream_key)
            return sum(fields[b"name"] == b"segment_entered" for _, fields in entries)

        async def published() -> bool:
            return await transitions_published() >= 1

        await eventually(published, 30, "the relay did not publish the transition before its poll")
        # The relay deletes the row in the transaction that wraps its append, so the entry can show
        # before the row is gone; once it is gone nothing is left to publish a second time.
        await outbox_drained(db)
        assert await transitions_published() == 1


async def test_two_replicas_running_in_the_background_record_each_transition_once(
    db_url: str, stream_key: str, redis_url: str, redis_client: stream.Client, db: asyncpg.Connection
) -> None:
    """Two segmentation replicas as they run in production (consumer, timers and backfill loops
    in the background), one clock: 20 customers enter on events and exit by time, once each."""
    from eventline_ingestion.service import running as running_ingestion
    from eventline_ingestion.settings import Settings as IngestionSettings
    from eventline_segmentation.service import running as running_segmentation
    from eventline_segmentation.settings import Settings as SegmentationSettings
    from tests.support import eventually

    clock = ManualClock(START)
    # The clock moves three weeks: keep the whole transition log (the retention prunes it otherwise).
    env = service_env(
        db_url, stream_key, EVENTLINE_REDIS_URL=redis_url, EVENTLINE_SEGMENTATION_TRANSITION_RETENTION_S="3e6"
    )
    async with (
        running_ingestion(IngestionSettings.from_env(env), clock=clock) as ingestion_server,
        running_segmentation(
            SegmentationSettings.from_env({**env, "EVENTLINE_SEGMENTATION_CONSUMER": "one"}), clock=clock
        ),
        running_segmentation(
            SegmentationSettings.from_env({**env, "EVENTLINE_SEGMENTATION_CONSUMER": "two"}), clock=clock
        ) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as ingestion_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as segmentation_channel,
    ):
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel)
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
        await segmentation.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id="twice",
                segment=pb.Segment(display_name="T", filter=purchases(2, 30), realtime=True),
            )
        )

        async def size_is(n: int) -> bool:
            reply = await segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="twice"))
            return reply.stored and reply.size == n

        await eventually(lambda: size_is(0), 60, "the backfill did not end")
        for i in range(20):
            for when in (START - 10 * DAY, START):
                request = customer_event(f"t{i:02}", "purchase")
                request.occurred_at.CopyFrom(values.datetime_to_timestamp(when))
                await ingestion.TrackCustomerEvent(request)
        await eventually(lambda: size_is(20), 120, "not every customer entered")
        clock.advance(21 * DAY)
        await eventually(lambda: size_is(0), 120, "not every customer exited")
        rows = await db.fetch(
            "SELECT customer_id, array_agg(entered ORDER BY cursor) AS kinds FROM segment_transitions "
            "GROUP BY customer_id ORDER BY customer_id"
        )
        assert [(r[0], list(r[1])) for r in rows] == [(f"t{i:02}", [True, False]) for i in range(20)]
        assert [
            r[0] for r in await db.fetch("SELECT cursor FROM segment_transitions ORDER BY cursor")
        ] == list(range(1, 41))
        counted = await db.fetchval(
            "SELECT count(*) FROM customer_events WHERE name IN ('segment_entered', 'segment_exited')"
        )
        assert counted == 40


async def test_one_batch_evaluates_its_customers_and_segments_together(suite: Suite) -> None:
    await suite.save("recent", purchases(1, 2))
    await suite.save("often", purchases(2, 30))
    customers = ["m1", "m2", "m3"]
    for i, customer in enumerate(customers):
        for k in range(i + 1):  # m1 buys once, m2 twice, m3 three times
            await suite.track(customer, "purchase", START - k * dt.timedelta(hours=30))
    await suite.ingestion_server.relay.drain()
    # A consumer batch with the three customers: one transaction, one evaluation statement.
    engine = suite.segmentation_server.realtime
    assert await engine.customers_events({c: {"purchase"} for c in customers}) == 5
    assert await suite.transitions("recent") == [(c, True, START) for c in customers]
    assert await suite.transitions("often") == [("m2", True, START), ("m3", True, START)]
    assert await suite.db.fetchval("SELECT count(*) FROM customer_events WHERE name = 'segment_entered'") == 5
    await suite.settle()  # the same entries again through the consumer: nothing changes
    assert len(await suite.transitions("recent")) == 3
    # "Last 2 days": the three purchases of 2026-11-26 leave when today reaches 2026-11-28; the
    # three timers fire in one evaluation, each customer exiting at that instant.
    leaves = dt.datetime(2026, 11, 28, tzinfo=UTC)
    suite.clock.set(leaves + dt.timedelta(minutes=1))
    assert await engine.fire_due() == 3
    assert (await suite.transitions("recent"))[3:] == [(c, False, leaves) for c in customers]
    assert await suite.members("recent") == []
    assert await suite.members("often") == ["m2", "m3"]


async def test_customers_of_disjoint_segments_are_evaluated_in_transactions_of_their_own(
    suite: Suite,
) -> None:
    await suite.save("buyers", purchases(1, 30))
    await suite.save("visitors", pb.Filter(event=pb.EventCondition(name="visit")))
    await suite.track("slow", "purchase", START)
    await suite.track("quick", "visit", START)
    await suite.ingestion_server.relay.drain()
    # Another evaluation of "slow" holds their lock: one consumer batch with both customers commits
    # "quick"'s transition meanwhile (their segments are disjoint: two transactions), and "slow"'s
    # once the lock is free.
    lock = "hashtextextended('segment-member:' || $1, 0)"
    await suite.db.execute(f"SELECT pg_advisory_lock({lock})", "slow")
    consuming = asyncio.create_task(suite.segmentation_server.consumer.drain())
    try:

        async def quick_entered() -> bool:
            return await suite.transitions("visitors") == [("quick", True, START)]

        await eventually(quick_entered, 30, "quick's transition waited for slow's lock")
        assert await suite.transitions("buyers") == []
    finally:
        await suite.db.execute(f"SELECT pg_advisory_unlock({lock})", "slow")
    await consuming
    assert await suite.transitions("buyers") == [("slow", True, START)]


async def test_without_a_real_time_segment_nothing_is_read_and_a_later_segment_misses_nothing(
    db_url: str, stream_key: str, redis_url: str, redis_client: stream.Client, db: asyncpg.Connection
) -> None:
    """Segmentation running in the background with no real-time segment moves its group past the
    entries unread (no consumer ever reads one); a segment created afterwards finds the customers
    of those events by its backfill, and the events after it by the consumer."""
    from tests.support import eventually

    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url)
    async with serving(env, db, relay=True, background=True) as suite:
        group = suite.segmentation_server.consumer.group
        [key] = suite.segmentation_server.consumer.streams
        await suite.track("early1", "purchase")
        await suite.track("early2", "purchase")

        async def skipped_to_the_end() -> bool:
            newest = await redis_client.xrevrange(key, "+", "-", count=1)
            groups = {g["name"].decode(): g for g in await redis_client.xinfo_groups(key)} if newest else {}
            return group in groups and groups[group]["last-delivered-id"] == newest[0][0]

        await eventually(skipped_to_the_end, 60, "the idle group did not move past the entries")
        assert await redis_client.xinfo_consumers(key, group) == []  # nothing was ever read
        await suite.segmentation.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id="buyers",
                segment=pb.Segment(display_name="B", filter=purchases(1, 30), realtime=True),
            )
        )

        async def size_is(n: int) -> bool:
            reply = await suite.segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="buyers"))
            return reply.stored and reply.size == n

        await eventually(lambda: size_is(2), 60, "the backfill did not find the earlier buyers")
        await suite.track("late", "purchase")
        await eventually(lambda: size_is(3), 60, "the consumer did not read the later event")
        # The backfill is silent: the one transition is the later event's.
        assert [(c, entered) for c, entered, _ in await suite.transitions("buyers")] == [("late", True)]


# Bulk imports hinted (TrackEventsRequest.bulk_import) ------------------------------------------


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_the_import_mark_holds_a_lease_by_the_readers_clock_and_only_moves_later(
    stream_key: str, redis_client: stream.Client
) -> None:
    from eventline_shared.streams.imports import LEASE, ImportMark

    layout = stream.StreamLayout(stream_key, 4)
    clock = ManualClock(START)
    mark = ImportMark(redis_client, layout, clock)
    assert mark.key == stream.import_mark_key(layout.keys[0])
    assert stream.hash_tag(mark.key) == stream.hash_tag(stream.dead_letter_key(layout.keys[0]))
    assert await mark.until() is None and not await mark.live()
    assert await mark.publish() == START + LEASE
    assert await mark.live()
    # A replica whose clock is behind (or that published earlier) never moves the mark back.
    behind = ImportMark(redis_client, layout, ManualClock(START - dt.timedelta(seconds=1)))
    await behind.publish()
    assert await mark.until() == START + LEASE
    assert await behind.live()  # read by its own clock, the mark holds longer
    clock.advance(LEASE - dt.timedelta(microseconds=1))
    assert await mark.live()
    clock.advance(dt.timedelta(microseconds=1))
    assert not await mark.live()
    # What this code did not write is no mark: consumers read on.
    await redis_client.set(mark.key, "not an instant")
    assert await mark.until() is None and not await mark.live()


async def test_publishing_the_mark_never_fails_or_holds_a_call(stream_key: str) -> None:
    """Redis down: the calls' storing goes on, the publishing fails in the background and is
    only logged; once no call is stored, nothing is renewed any more."""
    from eventline_shared.streams.imports import ImportMark, ImportsRunning

    unreachable = stream.connect("redis://127.0.0.1:1/0")
    try:
        imports = ImportsRunning(ImportMark(unreachable, stream.StreamLayout(stream_key), ManualClock(START)))
        with imports.storing():
            assert imports.calls == 1
        assert imports.calls == 0
        await imports.settled()  # the background publish failed, and was only logged
    finally:
        await unreachable.aclose()


async def _track_batch(suite: Suite, events: list[tuple[str, str, dt.datetime]], *, bulk: bool) -> None:
    request = ingestion_pb2.TrackEventsRequest(bulk_import=bulk, omit_stored_events=True)
    for customer_id, name, occurred_at in events:
        item = request.events.add().customer_event
        item.CopyFrom(customer_event(customer_id, name))
        item.occurred_at.CopyFrom(values.datetime_to_timestamp(occurred_at))
    reply = await suite.ingestion.TrackEvents(request)
    assert not any(r.HasField("error") for r in reply.results)
    await suite.ingestion_server.imports.settled()
    await suite.ingestion_server.relay.drain()


async def _unread(suite: Suite) -> tuple[int, int]:
    """(entries the segmentation group has not read, entries it holds pending) of the stream."""
    consumer = suite.segmentation_server.consumer
    [key] = consumer.streams
    groups = {g["name"].decode(): g for g in await consumer.client.xinfo_groups(key)}
    last = groups[consumer.group]["last-delivered-id"].decode()
    unread = await consumer.client.xrange(key, f"({last}", "+")
    pending = await consumer.client.xpending(key, consumer.group)
    return len(unread), int(pending["pending"])


async def test_a_hinted_import_is_read_once_its_mark_lapses_and_each_transition_happens_once(
    suite: Suite,
) -> None:
    """While a hinted import is stored the consumer reads nothing (nothing held pending either),
    a live event waits too, and timers still fire; once the mark lapses every event is evaluated,
    each transition recorded once, at the instant the consumer evaluated it."""
    from eventline_shared.streams.imports import LEASE

    consumer = suite.segmentation_server.consumer
    await suite.save("buyers", purchases(2, 30))
    await suite.track("old", "purchase", START - 29 * DAY)
    await suite.track("old", "purchase", START - 28 * DAY)
    await suite.settle()
    while await suite.segmentation_server.realtime.fire_due():  # the backfill's forecast sweep
        pass
    assert await suite.members("buyers") == ["old"]
    # "Last 30 days" holds old's first purchase until the midnight of its day + 30.
    leaves = dt.datetime(2026, 11, 27, tzinfo=UTC)

    suite.clock.set(leaves - LEASE / 2)
    imported = suite.clock.now()
    await _track_batch(
        suite,
        [
            ("i1", "purchase", START - 5 * DAY),
            ("i1", "purchase", START - 4 * DAY),
            ("i2", "purchase", START - 3 * DAY),
            ("i2", "purchase", START - 2 * DAY),
            ("i3", "purchase", START - 3 * DAY),  # one purchase: never in
        ],
        bulk=True,
    )
    await suite.track("live", "purchase", START - DAY)
    await suite.track("live", "purchase", START)
    await suite.ingestion_server.relay.drain()
    assert await consumer.drain() == 0
    assert await _unread(suite) == (7, 0)
    assert await suite.members("buyers") == ["old"]

    # Time-driven transitions go on meanwhile.
    suite.clock.set(leaves)
    assert await consumer.deferred(consumer.streams[0])
    assert await suite.segmentation_server.realtime.fire_due() == 1
    assert await suite.members("buyers") == []

    suite.clock.set(imported + LEASE)  # the mark lapses
    assert not await consumer.deferred(consumer.streams[0])
    caught_up = suite.clock.now()
    await suite.settle()
    assert await _unread(suite) == (0, 0)
    assert await suite.members("buyers") == ["i1", "i2", "live"]
    assert await suite.transitions("buyers") == [
        ("old", True, START),
        ("old", False, leaves),
        ("i1", True, caught_up),
        ("i2", True, caught_up),
        ("live", True, caught_up),
    ]
    # Nothing is read twice: a second pass records nothing.
    await suite.settle()
    assert len(await suite.transitions("buyers")) == 5
    entered = await suite.db.fetchval("SELECT count(*) FROM customer_events WHERE name = 'segment_entered'")
    assert entered == 4


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_the_lag_bound_reads_while_an_import_goes_on(suite: Suite) -> None:
    """An import that goes on (its mark renewed) defers the consumer only until the oldest unread
    event has waited EVENTLINE_SEGMENTATION_IMPORT_MAX_LAG_S (30 s by default) by the clock."""
    from eventline_shared.streams.imports import ImportMark

    consumer = suite.segmentation_server.consumer
    mark = ImportMark(consumer.client, stream.StreamLayout(consumer.streams[0]), suite.clock)
    await suite.save("buyers", purchases(1, 30))
    await _track_batch(suite, [("i1", "purchase", START - DAY)], bulk=True)
    for _ in range(29):
        suite.clock.advance(dt.timedelta(seconds=1))
        await mark.publish()  # the import goes on
        assert await consumer.drain() == 0
    suite.clock.advance(dt.timedelta(seconds=1) - dt.timedelta(microseconds=1))
    await mark.publish()
    assert await consumer.deferred(consumer.streams[0])
    suite.clock.advance(dt.timedelta(microseconds=1))  # the event has waited 30 s
    assert await consumer.drain() == 1
    assert await suite.members("buyers") == ["i1"]
    assert await _unread(suite) == (0, 0)


async def test_an_unhinted_batch_sets_no_mark_and_is_read_at_once(suite: Suite) -> None:
    consumer = suite.segmentation_server.consumer
    await suite.save("buyers", purchases(1, 30))
    await _track_batch(suite, [("u1", "purchase", START - DAY)], bulk=False)
    assert await consumer.client.get(stream.import_mark_key(consumer.streams[0])) is None
    assert not await consumer.deferred(consumer.streams[0])
    assert await consumer.drain() == 1
    assert await suite.members("buyers") == ["u1"]


async def test_hinted_bad_input_is_refused_as_without_the_hint_and_an_unreadable_entry_is_read(
    suite: Suite,
) -> None:
    """A hinted call is validated as any: no event is INVALID_ARGUMENT on ``events``, a bad item
    is refused with its path and stores nothing (no mark for a call that stores nothing). While
    the mark is live, an oldest unread entry that cannot be parsed is read (and dead-lettered)
    rather than left to block the partition."""
    from eventline_shared.streams.imports import ImportMark

    consumer = suite.segmentation_server.consumer
    key = consumer.streams[0]
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await suite.ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(bulk_import=True))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(empty.value)) == {"events"}
    request = ingestion_pb2.TrackEventsRequest(bulk_import=True)
    request.events.add().customer_event.CopyFrom(customer_event("b1", "bad name"))
    reply = await suite.ingestion.TrackEvents(request)
    assert reply.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "events[0].customer_event.name" in reply.results[0].error.message
    await suite.ingestion_server.imports.settled()
    assert await consumer.client.get(stream.import_mark_key(key)) is None

    await suite.save("buyers", purchases(1, 30))
    await consumer.ensure_group()
    await ImportMark(consumer.client, stream.StreamLayout(key), suite.clock).publish()
    await consumer.client.xadd(
        key, {"event_id": "x", "customer_id": "b2", "name": "purchase", "payload": b"\xff"}
    )
    assert not await consumer.deferred(key)
    assert await consumer.drain() == 1
    assert len(await consumer.client.xrange(stream.dead_letter_key(key))) == 1


async def test_the_running_consumer_holds_its_reads_while_the_mark_holds_then_catches_up(
    db_url: str, stream_key: str, redis_url: str, redis_client: stream.Client, db: asyncpg.Connection
) -> None:
    """Segmentation serving in the background: once its consumer has found the mark live after an
    event was appended, the event stays unread (and nothing pending) until the clock passes the
    mark; then it is read and its customer enters."""
    from eventline_shared.streams.imports import LEASE, ImportMark

    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url)
    async with serving(env, db, relay=True, background=True) as suite:
        # "purchase at least once": no forecast sweep, only the consumer can move it.
        await suite.save("buyers", pb.Filter(event=pb.EventCondition(name="purchase")))
        handler = suite.segmentation_server.consumer.handler
        answers: list[bool] = []
        asked = handler.deferring

        async def deferring() -> bool:
            answers.append(await asked())
            return answers[-1]

        handler.deferring = deferring  # type: ignore[method-assign]

        async def deferred_since(seen: int) -> bool:
            return len(answers) > seen and answers[-1]

        # Held from an answer after the mark was set (until the next answer, also True), so the
        # event appended next is not read before the consumer asks again.
        seen = len(answers)
        await ImportMark(redis_client, stream.StreamLayout(stream_key), suite.clock).publish()
        await eventually(lambda: deferred_since(seen), 60, "the consumer never deferred")
        await suite.track("b1", "purchase", START - DAY)

        async def on_the_stream() -> bool:
            return bool(await redis_client.xlen(stream_key))

        await eventually(on_the_stream, 60, "the relay did not publish the event")
        seen = len(answers)
        await eventually(lambda: deferred_since(seen), 60, "the consumer did not ask again")
        unread, pending = await _unread(suite)  # the purchase (and the new customer's profile notice)
        assert unread >= 1 and pending == 0
        assert await suite.members("buyers") == []
        suite.clock.advance(LEASE)

        async def entered() -> bool:
            return await suite.members("buyers") == ["b1"]

        await eventually(entered, 60, "the consumer did not catch up once the mark lapsed")
