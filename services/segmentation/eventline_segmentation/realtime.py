"""Real-time segments: membership kept exact as events arrive and as time passes.

Three kinds of work keep a real-time segment's stored membership equal to
MatchCustomer's answer at every instant, on any number of replicas:

* **Events.** ``SegmentEvents`` consumes the event stream (its own consumer
  group, through the shared ``ConsumerGroup``). For each customer of a batch it
  re-evaluates the real-time segments the events can affect: those whose
  filter names one of the events (``transitions.dependencies``), those an
  empty customer matches (a new customer may enter them on any first event),
  and those with profile conditions (see ``_affected``).
* **Time.** After every evaluation of a segment that moves with time, the next
  instant its membership may change (``transitions.forecast``) is stored as a
  timer (``eventline_shared.storage.timers``); ``fire_due`` claims the due timers and
  re-evaluates at exactly their instant.
* **Backfill.** Marking a segment real-time, or changing its filter or time
  zone, computes its membership with the SQL compiler in pages of customers
  (in byte order of their ids), silently. See ``backfill_page`` for why no
  event arriving meanwhile is missed.

Every evaluation of a customer runs in one transaction holding that
customer's lock (``MembershipRepository.lock_customer``) and compares the
answer with the stored membership: only a difference is a transition. So a
redelivered event, a timer claimed twice or a second replica find nothing to
change, and each transition is recorded once, with its customer event
(``segment_entered`` / ``segment_exited``) written to ingestion's
``customer_events`` and outbox in the same transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates import filters, periods
from eventline_predicates.filters import BoolNode, CustomerNode, EventNode, Node
from eventline_segmentation import compiler, evaluation, transitions
from eventline_segmentation.membership import Definition, MembershipRepository
from eventline_shared import faults
from eventline_shared.clock import Clock
from eventline_shared.storage.database import Connection
from eventline_shared.storage.timers import Due, TimerTable
from eventline_shared.streams.consumer_group import Received, StreamHandler

log = logging.getLogger(__name__)

TIMERS = TimerTable("segment_timers", ["segment_id", "customer_id"])
BACKFILL_PAGE = 500
"""Customers per backfill transaction (each holds their locks until it commits)."""


@dataclass(frozen=True)
class Compiled:
    """A real-time segment ready to evaluate."""

    definition: Definition
    root: Node
    zone: dt.tzinfo
    dependencies: transitions.Dependencies
    empty_matches: bool
    """Whether a customer without events and with an empty profile matches (then any first
    event of a new customer may make them enter)."""


def compile_definition(definition: Definition) -> Compiled:
    checked = filters.check(pb.Filter.FromString(definition.filter), "segment.filter", {})
    if checked.root is None or checked.violations:
        raise ValueError(f"segment {definition.segment_id}: stored filter no longer checks")
    root = checked.root
    return Compiled(
        definition,
        root,
        periods.time_zone(definition.time_zone),
        transitions.dependencies(root),
        _holds_when_empty(root),
    )


def _holds_when_empty(root: Node) -> bool:
    """The answer for a customer with no events and an empty profile (time plays no part:
    without events no test involving a date can hold)."""
    if isinstance(root, BoolNode):
        results = [_holds_when_empty(child) for child in root.children]
        if root.op == "not":
            return not results[0]
        return all(results) if root.op == "all" else any(results)
    if isinstance(root, EventNode):
        return root.test == "count" and root.low <= 0
    assert isinstance(root, CustomerNode)
    return (
        root.test == "attribute"
        and root.predicate is not None
        and root.predicate.operator == pb.OPERATOR_NOT_EXISTS
    )


@dataclass(frozen=True)
class Observation:
    member: bool
    next_change: dt.datetime | None


async def observe(
    connection: Connection, segment: Compiled, customer_id: str, now: dt.datetime
) -> Observation | None:
    """Membership at ``now`` by MatchCustomer's query and evaluation, and when time alone may change
    it next (None: never); None when the customer does not exist."""
    clock = periods.Clock(now, segment.zone)
    query = compiler.match_query(segment.root, clock, customer_id)
    row = await connection.fetchrow(query.sql, *query.params)
    if row is None:
        return None
    matched, explanations = evaluation.explain(query, row, clock)
    if not segment.dependencies.changes_with_time:
        return Observation(matched, None)
    seen = {e.path: e for e in explanations}
    plan = transitions.plan(segment.root, now, segment.zone)
    loaded: dict[str, transitions.Loaded] = {}
    for load in plan.loads:
        path = load.node.path
        if isinstance(load, transitions.AnswerNow):
            loaded[path] = transitions.Answer(seen[path].held)
        elif isinstance(load, transitions.LatestOccurrence):
            loaded[path] = transitions.Occurrence(seen[path].last)
        elif isinstance(load, transitions.EarliestOccurrence):
            loaded[path] = transitions.Occurrence(seen[path].first)
        else:
            loaded[path] = await _window(connection, load, customer_id)
    forecast = transitions.forecast(plan, loaded)
    if forecast.member != matched:
        # Two implementations of one semantics disagree: trust MatchCustomer's, look again soon.
        log.error("forecast and match disagree", extra={"segment_id": segment.definition.segment_id})
        return Observation(matched, now + dt.timedelta(seconds=1))
    return Observation(matched, forecast.next_change)


async def _window(
    connection: Connection, load: transitions.WindowOccurrences, customer_id: str
) -> transitions.WindowEvents:
    node = load.node
    found: list[list[dt.datetime]] = []
    for inside in (True, False):
        params = compiler.Params()
        where = [
            f"e.customer_id = {params.add(customer_id, 'text')}",
            f"e.name = {params.add(node.name, 'text')}",
            *(compiler.predicate_sql(p, "e.context", params) for p in node.predicates),
        ]
        if inside:
            where += compiler.interval_sql("e.occurred_at", load.window, params)
            order = "DESC"
        else:
            assert load.window.end is not None
            sign = ">" if load.window.end_inclusive else ">="
            where.append(f"e.occurred_at {sign} {params.add(load.window.end, 'timestamptz')}")
            order = "ASC"
        sql = (
            f"SELECT e.occurred_at FROM customer_events e WHERE {' AND '.join(where)} "
            f"ORDER BY e.occurred_at {order} LIMIT {params.add(load.limit, 'int')}"
        )
        found.append([r[0] for r in await connection.fetch(sql, *params.values)])
    return transitions.WindowEvents(tuple(found[0]), tuple(found[1]))


class RealtimeSegments:
    """The real-time segment engine of one replica (any number may run at once)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        repository: MembershipRepository,
        clock: Clock,
        *,
        poll_s: float = 0.2,
        fire_concurrency: int = 4,
        transition_retention_s: float = 7 * 24 * 3600.0,
        prune_every_s: float = 60.0,
    ) -> None:
        self.pool = pool
        self.repository = repository
        self.clock = clock
        self.poll_s = poll_s
        self.fire_concurrency = fire_concurrency
        self.transition_retention = dt.timedelta(seconds=transition_retention_s)
        self.prune_every = dt.timedelta(seconds=prune_every_s)
        self._next_prune: dt.datetime | None = None
        self._compiled: dict[tuple[str, bytes, str, int], Compiled] = {}
        self._stop = asyncio.Event()
        self.errors: list[str] = []

    def compiled(self, definition: Definition) -> Compiled:
        key = (definition.segment_id, definition.filter, definition.time_zone, definition.generation)
        found = self._compiled.get(key)
        if found is None or found.definition != definition:
            if len(self._compiled) > 10_000:
                self._compiled.clear()
            found = self._compiled[key] = compile_definition(definition)
        return found

    async def _apply(
        self,
        connection: Connection,
        segment: Compiled,
        customer_id: str,
        stored: bool,
        now: dt.datetime,
    ) -> bool | None:
        """Evaluate at ``now`` and record the difference with ``stored``; returns the new membership."""
        observed = await observe(connection, segment, customer_id, now)
        if observed is None:
            return None
        key = (segment.definition.segment_id, customer_id)
        if observed.member != stored:
            await self.repository.transition(
                connection, segment.definition, customer_id, observed.member, now, self.clock.now()
            )
        if observed.next_change is None:
            await TIMERS.cancel(connection, key)
        else:
            await TIMERS.set(connection, key, observed.next_change)
        return observed.member

    # Events --------------------------------------------------------------------------

    async def customer_events(self, customer_id: str, names: set[str]) -> int:
        """Re-evaluate the real-time segments events named ``names`` can affect; returns transitions."""
        changed = 0
        async with self.pool.acquire() as connection, connection.transaction():
            await self.repository.lock_customer(connection, customer_id)
            # Read after the lock: an evaluation of this customer that held it (a timer at its
            # due instant) is never later than this one.
            now = self.clock.now()
            affected = [
                s
                for s in map(self.compiled, await self.repository.definitions(connection))
                if s.definition.covers(customer_id) and self._affected(s, names)
            ]
            if not affected:
                return 0
            stored = await self.repository.memberships(
                connection, customer_id, [s.definition.segment_id for s in affected]
            )
            for segment in sorted(affected, key=lambda s: s.definition.segment_id):
                was = segment.definition.segment_id in stored
                member = await self._apply(connection, segment, customer_id, was, now)
                changed += member is not None and member != was
            await faults.point("segmentation.before_commit")
        return changed

    async def concerned(self, names: dict[str, set[str]]) -> list[str]:
        """The customers of ``names`` (their events' names by customer) whose events some real-time
        segment's filter may depend on (``_affected``): one read of the definitions for a batch,
        without locks, so that a customer no segment can be affected by costs no transaction.

        Leaving the others out misses nothing: their events were committed before they reached
        the stream, hence before this read; a segment marked real-time or changed after it is
        backfilled from the start, and each backfill page reads its customers' data (these events
        included) after this read. Whether a segment covers the customer yet is not asked here (a
        page in progress may reach them before ``customer_events`` takes their lock): the chosen
        customers are evaluated as before, the definitions read again under their lock.
        """
        segments = [self.compiled(d) for d in await self.repository.definitions(self.pool)]
        return [
            customer_id
            for customer_id, seen in names.items()
            if any(self._affected(segment, seen) for segment in segments)
        ]

    @staticmethod
    def _affected(segment: Compiled, names: set[str]) -> bool:
        """Whether events named ``names`` may change the customer's membership of ``segment``.

        Those the filter names, and any entry: for filters an empty customer matches (the
        event or profile change may have created the customer), and for filters with profile
        conditions. Ingestion publishes a notice (``reserved.PROFILE_CHANGED``) after every
        profile change while real-time segments exist, so a profile change moves membership
        at once; any other event of the customer re-evaluates them too, which also covers a
        change committed while the first real-time segment was being created.
        """
        deps = segment.dependencies
        return bool(names & deps.event_names) or segment.empty_matches or bool(deps.profile_fields)

    # Time ----------------------------------------------------------------------------

    async def fire_due(self, limit: int = 500) -> int:
        """Claim the timers due at the clock's now and re-evaluate each at its instant; returns how
        many fired."""
        due = await TIMERS.claim(self.pool, self.clock.now(), limit)
        # Timers of different customers fire side by side (one customer's wait for its lock).
        slots = asyncio.Semaphore(self.fire_concurrency)

        async def fire(timer: Due) -> int:
            async with slots:
                return await self._fire(timer)

        return sum(await asyncio.gather(*(fire(timer) for timer in due)))

    async def _fire(self, timer: Due) -> int:
        segment_id, customer_id = timer.key
        async with self.pool.acquire() as connection, connection.transaction():
            await self.repository.lock_customer(connection, customer_id)
            if not await TIMERS.take(connection, timer):
                return 0  # moved or removed by another evaluation meanwhile
            found = [d for d in await self.repository.definitions(connection) if d.segment_id == segment_id]
            if not found or not found[0].covers(customer_id):
                return 1  # the backfill will set this customer's timer
            segment = self.compiled(found[0])
            stored = bool(await self.repository.memberships(connection, customer_id, [segment_id]))
            # At the timer's own instant: a transition is recorded when it happened, and a
            # scheduler that fell behind replays every change in order.
            await self._apply(connection, segment, customer_id, stored, timer.due_at)
        return 1

    # Backfill ------------------------------------------------------------------------

    async def backfill_page(self, segment_id: str) -> bool:
        """Compute the next page of a segment's membership; returns whether the backfill is done.

        No event is missed: the consumer leaves alone every customer the backfill has not
        reached yet (``Definition.covers``), and a page takes the locks of its customers
        before it reads their data, then moves the progress mark in the same transaction.
        An event of a customer the page covers is either handled before the page (whose
        reads then see it: read committed) or after it (by the consumer, now covering the
        customer). No "entered" transition is recorded for what the backfill finds.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            seen = await self.repository.lock_progress(connection, segment_id)
            if seen is None or seen[0] is None:
                return True
        after = seen[0]
        async with self.pool.acquire() as connection, connection.transaction():
            page = await self.repository.next_customers(connection, after, BACKFILL_PAGE)
            await self.repository.lock_customers(connection, page)
            # Customer locks first, then the progress row: the order every locker uses.
            if await self.repository.lock_progress(connection, segment_id) != seen:
                return False  # another replica moved on, or the filter changed: look again
            definition = await self.repository.definition(connection, segment_id)
            if not page:
                await self.repository.set_progress(connection, segment_id, None)
                return True
            segment = self.compiled(definition)
            now = self.clock.now()
            clock = periods.Clock(now, segment.zone)
            # One query bounded by the page: its id sets read only the page's customers' rows.
            await self.repository.plan_each_page(connection)
            query = compiler.page_query(segment.root, clock, page)
            members = [r[0] for r in await connection.fetch(query.sql, *query.params)]
            last = page[-1]
            await self.repository.replace_members(connection, segment_id, page[0], last, members, now)
            await self.repository.clear_timers(connection, segment_id, page[0], last)
            settled = transitions.settled_before(segment.root, now, segment.zone)
            if settled is not None and segment.dependencies.event_names:
                # Only customers with recent enough events of the filter's names can change with
                # time alone. Their forecasts are left to the scheduler (one query per customer,
                # the bulk of a backfill's cost otherwise): a timer due at this instant
                # re-evaluates each at it, then at every change since, so nothing is lost while
                # the scheduler catches up.
                moving = await self.repository.with_events(
                    connection, page, sorted(segment.dependencies.event_names), settled
                )
                await TIMERS.set_many(connection, [(segment_id, c) for c in moving], now)
            done = len(page) < BACKFILL_PAGE
            await self.repository.set_progress(connection, segment_id, None if done else last)
            return done

    async def backfill(self, segment_id: str) -> None:
        """Run a segment's backfill to its end."""
        while not await self.backfill_page(segment_id):
            pass

    async def backfill_all(self) -> None:
        for segment_id in await self.repository.backfilling():
            await self.backfill(segment_id)

    # Pruning -----------------------------------------------------------------------

    async def prune(self, batch: int = 10_000) -> int:
        """Delete the transitions that happened more than the retention before the clock's now, in
        batches of ``batch`` per segment and transaction; returns how many."""
        before = self.clock.now() - self.transition_retention
        pruned = 0
        for segment_id in await self.repository.realtime_segment_ids():
            while True:
                async with self.pool.acquire() as connection, connection.transaction():
                    count = await self.repository.prune(connection, segment_id, before, batch)
                pruned += count
                if count < batch:
                    break
        return pruned

    async def prune_when_due(self) -> int:
        """``prune`` once every ``prune_every`` of the clock (each replica keeps its own schedule;
        the per-segment lock keeps two from pruning one segment at once)."""
        now = self.clock.now()
        if self._next_prune is not None and now < self._next_prune:
            return 0
        self._next_prune = now + self.prune_every
        return await self.prune()

    # Serving -------------------------------------------------------------------------

    async def run(self) -> None:
        """Fire timers and run backfills until ``shutdown``."""
        while not self._stop.is_set():
            try:
                await self.backfill_all()
                while await self.fire_due():
                    pass
                await self.prune_when_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors = [*self.errors[-9:], repr(exc)[:500]]
                log.exception("real-time segment work failed; retrying")
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            except TimeoutError:
                pass

    def shutdown(self) -> None:
        self._stop.set()


class SegmentEvents(StreamHandler):
    """The event stream's consumer for real-time segments."""

    def __init__(self, engine: RealtimeSegments) -> None:
        self.engine = engine

    async def handle(self, batch: Sequence[Received]) -> None:
        names: dict[str, set[str]] = {}
        for item in batch:
            if item.entry.customer_id:  # system events change no customer's membership
                names.setdefault(item.entry.customer_id, set()).add(item.entry.name)
        if not names:
            return
        for customer_id in await self.engine.concerned(names):
            await self.engine.customer_events(customer_id, names[customer_id])
