"""The SQL of real-time segments: stored membership, transitions, and their customer events.

Every write of a customer's membership runs in a transaction that first takes
the customer's lock (``lock_customers``): evaluations of one customer, from the
event consumer, the timer scheduler or a forecast sweep, on any replica, never
interleave. Locks are always taken in one order: the backfills' lock (``lock_backfills``:
shared by evaluations, exclusive for a backfill), customers (ascending), then
segments' ``segments`` rows (``keep_segments``: key share, which a DeleteSegment waits for;
``segment_members`` has no foreign keys, migration 0140), then their
``segment_realtime`` rows (which recording a transition, or any change of
membership through its counting trigger, updates), then timers, then forecast
sweeps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from eventline.common.v1 import common_pb2

from eventline_segmentation.compiler import Compiled, id_array, id_list
from eventline_shared import values
from eventline_shared.errors import FailedPrecondition, quote
from eventline_shared.storage import notifications
from eventline_shared.storage.database import Connection
from eventline_shared.streams import stream
from eventline_shared.streams.reserved import PROFILE_CHANGED
from eventline_shared.streams.reserved import SEGMENT_ENTERED as ENTERED
from eventline_shared.streams.reserved import SEGMENT_EXITED as EXITED


@dataclass(frozen=True)
class Definition:
    """A real-time segment as stored, with its backfill's progress."""

    segment_id: str
    display_name: str
    filter: bytes
    time_zone: str
    backfill_after: str | None
    """Customers whose id sorts after this are not computed yet; None: all are."""
    generation: int
    sweeping: bool = field(default=False, compare=False)
    """Whether a forecast sweep of its backfill is running (``start_sweep``)."""

    def covers(self, customer_id: str) -> bool:
        """Whether the customer's membership is kept incrementally (the backfill reached them).

        Python compares strings by code point, which is the byte order of their UTF-8 (``COLLATE "C"``).
        """
        return self.backfill_after is None or customer_id <= self.backfill_after


@dataclass(frozen=True)
class Change:
    """A membership that changes: the customer enters (or exits) the segment at ``at``."""

    segment: Definition
    customer_id: str
    entered: bool
    at: dt.datetime


@dataclass(frozen=True)
class Sweep:
    """A claimed forecast sweep: the backfill it follows and how far it is."""

    segment_id: str
    generation: int
    swept_at: dt.datetime
    """The backfill's instant: every customer's forecast is computed at it."""
    position: int
    filled: bool
    """Whether its customers are chosen yet (``fill_sweep``)."""


@dataclass(frozen=True)
class Transition:
    cursor: int
    customer_id: str
    entered: bool
    occurred_at: dt.datetime


_DEFINITIONS = """
SELECT s.segment_id, s.display_name, s.filter, s.time_zone, r.backfill_after, r.generation,
    EXISTS (SELECT FROM segment_forecast_sweeps w WHERE w.segment_id = s.segment_id) AS sweeping
FROM segments s JOIN segment_realtime r USING (segment_id)
"""

# A backfill ({members}: the compiler's ids query; {segment}, {at}: its last two parameters). The
# new members in key order (each index insertion lands next to the previous one) and without ON
# CONFLICT (a speculative insertion per row): no other transaction writes members while a backfill
# runs (``lock_backfills``), so those not stored yet are exactly those the anti-join leaves. At 100k
# customers, 18,000 members: 270-330 ms of PostgreSQL CPU with ON CONFLICT, 200-230 without it sorted.
_BACKFILL = """
WITH found AS MATERIALIZED ({members}),
gone AS (
    DELETE FROM segment_members m WHERE m.segment_id = {segment}
      AND NOT EXISTS (SELECT FROM found f WHERE f.customer_id = m.customer_id)
),
added AS (
    INSERT INTO segment_members (segment_id, customer_id, entered_at)
    SELECT {segment}, f.customer_id, {at} FROM found f
    WHERE NOT EXISTS (SELECT FROM segment_members m WHERE m.segment_id = {segment} AND m.customer_id = f.customer_id)
    ORDER BY f.customer_id
),
timers AS (
    DELETE FROM segment_timers WHERE segment_id = {segment}
)
UPDATE segment_realtime SET members = (SELECT count(*) FROM found), backfill_after = NULL
WHERE segment_id = {segment}
"""

