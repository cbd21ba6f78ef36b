"""The SQL of real-time segments: stored membership, transitions, and their customer events.

Every write of a customer's membership runs in a transaction that first takes
the customer's lock (``lock_customer``): evaluations of one customer, from the
event consumer, the timer scheduler or a backfill page, on any replica, never
interleave. Locks are always taken in one order: customers (ascending), then a
segment's ``segment_realtime`` row (which recording a transition, or any
change of membership through its counting trigger, updates).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from eventline.common.v1 import common_pb2

from eventline_shared import values
from eventline_shared.errors import FailedPrecondition, quote
from eventline_shared.storage import notifications
from eventline_shared.storage.database import Connection
from eventline_shared.streams import stream
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

    def covers(self, customer_id: str) -> bool:
        """Whether the customer's membership is kept incrementally (the backfill reached them).

        Python compares strings by code point, which is the byte order of their UTF-8 (``COLLATE "C"``).
        """
        return self.backfill_after is None or customer_id <= self.backfill_after


@dataclass(frozen=True)
class Transition:
    cursor: int
    customer_id: str
    entered: bool
    occurred_at: dt.datetime


_DEFINITIONS = """
SELECT s.segment_id, s.display_name, s.filter, s.time_zone, r.backfill_after, r.generation
FROM segments s JOIN segment_realtime r USING (segment_id)
"""

_STORE_EVENT = """
WITH stored AS (
    INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at, context)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb)
    ON CONFLICT DO NOTHING
    RETURNING customer_id, name, occurred_at
),
stats AS (
    INSERT INTO customer_event_stats AS s (customer_id, name, first_at, last_at, count)
    SELECT customer_id, name, occurred_at, occurred_at, 1 FROM stored
    ON CONFLICT (customer_id, name) DO UPDATE SET
        first_at = least(s.first_at, excluded.first_at),
        last_at = greatest(s.last_at, excluded.last_at),
        count = s.count + 1
)
INSERT INTO event_outbox (stream, customer_ids, entries)
SELECT $7, ARRAY[customer_id], $8 FROM stored
"""


def _definition(r: asyncpg.Record) -> Definition:
    return Definition(
        r["segment_id"],
        r["display_name"],
        bytes(r["filter"]),
        r["time_zone"],
        r["backfill_after"],
        r["generation"],
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

    async def lock_customer(self, connection: Connection, customer_id: str) -> None:
        """Serialise every membership write of ``customer_id`` until the transaction ends."""
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('segment-member:' || $1, 0))", customer_id
        )

    async def lock_customers(self, connection: Connection, customer_ids: Sequence[str]) -> None:
        """``lock_customer`` for many, in ascending order (the order every locker uses)."""
        await connection.execute(
            """
            SELECT pg_advisory_xact_lock(hashtextextended('segment-member:' || id, 0))
            FROM unnest($1::text[]) AS id ORDER BY id COLLATE "C"
            """,
            list(customer_ids),
        )

    async def memberships(
        self, connection: Connection, customer_id: str, segment_ids: Sequence[str]
    ) -> set[str]:
        rows = await connection.fetch(
            "SELECT segment_id FROM segment_members WHERE customer_id = $1 AND segment_id = ANY($2::text[])",
            customer_id,
            list(segment_ids),
        )
        return {r[0] for r in rows}

    async def customer_exists(self, connection: Connection, customer_id: str) -> bool:
        return bool(
            await connection.fetchval("SELECT true FROM customers WHERE customer_id = $1", customer_id)
        )

    async def transition(
        self,
        connection: Connection,
        segment: Definition,
        customer_id: str,
        entered: bool,
        at: dt.datetime,
        received_at: dt.datetime,
    ) -> int:
        """Change one membership, log the transition and store its customer event; returns its cursor."""
        if entered:
            await connection.execute(
                "INSERT INTO segment_members (segment_id, customer_id, entered_at) VALUES ($1, $2, $3)",
                segment.segment_id,
                customer_id,
                at,
            )
        else:
            await connection.execute(
                "DELETE FROM segment_members WHERE segment_id = $1 AND customer_id = $2",
                segment.segment_id,
                customer_id,
            )
        cursor: int = await connection.fetchval(
            "UPDATE segment_realtime SET last_cursor = last_cursor + 1 WHERE segment_id = $1 RETURNING last_cursor",
            segment.segment_id,
        )
        await connection.execute(
            "INSERT INTO segment_transitions (segment_id, cursor, customer_id, entered, occurred_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            segment.segment_id,
            cursor,
            customer_id,
            entered,
            at,
        )
        name = ENTERED if entered else EXITED
        context = {
            "segment_id": common_pb2.Value(string_value=segment.segment_id),
            "segment_name": common_pb2.Value(string_value=segment.display_name),
        }
        event_id = _event_id(segment.segment_id, cursor)
        event = common_pb2.Event(
            event_id=event_id,
            kind=common_pb2.EVENT_KIND_CUSTOMER,
            customer_id=customer_id,
            name=name,
            occurred_at=values.datetime_to_timestamp(at),
            received_at=values.datetime_to_timestamp(received_at),
            context=context,
        )
        entry = stream.pack_entry(customer_id, event_id, name, event.SerializeToString(), "")
        await connection.execute(
            _STORE_EVENT,
            customer_id,
            event_id,
            name,
            at,
            received_at,
            values.encode_values(context, "context").json,
            self.layout.key_for(customer_id),
            entry,
        )
        # The relays publish the row as soon as this commits, not at their next poll.
        await notifications.notify(connection, notifications.OUTBOX)
        return cursor

    # Backfill ------------------------------------------------------------------------

    async def plan_each_page(self, connection: Connection) -> None:
        """Plan the page query for its own parameters until the transaction ends: a statement
        prepared once is otherwise given a generic plan after five runs, which cannot see that the
        page's ``= ANY(ids)`` is selective and scans the whole period (140 ms instead of 7 ms a page
        on bench/segments.py's --quick data)."""
        await connection.execute("SET LOCAL plan_cache_mode = force_custom_plan")

    async def next_customers(self, connection: Connection, after: str, limit: int) -> list[str]:
        rows = await connection.fetch(
            'SELECT customer_id FROM customers WHERE customer_id COLLATE "C" > $1 '
            'ORDER BY customer_id COLLATE "C" LIMIT $2',
            after,
            limit,
        )
        return [r[0] for r in rows]

    async def lock_progress(self, connection: Connection, segment_id: str) -> tuple[str | None, int] | None:
        row = await connection.fetchrow(
            "SELECT backfill_after, generation FROM segment_realtime WHERE segment_id = $1 FOR UPDATE",
            segment_id,
        )
        return None if row is None else (row[0], row[1])

    async def replace_members(
        self,
        connection: Connection,
        segment_id: str,
        first: str,
        last: str,
        members: Sequence[str],
        at: dt.datetime,
    ) -> None:
        """Make the members with ids in [first, last] exactly ``members``, silently."""
        await connection.execute(
            """
            DELETE FROM segment_members
            WHERE segment_id = $1 AND customer_id COLLATE "C" BETWEEN $2 AND $3
              AND customer_id <> ALL($4::text[])
            """,
            segment_id,
            first,
            last,
            list(members),
        )
        await connection.execute(
            """
            INSERT INTO segment_members (segment_id, customer_id, entered_at)
            SELECT $1, id, $3 FROM unnest($2::text[]) AS id ORDER BY id
            ON CONFLICT DO NOTHING
            """,
            segment_id,
            list(members),
            at,
        )

    async def clear_timers(self, connection: Connection, segment_id: str, first: str, last: str) -> None:
        await connection.execute(
            'DELETE FROM segment_timers WHERE segment_id = $1 AND customer_id COLLATE "C" BETWEEN $2 AND $3',
            segment_id,
            first,
            last,
        )

    async def with_events(
        self, connection: Connection, customer_ids: Sequence[str], names: Sequence[str], since: dt.datetime
    ) -> list[str]:
        """The customers among ``customer_ids`` with an event of one of ``names`` at or after ``since``."""
        rows = await connection.fetch(
            "SELECT DISTINCT customer_id FROM customer_event_stats "
            "WHERE customer_id = ANY($1::text[]) AND name = ANY($2::text[]) AND last_at >= $3",
            list(customer_ids),
            list(names),
            since,
        )
        return [r[0] for r in rows]

    async def set_progress(self, connection: Connection, segment_id: str, after: str | None) -> None:
        await connection.execute(
            "UPDATE segment_realtime SET backfill_after = $2 WHERE segment_id = $1", segment_id, after
        )

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

    async def realtime_segment_ids(self) -> list[str]:
        rows = await self.pool.fetch("SELECT segment_id FROM segment_realtime ORDER BY segment_id")
        return [r[0] for r in rows]
