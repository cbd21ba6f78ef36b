"""Real-time segments: membership kept exact as events arrive and as time passes.

Three kinds of work keep a real-time segment's stored membership equal to
MatchCustomer's answer at every instant, on any number of replicas:

* **Events.** ``SegmentEvents`` consumes the event stream (its own consumer
  group, through the shared ``ConsumerGroup``). For each customer of a batch it
  re-evaluates the real-time segments the events can affect: those whose
  filter names one of the events (``transitions.dependencies``), those an
  empty customer matches (a new customer may enter them on any first event),
  and, on a profile notice, those with profile conditions (see ``Affected``). While no real-time
  segment exists it reads nothing: the group moves past the entries unread
  (``SegmentEvents.idle``). While bulk imports are being stored it reads nothing
  new either, and catches up afterwards, within an operator's bound on the lag
  (``SegmentEvents.deferring``).
* **Time.** After every evaluation of a segment that moves with time, the next
  instant its membership may change (``transitions.forecast``) is stored as a
  timer (``eventline_shared.storage.timers``); ``fire_due`` claims the due timers and
  re-evaluates at exactly their instant.
* **Backfill.** Marking a segment real-time, or changing its filter or time
  zone, computes its membership with the SQL compiler in one statement,
  silently (see ``backfill`` for why no event arriving meanwhile is missed),
  and leaves the forecasts of the customers time can move to a forecast sweep
  that the scheduler walks in pages (``sweep_forecasts``).

Every evaluation of a customer runs in one transaction holding that
customer's lock (``MembershipRepository.lock_customers``) and compares the
answer with the stored membership: only a difference is a transition. So a
redelivered event, a timer claimed twice or a second replica find nothing to
change, and each transition is recorded once, with its customer event
(``segment_entered`` / ``segment_exited``) written to ingestion's
``customer_events`` and outbox in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import asyncpg
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates import filters, periods
from eventline_predicates.filters import BoolNode, CustomerNode, EventNode, Node
from eventline_segmentation import compiler, evaluation, pruning, transitions
from eventline_segmentation.membership import Change, Definition, MembershipRepository, Stored
from eventline_shared import faults
from eventline_shared.clock import Clock
from eventline_shared.storage.database import Connection
from eventline_shared.storage.timers import Due, TimerTable
from eventline_shared.streams.consumer_group import Received, StreamHandler
from eventline_shared.streams.imports import ImportMark
from eventline_shared.streams.reserved import PROFILE_CHANGED
from eventline_shared.values import timestamp_to_datetime

log = logging.getLogger(__name__)

TIMERS = TimerTable("segment_timers", ["segment_id", "customer_id"])
_MIN_WAIT_S = 0.01
"""The scheduler's shortest wait between looks for due timers."""
FIRE_LIMIT = 2_000
"""Most timers claimed at once. A scheduler that fell behind catches up in rounds this large: the
statements of a round cost about the same for 500 timers as for 2,000 (20,000 exits all due, in
process, load ~7: 1,190 fired/s in claims of 500, 1,830/s in claims of 2,000)."""
_FIRE_CHUNK_MIN = 50
"""Fewest timers per firing transaction when a claim is split between ``fire_concurrency``."""
SWEEP_PAGE = 500
"""Customers per forecast sweep transaction (each holds their locks until it commits)."""
PARTS_PER_BATCH = 2
"""Most transactions a consumer batch is evaluated in (groups of customers whose segments are
disjoint, ``Affected.parts``): the cheapest group apart, the others together. With the consumer's 4
batches in flight, at most 8 of the pool's connections (10 by default) at once."""
DEFAULT_IMPORT_MAX_LAG = dt.timedelta(seconds=30)
"""The longest the consumer leaves new events unread while bulk imports run (a setting)."""
SWEEP_LEASE = dt.timedelta(seconds=30)
"""How long a replica holds a sweep it claimed before another may take it over."""


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
        return root.combine(_holds_when_empty(child) for child in root.children)
    if isinstance(root, EventNode):
        return root.test == "count" and root.low <= 0
    assert isinstance(root, CustomerNode)
    return (
        root.test == "attribute"
        and root.predicate is not None
        and root.predicate.operator == pb.OPERATOR_NOT_EXISTS
    )