# The segments' cursors taken and their sizes moved by the members entered less those exited, once
# per segment; the members' counting trigger (once per member: a statement of 1,000 exits updated
# the segment's row 1,000 times, each a new version of one hot row) is off for the rest of the
# transaction (``eventline.backfilling``, as a backfill sets it), whose only member writes are
# ``_RECORD``'s that follow. The segments' rows are locked first, in ascending order (the order
# every locker uses), before the update locks them in whatever order its rows come: the locking
# subquery is uncorrelated, so it runs once, as the plan's one-time filter, before any row is
# scanned (an update then finds a row changed since the statement began, locked by this
# transaction: it updates the latest version, as ``UPDATE ... SET n = n + 1`` always does). Before
# that lock had a round trip of its own.
_TAKE_CURSORS = """
UPDATE segment_realtime r SET last_cursor = r.last_cursor + d.n, members = r.members + d.delta
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(segment_id, n, delta),
    (SELECT set_config('eventline.backfilling', 'on', true)) AS counting_off
WHERE r.segment_id = d.segment_id
  AND (SELECT count(*) FROM (
      SELECT FROM segment_realtime WHERE segment_id = ANY($1::text[])
      ORDER BY segment_id COLLATE "C" FOR NO KEY UPDATE
  ) AS locked) >= 0
RETURNING r.segment_id, r.last_cursor
"""

# Members entered and exited, the transitions' log, and the transitions' customer events, in one
# statement (one round trip in the consumer's path from event to ``segment_entered``). $1-$5: the
# changes (a (segment, customer) at most once; the members' counting trigger fires at the end of
# the statement). $6-$12: their customer events, one array each, in order, stored as ingestion
# stores events: with their stats, and one outbox row per partition stream; $13 received_at. Then
# a notification on $14 (the outbox channel), so that the relays publish the rows as soon as this
# commits, not at their next poll. Every data-modifying part runs to completion, read or not.
_RECORD = """
WITH changes AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bool[], $5::timestamptz[])
        AS c(segment_id, cursor, customer_id, entered, occurred_at)
),
entered AS (
    INSERT INTO segment_members (segment_id, customer_id, entered_at)
    SELECT segment_id, customer_id, occurred_at FROM changes WHERE entered
),
exited AS (
    DELETE FROM segment_members m USING changes c
    WHERE NOT c.entered AND m.segment_id = c.segment_id AND m.customer_id = c.customer_id
),
logged AS (
    INSERT INTO segment_transitions (segment_id, cursor, customer_id, entered, occurred_at)
    SELECT segment_id, cursor, customer_id, entered, occurred_at FROM changes
),
input AS (
    SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::bytea[])
        WITH ORDINALITY AS i(customer_id, event_id, name, occurred_at, context, stream, entry, seq)
),
stored AS (
    INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at, context)
    SELECT customer_id, event_id, name, occurred_at, $13, context::jsonb FROM input ORDER BY seq
    ON CONFLICT DO NOTHING
    RETURNING customer_id, event_id, name, occurred_at
),
stats AS (
    INSERT INTO customer_event_stats AS s (customer_id, name, first_at, last_at, count)
    SELECT customer_id, name, min(occurred_at), max(occurred_at), count(*) FROM stored
    GROUP BY customer_id, name ORDER BY customer_id, name
    ON CONFLICT (customer_id, name) DO UPDATE SET
        first_at = least(s.first_at, excluded.first_at),
        last_at = greatest(s.last_at, excluded.last_at),
        count = s.count + excluded.count
),
outbox AS (
    INSERT INTO event_outbox (stream, customer_ids, entries)
    SELECT i.stream, array_agg(i.customer_id ORDER BY i.seq), string_agg(i.entry, ''::bytea ORDER BY i.seq)
    FROM stored JOIN input i USING (customer_id, event_id) GROUP BY i.stream ORDER BY i.stream
)
SELECT pg_notify($14, '')
"""

# The ``segments`` rows of the ids {ids} that still exist, kept from being deleted (``keep_segments``):
# FOR KEY SHARE, in the order every locker uses.
_KEEP_SEGMENTS = 'SELECT segment_id FROM segments WHERE segment_id = ANY({ids}::text[]) ORDER BY segment_id COLLATE "C" FOR KEY SHARE'

# The ``segments`` rows of $3 that still exist, locked as ``keep_segments`` does (kind 0), the
# (segment, customer) pairs of $1/$2 stored as members (kind 1), and their timers (kind 2, with
# due_at), in one round trip.
_KEEP_AND_READ_MEMBERS = f"""
WITH kept AS ({_KEEP_SEGMENTS.format(ids="$3")}),
keys AS (SELECT * FROM unnest({id_array("$1::text")}, {id_array("$2::text")}) AS k(segment_id, customer_id))
SELECT 0 AS kind, segment_id, NULL::text AS customer_id, NULL::timestamptz AS due_at FROM kept
UNION ALL
SELECT 1, m.segment_id, m.customer_id, NULL FROM segment_members m JOIN keys USING (segment_id, customer_id)
UNION ALL
SELECT 2, t.segment_id, t.customer_id, t.due_at FROM segment_timers t JOIN keys USING (segment_id, customer_id)
UNION ALL
SELECT 3, set_config('plan_cache_mode', 'force_generic_plan', true), NULL, NULL
"""


@dataclass(frozen=True)
class Stored:
    """What ``keep_segments_reading_members`` found for a set of (segment_id, customer_id) keys."""

    kept: set[str]
    """The keys' segments that still exist."""
    members: set[tuple[str, str]]
    """The keys stored as members."""
    timers: dict[tuple[str, str], dt.datetime]
    """The keys' timers, by key: when each is due."""


def _definition(r: asyncpg.Record) -> Definition:
    return Definition(
        r["segment_id"],
        r["display_name"],
        bytes(r["filter"]),
        r["time_zone"],
        r["backfill_after"],
        r["generation"],
        r["sweeping"],
    )


def _event_id(segment_id: str, cursor: int) -> str:
    """The transition's event id: the same for the same transition, unique across segments."""
    return f"segment.{hashlib.sha256(segment_id.encode()).hexdigest()[:24]}.{cursor}"