class Affected:
    """Which of ``segments`` a customer's entries may move, by the entries' names (looked up in
    an index of the segments' names: a consumer batch asks for each of its customers).

    A segment is moved by the events its filter names; by any entry when an empty customer
    matches it (the event or profile change may have created the customer); and by a profile
    notice when it has profile conditions. Ingestion publishes a notice
    (``reserved.PROFILE_CHANGED``) after every profile change while real-time segments exist,
    so a profile change moves membership at once, and nothing but a profile change (or the
    customer's creation) moves a profile condition. A change committed while the first
    real-time segment was being created, without a notice, is read by that segment's backfill
    (``MembershipRepository.wait_for_profile_writers``).
    """

    def __init__(self, segments: Sequence[Compiled]) -> None:
        self.segments = segments
        self._always = {i for i, s in enumerate(segments) if s.empty_matches}
        self._on_profile = {i for i, s in enumerate(segments) if s.dependencies.profile_fields}
        self._by_name: dict[str, list[int]] = {}
        for i, segment in enumerate(segments):
            for name in segment.dependencies.event_names:
                self._by_name.setdefault(name, []).append(i)

    def by(self, names: Collection[str]) -> list[Compiled]:
        """The segments entries named ``names`` may move, in the order of ``segments``."""
        return [self.segments[i] for i in sorted(self._indexes(names))]

    def _indexes(self, names: Collection[str]) -> set[int]:
        found = set(self._always)
        for name in names:
            found.update(self._by_name.get(name, ()))
        if PROFILE_CHANGED in names:
            found |= self._on_profile
        return found

    def parts(self, names: Mapping[str, Collection[str]], limit: int) -> list[list[str]]:
        """The customers of ``names`` (their entries' names by customer) that entries may move any
        segment of, in at most ``limit`` groups whose segments are disjoint: customers whose
        segments overlap (directly, or through other customers) share a group. Each segment is
        then in one group's evaluation statement only, so evaluating the groups apart costs no
        segment's share of a statement twice (its plan, its executor's start: tens of ms for 50
        segments even with few customers, docs/performance.md), and a customer whose segments
        are few (segments no other customer of the batch needs) is not held by a statement of all
        the others.
        Beyond ``limit``, the costliest groups (probes: customers times segments) are merged into
        one; the groups come in the order of their first customer in ``names``."""
        owner: dict[int, int] = {}  # union-find over the segments' indexes

        def root(i: int) -> int:
            while owner.setdefault(i, i) != i:
                owner[i] = owner[owner[i]]
                i = owner[i]
            return i

        touched: dict[str, list[int]] = {}
        for customer_id, seen in names.items():
            found = sorted(self._indexes(seen))
            if not found:
                continue
            touched[customer_id] = found
            first = root(found[0])
            for i in found[1:]:
                owner[root(i)] = first
        groups: dict[int, list[str]] = {}
        cost: dict[int, int] = {}
        for customer_id, found in touched.items():
            key = root(found[0])
            groups.setdefault(key, []).append(customer_id)
            cost[key] = cost.get(key, 0) + len(found)
        if len(groups) > limit:
            cheapest = sorted(groups, key=lambda k: cost[k])
            merged = [c for k in cheapest[limit - 1 :] for c in groups.pop(k)]
            groups[cheapest[limit - 1]] = merged
        order = {customer_id: n for n, customer_id in enumerate(names)}
        return sorted(
            (sorted(group, key=order.__getitem__) for group in groups.values()), key=lambda g: order[g[0]]
        )


class _Superseded(Exception):
    """A sweep's page was walked by another replica, or a new backfill replaced the sweep."""


class Observation(NamedTuple):
    """A probe's answer (a tuple: one is made per probe, thousands per consumer batch)."""

    member: bool
    next_change: dt.datetime | None


class Probe(NamedTuple):
    """One evaluation to make: a customer's membership of a segment at an instant (a tuple: a
    consumer batch makes thousands, a frozen dataclass's ``__init__`` took ~3 times as long)."""

    segment: Compiled
    customer_id: str
    at: dt.datetime


async def observe_many(connection: Connection, probes: Sequence[Probe]) -> list[Observation | None]:
    """Each probe's membership at its instant by MatchCustomer's query and evaluation, and when
    time alone may change it next (None: never), in one statement; answers in the order of
    ``probes``, None for a customer that does not exist.

    The probes of one segment make one query over their customers, each at the instant of its
    own probe (``compiler.match_many_query``: only the columns that decide each condition), that
    also loads the events the forecast needs (``transitions.plan``'s windows, as arrays of
    microseconds since 1970: the rows of the segments' queries differ in shape, so each travels
    as an anonymous record, which asyncpg decodes only with scalar fields); the segments' queries
    are joined by UNION ALL, in the order of their ids, so that the statement's text depends only
    on which segments it holds.
    """
    grouped: dict[str, list[int]] = {}
    segments: dict[str, Compiled] = {}
    for index, probe in enumerate(probes):
        grouped.setdefault(probe.segment.definition.segment_id, []).append(index)
        segments[probe.segment.definition.segment_id] = probe.segment
    groups = {segment_id: grouped[segment_id] for segment_id in sorted(grouped)}
    params = compiler.Params()
    parts: list[str] = []
    readings: list[_Reading] = []
    unkeyed: set[str] = set()
    latest_names: list[str] = []
    for number, (segment_id, indexes) in enumerate(groups.items()):
        segment = segments[segment_id]
        # Probes of one instant (all of an event batch's) share their clock, plan and bounds.
        instants = {probes[i].at for i in indexes}
        rows = compiler.RowBounds(params, [probes[i].customer_id for i in indexes], shared=len(instants) == 1)
        clock_at = {at: periods.Clock(at, segment.zone) for at in instants}
        clocks = [clock_at[probes[i].at] for i in indexes]
        plans = None
        extra: list[str] = []
        # A count in a sliding period is decided by its window's events (at most its limit):
        # the query counts nothing more for it.
        listed: dict[int, str] = {}
        if segment.dependencies.changes_with_time:
            plan_at = {at: transitions.plan(segment.root, at, segment.zone, clock_at[at]) for at in instants}
            plans = [plan_at[probes[i].at] for i in indexes]
            node_index = {id(node): i for i, node in enumerate(filters.walk(segment.root))}
            for j, load in enumerate(plans[0].loads):
                if isinstance(load, transitions.WindowOccurrences):
                    windows = [cast(transitions.WindowOccurrences, plan.loads[j]).window for plan in plans]
                    extra += _window_columns(load, j, rows.bounds(windows), params, latest_names)
                    listed[node_index[id(load.node)]] = f"w{j}"
        query = compiler.match_many_query(
            segment.root, clocks, params, rows, [*extra, "q.position AS position"], listed
        )
        readings.append(_Reading(query, indexes, clocks, plans, listed))
        parts.append(f"SELECT {number} AS g, ROW(x.*) AS r FROM ({query.sql}) x")
        if not query.keyed:
            unkeyed.update(rows.customer_ids)
    found: list[Observation | None] = [None] * len(probes)
    if not probes:
        return found
    if unkeyed:
        # Which customers of the queries without profile conditions exist (those queries give a
        # row for every probe), once per customer: g = -1.
        parts.append(f"SELECT -1 AS g, ROW(x.*) AS r FROM ({compiler.existing_query(params, unkeyed)}) x")
    head = _LATEST.format(names=", ".join(latest_names)) if latest_names else ""
    records = await connection.fetch(head + " UNION ALL ".join(parts), *params.values)
    existing = {record[1][0] for record in records if record[0] < 0}
    for n, record in enumerate(records):
        if n % 100 == 99:
            await asyncio.sleep(0)  # let the event loop serve others between slices of a large batch
        if record[0] < 0:
            continue
        reading = readings[record[0]]  # g
        row = record[1]  # r
        if not reading.keyed and row[0] not in existing:
            continue  # no such customer (erased): no observation, as a keyed query gives no row
        position = row[reading.position] - 1
        index = reading.indexes[position]
        found[index] = reading.observation(probes[index], row, position)
    return found


class _Reading:
    """How to read the rows of one segment's query in ``observe_many``: its columns by position,
    and what each of the forecast's loads reads."""

    def __init__(
        self,
        query: compiler.MatchQuery,
        indexes: list[int],
        clocks: list[periods.Clock],
        plans: list[transitions.LoadPlan] | None,
        listed: Mapping[int, str],
    ) -> None:
        self.indexes = indexes
        self.keyed = query.keyed
        self.clocks = clocks
        self.plans = plans
        self.decision = evaluation.Decision(query, listed)
        column = {name: k for k, name in enumerate(query.names)}
        self.position = column["position"]
        node_index = {id(node): i for i, node in enumerate(query.nodes)}
        # Per load (``transitions.next_change``'s values): its kind, the index of its node, and the
        # columns it reads (the node's decisive one, or the window's two).
        self.loads: list[tuple[int, int, int, int]] = []
        for j, step in enumerate(plans[0].steps if plans else ()):
            i = node_index[id(step.load.node)]
            if step.kind == transitions.ANSWER:
                self.loads.append((step.kind, i, -1, -1))
            elif step.kind == transitions.WINDOW:
                self.loads.append((step.kind, i, column[f"w{j}"], column[f"a{j}"]))
            else:  # the latest or earliest occurrence: the decisive column of days since, last, first
                self.loads.append((step.kind, i, column[compiler.decisive_column(step.load.node, i)], -1))

    def observation(self, probe: Probe, row: Sequence[Any], position: int) -> Observation:
        held = self.decision.held(row, self.clocks[position])
        matched = held[0]
        if self.plans is None:
            return Observation(matched, None)
        # The loaded values as the forecast reads them: instants in microseconds since 1970 (the
        # windows' lists come as such), no ``Loaded`` objects.
        values: list[transitions.Value] = []
        for kind, i, column, after in self.loads:
            if kind == transitions.ANSWER:
                values.append(held[i])
            elif kind == transitions.WINDOW:
                values.append((_micros_list(row[column]), _micros_list(row[after])))
            else:
                at = row[column]
                values.append(None if at is None else transitions.to_micros(at))
        member, change = transitions.next_change(self.plans[position], values)
        if member != matched:
            # Two implementations of one semantics disagree: trust MatchCustomer's, look again soon.
            log.error(
                "forecast and match disagree", extra={"segment_id": probe.segment.definition.segment_id}
            )
            return Observation(matched, probe.at + dt.timedelta(seconds=1))
        return Observation(matched, None if change is None else transitions.from_micros(change))