class MembershipRepository:
    def __init__(self, pool: asyncpg.Pool, layout: stream.StreamLayout) -> None:
        self.pool = pool
        self.layout = layout
        """Which partition stream a transition's event is published to (ingestion's outbox)."""

    # Definitions --------------------------------------------------------------------

    async def definitions(self, connection: Connection | asyncpg.Pool) -> list[Definition]:
        return [_definition(r) for r in await connection.fetch(_DEFINITIONS)]

    async def definition(self, connection: Connection | asyncpg.Pool, segment_id: str) -> Definition:
        row = await connection.fetchrow(_DEFINITIONS + " WHERE segment_id = $1", segment_id)
        if row is None:
            raise FailedPrecondition(f"segment {quote(segment_id)} is not a real-time segment")
        return _definition(row)

    async def configure(self, connection: Connection, segment_id: str, realtime: bool, restart: bool) -> None:
        """Start keeping a segment's membership (backfill from the start), restart it, or stop."""
        if not realtime:
            # Timers and members go silently; the state row last (the counting trigger updates it).
            await connection.execute("DELETE FROM segment_timers WHERE segment_id = $1", segment_id)
            await connection.execute("DELETE FROM segment_forecast_sweeps WHERE segment_id = $1", segment_id)
            await connection.execute("DELETE FROM segment_sweep_seen WHERE segment_id = $1", segment_id)
            await connection.execute("DELETE FROM segment_members WHERE segment_id = $1", segment_id)
            await connection.execute("DELETE FROM segment_transitions WHERE segment_id = $1", segment_id)
            await connection.execute("DELETE FROM segment_realtime WHERE segment_id = $1", segment_id)
            return
        await connection.execute(
            """
            INSERT INTO segment_realtime (segment_id) VALUES ($1)
            ON CONFLICT (segment_id) DO UPDATE SET
                backfill_after = CASE WHEN $2 THEN '' ELSE segment_realtime.backfill_after END,
                generation = segment_realtime.generation + CASE WHEN $2 THEN 1 ELSE 0 END
            """,
            segment_id,
            restart,
        )

    # One customer --------------------------------------------------------------------

    async def lock_customers(self, connection: Connection, customer_ids: Sequence[str]) -> None:
        """Serialise every membership write of ``customer_ids`` until the transaction ends: their
        locks in ascending order (the order every locker uses), after the backfills' lock in shared
        mode (``lock_backfills``): an evaluation runs while no backfill does. The one way to lock
        customers here, so that no evaluation can skip the backfills' lock."""
        await connection.execute(
            f"""
            WITH backfills AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(hashtextextended('segment-backfill', 0)))
            SELECT pg_advisory_xact_lock(hashtextextended('segment-member:' || id, 0))
            FROM backfills, unnest({id_array("$1::text")}) AS id ORDER BY id COLLATE "C"
            """,
            id_list(customer_ids),
        )

    async def lock_backfills(self, connection: Connection) -> None:
        """Wait for the evaluations in progress, and keep new ones waiting, until the transaction
        ends (``lock_customers`` takes this lock in shared mode).

        A backfill computes every customer in one statement. Until it commits the consumer leaves
        the segment alone for every customer (``Definition.covers``); an evaluation that read the
        definitions before the backfill began (the old filter after a change, or the segment not
        covering anyone yet) must commit before the backfill's statement reads its data (its
        events included), and one that comes later must read the definitions after the backfill
        committed. One lock for all segments: an evaluation does not know its segments before it
        reads their definitions."""
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('segment-backfill', 0))")

    async def keep_segments_reading_members(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> Stored:
        """``keep_segments`` of the keys' segments, and the keys' stored memberships and timers, in
        one round trip; then the rest of the transaction plans its statements once per connection
        (``SET LOCAL plan_cache_mode = force_generic_plan``, here to save the evaluation a round
        trip: the text of its statement depends only on which segments it evaluates, and planning
        one of 10 segments takes longer than running it for a customer).

        The members and timers are read at the statement's start, before a wait for a segment's
        lock; only a DeleteSegment makes that wait, and its segment is then not kept (its keys are
        left out). Every other writer of a key's member or timer row holds the customer's lock (or,
        for a backfill, excludes evaluations), so they stay as read until the transaction ends."""
        rows = await connection.fetch(
            _KEEP_AND_READ_MEMBERS,
            id_list([k[0] for k in keys]),
            id_list([k[1] for k in keys]),
            sorted({k[0] for k in keys}),
        )
        return Stored(
            {r[1] for r in rows if r[0] == 0},
            {(r[1], r[2]) for r in rows if r[0] == 1},
            {(r[1], r[2]): r[3] for r in rows if r[0] == 2},
        )

    async def keep_segments(self, connection: Connection, segment_ids: Collection[str]) -> set[str]:
        """Keep the ``segments`` rows of ``segment_ids`` from being deleted until the transaction
        ends; returns those that still exist.

        Writing transitions or timers checks their foreign key on ``segments`` with this same lock;
        members have no foreign key (migration 0140): this lock is what keeps a segment's members
        from outliving it (a DeleteSegment waits for it, then its trigger deletes the members;
        one that comes after finds no segment and writes none). Taken first, before the rows of
        ``segment_realtime`` and ``segment_timers``, it keeps the order of DeleteSegment, which
        locks ``segments`` before its cascade reaches those (taken after them, the two wait for
        each other).
        """
        rows = await connection.fetch(_KEEP_SEGMENTS.format(ids="$1"), sorted(segment_ids))
        return {r[0] for r in rows}

    async def customer_exists(self, connection: Connection, customer_id: str) -> bool:
        return bool(
            await connection.fetchval("SELECT true FROM customers WHERE customer_id = $1", customer_id)
        )

    async def record(
        self, connection: Connection, changes: Sequence[Change], received_at: dt.datetime
    ) -> None:
        """Change memberships, log the transitions and store their customer events, in a handful of
        statements whatever their number. Each segment's transitions take consecutive cursors in
        the order of their instants; one customer's events go to the outbox in that order too."""
        if not changes:
            return
        ordered = sorted(changes, key=lambda c: (c.segment.segment_id.encode(), c.at, c.customer_id.encode()))
        counts: dict[str, int] = {}
        deltas: dict[str, int] = {}
        for change in ordered:
            segment_id = change.segment.segment_id
            counts[segment_id] = counts.get(segment_id, 0) + 1
            deltas[segment_id] = deltas.get(segment_id, 0) + (1 if change.entered else -1)
        # The segments' rows locked in ascending order, then updated (``_TAKE_CURSORS``).
        rows = await connection.fetch(
            _TAKE_CURSORS, list(counts), list(counts.values()), [deltas[s] for s in counts]
        )
        last = {r[0]: r[1] for r in rows}
        # A segment deleted meanwhile has no row left: its changes go with it.
        ordered = [c for c in ordered if c.segment.segment_id in last]
        cursors: list[int] = []
        for change in ordered:
            segment_id = change.segment.segment_id
            cursors.append(last[segment_id] - counts[segment_id] + 1)
            counts[segment_id] -= 1
        # The customer events in time order (the outbox keeps each stream's entries in this order).
        events = sorted(zip(ordered, cursors, strict=True), key=lambda e: (e[0].at, e[0].segment.segment_id))
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        # Every transition of a segment has the same context: built and encoded once per segment.
        contexts: dict[str, tuple[dict[str, common_pb2.Value], str]] = {}
        received = values.datetime_to_timestamp(received_at)
        for change, cursor in events:
            name = ENTERED if change.entered else EXITED
            found = contexts.get(change.segment.segment_id)
            if found is None:
                context = {
                    "segment_id": common_pb2.Value(string_value=change.segment.segment_id),
                    "segment_name": common_pb2.Value(string_value=change.segment.display_name),
                }
                found = contexts[change.segment.segment_id] = (
                    context,
                    values.encode_values(context, "context").json,
                )
            context, context_json = found
            event_id = _event_id(change.segment.segment_id, cursor)
            event = common_pb2.Event(
                event_id=event_id,
                kind=common_pb2.EVENT_KIND_CUSTOMER,
                customer_id=change.customer_id,
                name=name,
                occurred_at=values.datetime_to_timestamp(change.at),
                received_at=received,
                context=context,
            )
            entry = stream.pack_entry(change.customer_id, event_id, name, event.SerializeToString(), "")
            for column, value in zip(
                columns,
                (
                    change.customer_id,
                    event_id,
                    name,
                    change.at,
                    context_json,
                    self.layout.key_for(change.customer_id),
                    entry,
                ),
                strict=True,
            ):
                column.append(value)
        await connection.execute(
            _RECORD,
            [c.segment.segment_id for c in ordered],
            cursors,
            [c.customer_id for c in ordered],
            [c.entered for c in ordered],
            [c.at for c in ordered],
            *columns,
            received_at,
            notifications.OUTBOX,
        )

    # Backfill ------------------------------------------------------------------------

    async def wait_for_profile_writers(self, pool: asyncpg.Pool) -> None:
        """Wait until every transaction writing ``customers`` now has ended (a moment's lock of the
        table in share mode, in a transaction of its own: writers that come meanwhile wait for it).

        Segments with profile conditions are evaluated on profile notices only (besides the events
        they name), and UpsertCustomer writes a notice only when its statement finds a real-time
        segment. Called after the segment was marked real-time and before its backfill reads any
        profile: an upsert that took its table lock before this call has committed (the backfill
        reads its profile); one that takes it later read ``segment_realtime`` after the segment
        was committed (a statement takes its snapshot after its table locks), so it writes a notice.
        """
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("LOCK TABLE customers IN SHARE MODE")

    async def lock_progress(self, connection: Connection, segment_id: str) -> tuple[str | None, int] | None:
        row = await connection.fetchrow(
            "SELECT backfill_after, generation FROM segment_realtime WHERE segment_id = $1 FOR UPDATE",
            segment_id,
        )
        return None if row is None else (row[0], row[1])

    async def backfill(
        self, connection: Connection, segment_id: str, members: Compiled, at: dt.datetime
    ) -> None:
        """Make the segment's members exactly those of ``members`` (the compiler's ids query),
        silently (no transitions; a member already stored keeps its ``entered_at``), set its size
        once, drop its timers and mark the backfill done, in one statement (under
        ``eventline.backfilling``, which keeps the members' counting trigger from updating the
        segment's row once per member: set for the rest of the transaction, which writes no other
        member).

        Planned for its own parameters (``force_custom_plan``): a generic plan cannot see how
        selective the filter's periods and names are. The transaction commits without waiting for
        its WAL to reach the disk (``synchronous_commit = off``; the flush of its hundreds of kB
        took 1-30 ms here): it sends nothing outside the database, and a crash can lose it only
        with every transaction after it (the WAL is flushed in order), which leaves the segment
        backfilling, to be backfilled again."""
        await connection.execute(
            "SELECT set_config('eventline.backfilling', 'on', true), "
            "set_config('plan_cache_mode', 'force_custom_plan', true), "
            "set_config('synchronous_commit', 'off', true)"
        )
        n = len(members.params)
        await connection.execute(
            _BACKFILL.format(members=members.sql, segment=f"${n + 1}::text", at=f"${n + 2}::timestamptz"),
            *members.params,
            segment_id,
            at,
        )

    # Forecast sweeps -----------------------------------------------------------------

    async def start_sweep(
        self, connection: Connection, segment_id: str, generation: int, at: dt.datetime | None
    ) -> None:
        """Leave the forecasts of the backfill of ``generation`` at ``at`` to a sweep (None: the
        segment never changes with time, no sweep), replacing any earlier sweep of the segment."""
        await connection.execute(
            """
            WITH seen AS (DELETE FROM segment_sweep_seen WHERE segment_id = $1),
            ended AS (DELETE FROM segment_forecast_sweeps WHERE segment_id = $1 AND $3::timestamptz IS NULL)
            INSERT INTO segment_forecast_sweeps (segment_id, generation, swept_at)
            SELECT $1, $2, $3 WHERE $3::timestamptz IS NOT NULL
            ON CONFLICT (segment_id) DO UPDATE SET generation = excluded.generation,
                swept_at = excluded.swept_at, customers = NULL, position = 0, claimed_until = NULL
            """,
            segment_id,
            generation,
            at,
        )

    async def claim_sweep(self, pool: asyncpg.Pool, lease: dt.timedelta) -> Sweep | None:
        """Lease the oldest sweep no live claim holds (SKIP LOCKED: replicas claiming at once get
        different ones), or None."""
        row = await pool.fetchrow(
            """
            UPDATE segment_forecast_sweeps w SET claimed_until = clock_timestamp() + $1::interval
            FROM (SELECT segment_id FROM segment_forecast_sweeps
                  WHERE claimed_until IS NULL OR claimed_until < clock_timestamp()
                  ORDER BY swept_at, segment_id LIMIT 1 FOR UPDATE SKIP LOCKED) d
            WHERE w.segment_id = d.segment_id
            RETURNING w.segment_id, w.generation, w.swept_at, w.position, w.customers IS NOT NULL
            """,
            lease,
        )
        return None if row is None else Sweep(row[0], row[1], row[2], row[3], row[4])

    async def fill_sweep(
        self, connection: Connection | asyncpg.Pool, sweep: Sweep, names: Sequence[str], since: dt.datetime
    ) -> None:
        """Give a sweep its customers: those with an event of ``names`` at or after ``since`` (the
        others' membership time cannot move), whose latest such event is oldest first (a threshold
        on days since it, or a window sliding past it, comes due first for them)."""
        await connection.execute(
            """
            UPDATE segment_forecast_sweeps SET customers = (
                SELECT coalesce(array_agg(customer_id ORDER BY last_at, customer_id COLLATE "C"), '{}')
                FROM (SELECT customer_id, max(last_at) AS last_at FROM customer_event_stats
                      WHERE name = ANY($3::text[]) AND last_at >= $4 GROUP BY customer_id) m)
            WHERE segment_id = $1 AND generation = $2 AND customers IS NULL
            """,
            sweep.segment_id,
            sweep.generation,
            list(names),
            since,
        )

    async def sweep_customers(self, connection: Connection, sweep: Sweep, limit: int) -> list[str]:
        """The next ``limit`` customers of the sweep (fewer at its end)."""
        found: list[str] | None = await connection.fetchval(
            "SELECT customers[$3 + 1 : $3 + $4] FROM segment_forecast_sweeps WHERE segment_id = $1 AND generation = $2",
            sweep.segment_id,
            sweep.generation,
            sweep.position,
            limit,
        )
        return list(found or [])

    async def seen_by_sweep(
        self, connection: Connection, sweep: Sweep, customer_ids: Sequence[str]
    ) -> set[str]:
        """Those of ``customer_ids`` evaluated since the sweep began (``mark_seen``)."""
        rows = await connection.fetch(
            "SELECT customer_id FROM segment_sweep_seen "
            "WHERE segment_id = $1 AND generation = $2 AND customer_id = ANY($3::text[])",
            sweep.segment_id,
            sweep.generation,
            list(customer_ids),
        )
        return {r[0] for r in rows}

    async def arrivals_since(
        self,
        connection: Connection,
        customer_ids: Sequence[str],
        names: Sequence[str],
        since: dt.datetime,
        profiles: bool,
    ) -> dict[tuple[str, str], dt.datetime]:
        """When the latest event of each of ``names`` stored after ``since`` (by its
        ``received_at``) arrived, by (customer, name), for those of ``customer_ids`` that have one
        (one look at each customer's events of each name, ``customer_events_by_customer_name``);
        with ``profiles``, also when their profile changed after ``since`` (``updated_at``, by
        ingestion's clock), as (customer, ``PROFILE_CHANGED``)."""
        profile = (
            " UNION ALL SELECT customer_id, $4, updated_at FROM customers "
            "WHERE customer_id = ANY($1::text[]) AND updated_at > $3"
        )
        rows = await connection.fetch(
            "SELECT customer_id, name, max(received_at) FROM customer_events "
            "WHERE customer_id = ANY($1::text[]) AND name = ANY($2::text[]) AND received_at > $3 "
            "GROUP BY customer_id, name" + (profile if profiles else ""),
            list(customer_ids),
            list(names),
            since,
            *([PROFILE_CHANGED] if profiles else []),
        )
        return {(r[0], r[1]): r[2] for r in rows}

    async def mark_seen(self, connection: Connection, seen: Sequence[tuple[str, int, str]]) -> None:
        """Record (segment, generation, customer) evaluations made while the segment's sweep runs."""
        if not seen:
            return
        ordered = sorted(set(seen))
        await connection.execute(
            "INSERT INTO segment_sweep_seen (segment_id, generation, customer_id) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) ON CONFLICT DO NOTHING",
            [s[0] for s in ordered],
            [s[1] for s in ordered],
            [s[2] for s in ordered],
        )

    async def release_sweep(self, pool: asyncpg.Pool, sweep: Sweep) -> None:
        """End the lease of a sweep claimed at ``sweep`` (a page that failed), if it is still there."""
        await pool.execute(
            "UPDATE segment_forecast_sweeps SET claimed_until = NULL "
            "WHERE segment_id = $1 AND generation = $2 AND position = $3",
            sweep.segment_id,
            sweep.generation,
            sweep.position,
        )

    async def advance_sweep(self, connection: Connection, sweep: Sweep, count: int, done: bool) -> bool:
        """Move the sweep past ``count`` customers and release it (remove it when ``done``), if it is
        still where it was claimed; False when another replica or a new backfill moved it."""
        if done:
            status = await connection.execute(
                "DELETE FROM segment_forecast_sweeps WHERE segment_id = $1 AND generation = $2 AND position = $3",
                sweep.segment_id,
                sweep.generation,
                sweep.position,
            )
            if status.endswith(" 0"):
                return False
            await connection.execute(
                "DELETE FROM segment_sweep_seen WHERE segment_id = $1 AND generation = $2",
                sweep.segment_id,
                sweep.generation,
            )
            return True
        status = await connection.execute(
            "UPDATE segment_forecast_sweeps SET position = position + $4, claimed_until = NULL "
            "WHERE segment_id = $1 AND generation = $2 AND position = $3",
            sweep.segment_id,
            sweep.generation,
            sweep.position,
            count,
        )
        return not status.endswith(" 0")

    async def backfilling(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT segment_id FROM segment_realtime WHERE backfill_after IS NOT NULL ORDER BY segment_id"
        )
        return [r[0] for r in rows]

    # Reads ---------------------------------------------------------------------------

    async def size(self, segment_id: str) -> int | None:
        """The stored size, or None when the segment is not real-time or still backfilling."""
        row = await self.pool.fetchrow(
            "SELECT members, backfill_after IS NULL AS ready FROM segment_realtime WHERE segment_id = $1",
            segment_id,
        )
        return int(row["members"]) if row is not None and row["ready"] else None

    async def members(self, segment_id: str, after: str, limit: int) -> list[tuple[str, dt.datetime]]:
        rows = await self.pool.fetch(
            """
            SELECT customer_id, entered_at FROM segment_members
            WHERE segment_id = $1 AND customer_id COLLATE "C" > $2
            ORDER BY customer_id COLLATE "C" LIMIT $3
            """,
            segment_id,
            after,
            limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def transitions(self, segment_id: str, after: int, limit: int) -> list[Transition]:
        """The transitions after cursor ``after``; FAILED_PRECONDITION when some of them were pruned
        (read in one statement, so a prune cannot slip between the check and the read)."""
        rows = await self.pool.fetch(
            """
            SELECT r.pruned_through, t.cursor, t.customer_id, t.entered, t.occurred_at
            FROM segment_realtime r LEFT JOIN LATERAL (
                SELECT cursor, customer_id, entered, occurred_at FROM segment_transitions
                WHERE segment_id = r.segment_id AND cursor > $2 ORDER BY cursor LIMIT $3
            ) t ON true
            WHERE r.segment_id = $1
            """,
            segment_id,
            after,
            limit,
        )
        if rows and after < rows[0]["pruned_through"]:
            raise FailedPrecondition(
                f"the transitions of segment {quote(segment_id)} up to cursor {rows[0]['pruned_through']} "
                f"were pruned (older than the retention), so some after cursor {after} are gone: "
                "read the members with ListSegmentMembers, then watch from a recent cursor"
            )
        return [Transition(r[1], r[2], r[3], r[4]) for r in rows if r[1] is not None]

    # Pruning -------------------------------------------------------------------------

    async def prune(self, connection: Connection, segment_id: str, before: dt.datetime, limit: int) -> int:
        """Delete the oldest transitions of a segment, at most ``limit``, up to the first one that
        happened at or after ``before`` (a prefix of cursors, so a watcher's cursor tells whether it
        missed any); returns how many. One pruner at a time per segment; none waits for another."""
        if not await connection.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('segment-prune:' || $1, 0))", segment_id
        ):
            return 0
        through = await connection.fetchval(
            """
            SELECT coalesce(
                (SELECT cursor - 1 FROM segment_transitions
                 WHERE segment_id = $1 AND occurred_at >= $2 ORDER BY cursor LIMIT 1),
                (SELECT last_cursor FROM segment_realtime WHERE segment_id = $1))
            """,
            segment_id,
            before,
        )
        if through is None:
            return 0
        top = await connection.fetchval(
            """
            SELECT max(cursor) FROM (
                SELECT cursor FROM segment_transitions WHERE segment_id = $1 AND cursor <= $2
                ORDER BY cursor LIMIT $3) AS oldest
            """,
            segment_id,
            through,
            limit,
        )
        if top is None:
            return 0
        await connection.execute(
            "UPDATE segment_realtime SET pruned_through = greatest(pruned_through, $2) WHERE segment_id = $1",
            segment_id,
            top,
        )
        status = await connection.execute(
            "DELETE FROM segment_transitions WHERE segment_id = $1 AND cursor <= $2", segment_id, top
        )
        return int(status.split()[-1])

    async def any_realtime(self) -> bool:
        """Whether a real-time segment exists (one probe of a small table)."""
        return bool(await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM segment_realtime)"))

    async def realtime_segment_ids(self) -> list[str]:
        rows = await self.pool.fetch("SELECT segment_id FROM segment_realtime ORDER BY segment_id")
        return [r[0] for r in rows]