def _window_columns(
    load: transitions.WindowOccurrences,
    j: int,
    bounds: tuple[str, str],
    params: compiler.Params,
    names: list[str],
) -> list[str]:
    """The events a window load asks for: the newest ``limit`` inside the window (``w<j>``) and the
    earliest ``limit`` after it (``a<j>``), as text lists of microseconds since 1970.

    The events after the window are looked for only when some customer has an event of the name
    after its end (the latest ``customer_event_stats.last_at`` of the name: ``_LATEST``, one probe
    of ``customer_event_stats_by_name`` per name and statement, not per row; the name's
    placeholder is added to ``names``): a sliding window ends at the
    evaluation's instant or at a day's start, and events stamped after that are rare (a timer fired
    late, an event dated ahead); when there are some, they are read as before. Exact: an event's stats row is written in the transaction
    that stores it, so the statement's snapshot holds both or neither, and ``last_at`` is never
    earlier than the customer's latest event of the name (whatever its context). Without the
    guard this column's index descent, finding nothing, was a fifth of the evaluation
    statement's CPU (docs/performance.md, "the consumer's PostgreSQL per event")."""
    node = load.node
    start, end = bounds
    name = params.add(node.name, "text")
    matching = " AND ".join(
        [
            "e.customer_id = c.customer_id",
            f"e.name = {name}",
            *(compiler.predicate_sql(p, "e.context", params) for p in node.predicates),
        ]
    )
    limit = params.add(load.limit, "int")
    micros = "(extract(epoch FROM e.occurred_at) * 1000000)::bigint"

    def events(where: str, order: str) -> str:
        return (
            f"array_to_string(ARRAY(SELECT {micros} FROM customer_events e WHERE {matching} AND {where} "
            f"ORDER BY e.occurred_at {order} LIMIT {limit}), ',')"
        )

    # An uncorrelated subquery: evaluated once per statement (an InitPlan), over ``_LATEST``.
    latest = f"(SELECT l.at FROM latest l WHERE l.name = {name})"
    names.append(name)
    return [
        f"{events(f'e.occurred_at >= {start} AND e.occurred_at <= {end}', 'DESC')} AS w{j}",
        f"CASE WHEN {latest} > {end} THEN {events(f'e.occurred_at > {end}', 'ASC')} ELSE '' END AS a{j}",
    ]


# The latest instant of any event of each of the windows' names ({names}: their placeholders), at
# the head of the evaluation statement: one table for all its windows, so that the planner plans
# one probe of the stats by name rather than one per window (planning a 50-segment statement takes
# ~50 ms; a probe per window added a quarter to it).
_LATEST = (
    "WITH latest AS MATERIALIZED (SELECT d.n AS name, "
    "(SELECT max(s.last_at) FROM customer_event_stats s WHERE s.name = d.n) AS at "
    "FROM (SELECT DISTINCT n FROM unnest(ARRAY[{names}]) AS n) d) "
)


def _micros_list(text: str) -> tuple[int, ...]:
    return tuple(map(int, text.split(","))) if text else ()


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
        self.pruned_untouched = 0
        """Probes of new events not evaluated: the events change none of their conditions."""
        self.pruned_monotone = 0
        """Probes of new events not evaluated: their stored membership stands until their timer."""

    def compiled(self, definition: Definition) -> Compiled:
        key = (definition.segment_id, definition.filter, definition.time_zone, definition.generation)
        found = self._compiled.get(key)
        if found is None or found.definition != definition:
            if len(self._compiled) > 10_000:
                self._compiled.clear()
            found = self._compiled[key] = compile_definition(definition)
        return found

    async def _evaluate(
        self,
        connection: Connection,
        probes: Sequence[Probe],
        sweeping: Sequence[Definition] = (),
        *,
        past: bool = False,
        moves: Sequence[int] = (),
    ) -> int:
        """Evaluate ``probes`` (each (segment, customer) once, the customers locked), record every
        difference with the stored membership, and set or cancel each one's timer, in a handful of
        statements whatever their number; returns how many transitions.

        ``sweeping``: the probes' segments whose forecast sweep runs (``Definition.sweeping``, read
        under the customers' locks): their customers evaluated here are marked seen, so that the
        sweep leaves the timer set here (or its absence) alone. ``past``: the probes' instants may
        be before now (timers, sweeps), so none is evaluated before what it reads arrived
        (``_no_earlier_than_arrivals``). ``moves``: per probe, what new events do to its answer
        (``pruning``; none: anything): a probe whose stored membership they cannot change before
        its stored timer falls due is not evaluated (the monotone rule)."""
        if not probes:
            return 0
        keys = [(p.segment.definition.segment_id, p.customer_id) for p in probes]
        stored = await self.repository.keep_segments_reading_members(connection, keys)
        # Segments deleted meanwhile are left out, and probes the new events cannot move.
        kept = [
            i
            for i, key in enumerate(keys)
            if key[0] in stored.kept
            and not (moves and self._holds_until_timer(probes[i], key, moves[i], stored))
        ]
        if len(kept) < len(keys):
            self.pruned_monotone += sum(1 for key in keys if key[0] in stored.kept) - len(kept)
            keys, probes = [keys[i] for i in kept], [probes[i] for i in kept]
        if not probes:
            return 0
        changes: list[Change] = []
        timers: list[tuple[tuple[str, str], dt.datetime]] = []
        cancelled: list[tuple[str, str]] = []
        # The evaluation statement is planned once per connection, not per call (the statement
        # above set plan_cache_mode for the rest of the transaction).
        observed_all = await observe_many(connection, probes)
        if past:
            probes, observed_all = await self._no_earlier_than_arrivals(
                connection, list(probes), observed_all
            )
        for probe, key, observed in zip(probes, keys, observed_all, strict=True):
            if observed is None:
                continue  # no such customer (erased)
            if observed.member != (key in stored.members):
                changes.append(Change(probe.segment.definition, probe.customer_id, observed.member, probe.at))
            # Only timers that change are written (most evaluations leave them as they were).
            due = stored.timers.get(key)
            if observed.next_change is None:
                if due is not None:
                    cancelled.append(key)
            elif observed.next_change != due:
                timers.append((key, observed.next_change))
        await self.repository.record(connection, changes, self.clock.now())
        await TIMERS.set_each(connection, timers)
        await TIMERS.cancel_many(connection, cancelled)
        generations = {d.segment_id: d.generation for d in sweeping if d.sweeping}
        await self.repository.mark_seen(
            connection, [(s, generations[s], c) for s, c in keys if s in generations]
        )
        return len(changes)

    @staticmethod
    def _holds_until_timer(probe: Probe, key: tuple[str, str], move: int, stored: Stored) -> bool:
        """Whether the stored membership of ``key`` stands at every instant from the probe's until
        its stored timer falls due, whatever the new events: they can only make a member's answer
        truer, or a non-member's falser, and that timer is not overdue (it then fires and evaluates
        exactly: the true next change is no earlier than it, computed without the events)."""
        if move == pruning.MIXED or (move == pruning.TRUER) != (key in stored.members):
            return False
        due = stored.timers.get(key)
        return due is None or due > probe.at

    async def _no_earlier_than_arrivals(
        self, connection: Connection, probes: list[Probe], observed: list[Observation | None]
    ) -> tuple[list[Probe], list[Observation | None]]:
        """``probes`` evaluated at past instants (``observed``), each evaluated again at the
        latest arrival of what its segment depends on when that came after its instant
        (``_after_arrivals``), until none is moved.

        Looked for after the evaluation: under READ COMMITTED each statement has a snapshot of
        its own, taken when it starts, so the look sees every event and profile change the
        evaluation read (and perhaps a few more, which only move a probe to a later instant); a
        look before it could miss one committed in between. A probe moved is evaluated again and
        looked at again (an event that arrives meanwhile moves it once more: rare, a customer's
        own events in the milliseconds between two statements)."""
        indexes = list(range(len(probes)))
        while indexes:
            moved = await self._after_arrivals(connection, [probes[i] for i in indexes])
            again = [i for i, probe in zip(indexes, moved, strict=True) if probe.at != probes[i].at]
            for i, probe in zip(indexes, moved, strict=True):
                probes[i] = probe
            if again:
                for i, answer in zip(
                    again, await observe_many(connection, [probes[i] for i in again]), strict=True
                ):
                    observed[i] = answer
            indexes = again
        return probes, observed

    async def _after_arrivals(self, connection: Connection, probes: list[Probe]) -> list[Probe]:
        """``probes`` at past instants (timers due, a sweep's backfill instant), each moved to when
        the latest event its segment names arrived (or, for a segment with profile conditions, the
        customer's profile last changed), when that came after the probe's instant.

        The evaluation reads every event and profile stored, those the consumer has not read yet
        included (a hinted import defers its reads, a sweep walks for seconds after its backfill):
        at the probe's own instant a change they make would be stamped before they arrived.
        Evaluated at their arrival instead, as the consumer's evaluation of them at its now is (so
        whichever runs first, the same transitions), each change is stamped at or after its
        cause; a change time made due before that arrival is decided with them, as when the
        consumer reads them first (docs/segmentation.md, "Evaluations at a past instant")."""
        if not probes:
            return probes
        names = sorted({name for probe in probes for name in probe.segment.dependencies.event_names})
        profiles = any(probe.segment.dependencies.profile_fields for probe in probes)
        arrived = await self.repository.arrivals_since(
            connection,
            sorted({probe.customer_id for probe in probes}),
            names,
            min(probe.at for probe in probes),
            profiles,
        )
        if not arrived:
            return probes
        moved = []
        for probe in probes:
            depends = probe.segment.dependencies
            keys = [(probe.customer_id, name) for name in depends.event_names]
            if depends.profile_fields:
                keys.append((probe.customer_id, PROFILE_CHANGED))
            latest = max((arrived[key] for key in keys if key in arrived), default=probe.at)
            moved.append(probe._replace(at=latest) if latest > probe.at else probe)
        return moved

    # Events --------------------------------------------------------------------------

    async def customer_events(
        self, customer_id: str, names: set[str], events: Sequence[common_pb2.Event] | None = None
    ) -> int:
        """Re-evaluate the real-time segments events named ``names`` can affect (``events``: the
        events themselves, see ``customers_events``); returns transitions."""
        return await self.customers_events(
            {customer_id: names}, None if events is None else {customer_id: events}
        )

    async def customers_events(
        self,
        names: Mapping[str, set[str]],
        events: Mapping[str, Sequence[common_pb2.Event]] | None = None,
    ) -> int:
        """``customer_events`` for many customers (their event names), in one transaction and one
        evaluation query; returns transitions.

        ``events``: the new events themselves, by customer (all of them: what ``names`` lists). With
        them, a probe the events provably change nothing of is not evaluated (``pruning``)."""
        async with self.pool.acquire() as connection, connection.transaction():
            customers = sorted(names)
            await self.repository.lock_customers(connection, customers)
            # Read after the locks: an evaluation of these customers that held them (a timer at its
            # due instant) is never later than this one.
            now = self.clock.now()
            definitions = await self.repository.definitions(connection)
            affected = Affected(
                sorted(map(self.compiled, definitions), key=lambda s: s.definition.segment_id)
            )
            probes: list[Probe] = []
            moves: list[int] = []
            # A segment whose forecast sweep runs is evaluated as before: its customers evaluated
            # here are marked seen, and the sweep leaves them alone. (Read from these definitions:
            # a compiled segment keeps the definition it was compiled from.)
            rules: dict[str, pruning.Pruning | None] = {d.segment_id: None for d in definitions if d.sweeping}
            for customer_id in customers:
                arrived = pruning.arrivals(events[customer_id]) if events is not None else []
                for segment in affected.by(names[customer_id]):
                    if not segment.definition.covers(customer_id):
                        continue
                    move = pruning.MIXED
                    if events is not None:
                        rule = self._pruning(rules, segment, now)
                        if rule is not None:
                            move = rule.verdict(arrived, PROFILE_CHANGED in names[customer_id])
                    if move == pruning.UNTOUCHED:
                        self.pruned_untouched += 1
                        continue
                    probes.append(Probe(segment, customer_id, now))
                    moves.append(move)
            changed = await self._evaluate(connection, probes, definitions, moves=moves)
            await faults.point("segmentation.before_commit")
        return changed

    @staticmethod
    def _pruning(
        rules: dict[str, pruning.Pruning | None], segment: Compiled, now: dt.datetime
    ) -> pruning.Pruning | None:
        """The pruning rules of ``segment`` at ``now``, made once per evaluation (``rules``, where
        None: not pruned)."""
        segment_id = segment.definition.segment_id
        if segment_id not in rules:
            rules[segment_id] = pruning.Pruning(
                segment.root,
                periods.Clock(now, segment.zone),
                empty_matches=segment.empty_matches,
                profile_conditions=bool(segment.dependencies.profile_fields),
            )
        return rules[segment_id]

    async def concerned_parts(self, names: Mapping[str, set[str]], limit: int) -> list[list[str]]:
        """The customers of ``names`` (their events' names by customer) whose events some real-time
        segment's filter may depend on (``Affected``), in at most ``limit`` groups of customers
        whose segments are disjoint (``Affected.parts``): one read of the definitions for a batch,
        without locks, so that a customer no segment can be affected by costs no transaction (a
        batch of one customer skips it: ``SegmentEvents.handle``).

        Leaving the others out misses nothing: their events were committed before they reached
        the stream, hence before this read; a segment marked real-time or changed after it is
        backfilled from the start, and its backfill reads every customer's data (these events
        included) after this read. Whether a segment covers the customer yet is not asked here (a
        backfill in progress may end before ``customers_events`` takes their lock): the chosen
        customers are evaluated as before, the definitions read again under their lock (so a
        definition changed since only makes the groups' segments overlap: each customer is still
        in one group, evaluated in one transaction).
        """
        affected = Affected([self.compiled(d) for d in await self.repository.definitions(self.pool)])
        return affected.parts(names, limit)

    # Time ----------------------------------------------------------------------------

    async def fire_due(self, limit: int = FIRE_LIMIT) -> int:
        """Walk a page of a forecast sweep (``sweep_forecasts``), then claim the timers due at the
        clock's now and re-evaluate each at its instant; returns how many were evaluated.

        The claimed timers fire in up to ``fire_concurrency`` transactions side by side, each over
        a range of customers (a customer's timers in one), set-based: take the timers still
        standing, then one evaluation query for all of them (``_evaluate``).
        """
        swept = 0
        # Sweep pages until one evaluates a customer (a page of customers already evaluated since
        # the backfill evaluates none) or none is left to walk.
        while (evaluated := await self.sweep_forecasts()) is not None:
            swept += evaluated
            if evaluated:
                break
        due = sorted(
            await TIMERS.claim(self.pool, self.clock.now(), limit), key=lambda d: (d.key[1], d.key[0])
        )
        if not due:
            return swept
        size = max(_FIRE_CHUNK_MIN, -(-len(due) // self.fire_concurrency))
        chunks: list[list[Due]] = [[]]
        for timer in due:
            if len(chunks[-1]) >= size and timer.key[1] != chunks[-1][-1].key[1]:
                chunks.append([])
            chunks[-1].append(timer)
        return swept + sum(await asyncio.gather(*(self._fire(chunk) for chunk in chunks)))

    async def _fire(self, due: Sequence[Due]) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            await self.repository.lock_customers(connection, sorted({timer.key[1] for timer in due}))
            # Before the timers' rows (see MembershipRepository.keep_segments).
            await self.repository.keep_segments(connection, {timer.key[0] for timer in due})
            # Timers moved or removed by another evaluation meanwhile are not taken: theirs stand.
            taken = await TIMERS.take_many(connection, due)
            listed = await self.repository.definitions(connection)
            definitions = {d.segment_id: d for d in listed}
            probes = []
            for timer in due:
                segment_id, customer_id = timer.key
                definition = definitions.get(segment_id)
                # A customer the backfill has not reached gets their timer from it.
                if timer.key in taken and definition is not None and definition.covers(customer_id):
                    # At the timer's own instant: a transition is recorded when it happened, and a
                    # scheduler that fell behind replays every change in order.
                    probes.append(Probe(self.compiled(definition), customer_id, timer.due_at))
            await self._evaluate(connection, probes, listed, past=True)
        return len(taken)

    # Backfill ------------------------------------------------------------------------

    async def backfill(self, segment_id: str) -> None:
        """Compute a segment's membership at the clock's now, silently (no "entered" transition for
        what it finds), in one transaction and one statement of the SQL compiler; leave the
        forecasts of the customers time can move to a sweep (``sweep_forecasts``).

        No event is missed: until the transaction commits, the consumer leaves the segment alone
        for every customer (``Definition.covers``), and no evaluation runs while the backfill does
        (``MembershipRepository.lock_backfills``): one that read the definitions first commits
        before the backfill's statement reads any data (so it reads that evaluation's events), and
        one that comes later reads them after the backfill committed, finds the segment covering
        every customer and evaluates at its own instant. The price: evaluations of every segment
        wait for the backfill (about one CountCustomers of its filter).
        """
        # Before the backfill reads any profile: a profile change that wrote no notice (it began
        # before the first real-time segment existed) has committed by then.
        await self.repository.wait_for_profile_writers(self.pool)
        async with self.pool.acquire() as connection, connection.transaction():
            await self.repository.lock_backfills(connection)
            # The segment's rows in the order every locker uses (segments, then segment_realtime).
            if not await self.repository.keep_segments(connection, [segment_id]):
                return
            progress = await self.repository.lock_progress(connection, segment_id)
            if progress is None or progress[0] is None:
                return  # done (by another replica), or no longer real-time
            definition = await self.repository.definition(connection, segment_id)
            segment = self.compiled(definition)
            now = self.clock.now()
            members = compiler.members_query(segment.root, periods.Clock(now, segment.zone))
            await self.repository.backfill(connection, segment_id, members, now)
            moves = (
                bool(segment.dependencies.event_names)
                and transitions.settled_before(segment.root, now, segment.zone) is not None
            )
            await self.repository.start_sweep(
                connection, segment_id, definition.generation, now if moves else None
            )

    # Forecast sweeps -----------------------------------------------------------------

    async def sweep_forecasts(self, limit: int = SWEEP_PAGE) -> int | None:
        """Walk one page of a backfill's forecast sweep; returns how many customers it evaluated
        (None: no sweep to walk).

        A backfill writes no timer per customer (34-47 µs a row, most of its cost otherwise): it
        leaves one sweep per segment, with its instant. The scheduler (any replica, one at a time
        per sweep: a lease, and a conditional move at the end of each page) evaluates the sweep's
        customers — those with an event of the filter's names recent enough that time can still
        move them (``transitions.settled_before``), whose latest such event is oldest first — at
        the backfill's instant, page by page, in the transaction of timers fired at their due
        instant (``_evaluate``): each gets the timer of its next change, and a change already due
        is fired at once, at its own instant. A customer evaluated since the backfill (by an event
        or a timer of theirs: marked seen) already has their timer, and is left alone.
        """
        sweep = await self.repository.claim_sweep(self.pool, SWEEP_LEASE)
        if sweep is None:
            return None
        definition = next(
            (d for d in await self.repository.definitions(self.pool) if d.segment_id == sweep.segment_id),
            None,
        )
        if definition is None or definition.generation != sweep.generation:
            return 0  # a new backfill replaces the sweep
        segment = self.compiled(definition)
        if not sweep.filled:
            settled = transitions.settled_before(segment.root, sweep.swept_at, segment.zone)
            assert settled is not None  # a sweep exists only for segments that move with time
            await self.repository.fill_sweep(
                self.pool, sweep, sorted(segment.dependencies.event_names), settled
            )
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                page = await self.repository.sweep_customers(connection, sweep, limit)
                customers = sorted(set(page))
                await self.repository.lock_customers(connection, customers)
                seen = await self.repository.seen_by_sweep(connection, sweep, customers)
                probes = [Probe(segment, c, sweep.swept_at) for c in customers if c not in seen]
                await self._evaluate(connection, probes, past=True)
                if not await self.repository.advance_sweep(connection, sweep, len(page), len(page) < limit):
                    raise _Superseded
        except _Superseded:
            return 0
        except Exception:
            # Let any replica take the page again now rather than when the lease ends.
            with contextlib.suppress(Exception):
                await self.repository.release_sweep(self.pool, sweep)
            raise
        return len(probes)

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
            wait = self.poll_s
            try:
                await self.backfill_all()
                # Rounds until none is due, or until ``shutdown``: a stop waits for the round in
                # progress (its claimed timers all fire), not for a backlog, which stays in the table
                # for any replica.
                while not self._stop.is_set() and await self.fire_due():
                    pass
                await self.prune_when_due()
                wait = await self._until_next_timer()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors = [*self.errors[-9:], repr(exc)[:500]]
                log.exception("real-time segment work failed; retrying")
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except TimeoutError:
                pass

    async def _until_next_timer(self) -> float:
        """Seconds to wait before looking for due timers again: until the earliest one no live claim
        holds falls due (by the clock's rate now), at most ``poll_s`` (a timer set meanwhile, here or
        by another replica, may be due sooner)."""
        due = await TIMERS.next_claimable(self.pool)
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(_MIN_WAIT_S, (due - self.clock.now()).total_seconds()))

    def shutdown(self) -> None:
        self._stop.set()


class SegmentEvents(StreamHandler):
    """The event stream's consumer for real-time segments."""

    may_idle = True
    may_defer = True

    def __init__(
        self,
        engine: RealtimeSegments,
        imports: ImportMark | None = None,
        max_lag: dt.timedelta = DEFAULT_IMPORT_MAX_LAG,
    ) -> None:
        self.engine = engine
        self.imports = imports
        """The mark of bulk imports being stored (None: never deferred)."""
        self.max_lag = max_lag
        """The longest an unread event waits while imports run (since ingestion received it)."""

    async def deferring(self) -> bool:
        """Bulk imports are being stored (``TrackEventsRequest.bulk_import``, on any ingestion
        replica): no new event is read meanwhile, so that their evaluations do not compete with
        the storing for the cores and the database; the group catches up once they end.

        Nothing is lost or repeated: the entries stay in the stream, unread (none is held pending),
        and are evaluated as usual afterwards, each customer's in order, every transition once. An
        event-driven evaluation is made at the clock's now under the customer's lock, so a
        deferred one is too: its transitions take the instant of the catch-up, never earlier than
        one already recorded. Timers keep firing, and the backfills' forecast sweeps keep walking:
        an evaluation of theirs that reads imported events (committed before the call was
        answered) is made no earlier than they arrived
        (``RealtimeSegments._no_earlier_than_arrivals``)."""
        return self.imports is not None and await self.imports.live()

    def overdue(self, event: common_pb2.Event) -> bool:
        """The oldest unread event has waited ``max_lag`` since ingestion received it (by the
        clock): events are read again although imports go on."""
        if not event.HasField("received_at"):
            return True
        return self.engine.clock.now() - timestamp_to_datetime(event.received_at) >= self.max_lag

    async def idle(self) -> bool:
        """No real-time segment exists: the entries appended so far change no membership, and the
        group moves past them unread (``ConsumerGroup``; no CPU per event meanwhile).

        Nothing is missed: those entries' events were committed before they were appended, hence
        before this read found no segment; a segment marked real-time later is backfilled from
        the start, and its backfill reads every customer's data (these events included) after the
        segment's commit (the argument of ``RealtimeSegments.concerned_parts``)."""
        return not await self.engine.repository.any_realtime()

    async def handle(self, batch: Sequence[Received]) -> None:
        names: dict[str, set[str]] = {}
        received: dict[str, list[Received]] = {}
        for item in batch:
            if item.entry.customer_id:  # system events change no customer's membership
                names.setdefault(item.entry.customer_id, set()).add(item.entry.name)
                received.setdefault(item.entry.customer_id, []).append(item)
        if not names:
            return

        def settle(customers: Collection[str]) -> None:
            # Their later entries need not wait for the rest of the batch: the evaluation reads the
            # customer's state under their lock, whatever order it is repeated in (a retry of this
            # batch after a failure included).
            for customer_id in customers:
                for item in received[customer_id]:
                    item.settled()

        # Customers whose segments are disjoint are evaluated in transactions of their own, side
        # by side, all committed before the batch is acknowledged: an event whose segments are few
        # does not wait for the statement of every other customer's segments (issue 13, 1,000
        # events/s). A customer is in one part only, so their evaluations stay serialised. A batch
        # of one customer is one part whatever the definitions say: it skips the read that would
        # leave it out (one round trip less on the way of a lone event to its transition; a customer
        # no segment is concerned with then costs a transaction that writes nothing instead).
        if len(names) == 1:
            parts = [list(names)]
        else:
            parts = await self.engine.concerned_parts(names, PARTS_PER_BATCH)
        concerned = {customer_id for part in parts for customer_id in part}
        settle([customer_id for customer_id in names if customer_id not in concerned])

        async def evaluate(part: list[str]) -> None:
            await self.engine.customers_events(
                {customer_id: names[customer_id] for customer_id in part},
                {customer_id: [item.event for item in received[customer_id]] for customer_id in part},
            )
            settle(part)

        done = await asyncio.gather(*map(evaluate, parts), return_exceptions=True)
        # Raised once every part has ended: a retry of the batch never runs beside one of its parts.
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
