"""All SQL of the ingestion service, with bind parameters only."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import asyncpg
from eventline.common.v1 import common_pb2

from eventline_ingestion.stored_form import StatementColumns, received_at_field, statement_columns
from eventline_ingestion.validation import CustomerChange, NewEvent
from eventline_shared.server.config import DEFAULT_STREAM
from eventline_shared.storage import notifications
from eventline_shared.streams import reserved, stream
from eventline_shared.values import datetime_to_timestamp, decode_values

# One statement stores a whole batch atomically: new customers, customer events
# and their stats rows, system events and one outbox row per partition stream
# for what was new.
# Rows are sorted by key in Python so that concurrent batches lock in the same
# order.
# The customer events' ids and names arrive as one text each, joined by ``_SEPARATOR``
# (which no valid id or name holds), and their contexts by ``_CONTEXT_SEPARATOR``, not as
# arrays: the driver checks and encodes each element of an array in Python, PostgreSQL
# splits a text in C (docs/performance.md).
# Their stream keys ($13) come only with more than one partition stream (an empty array,
# whose rows unnest pads with NULL, otherwise: $15 then).
# Two forms share these parts: _STORE_NEW_EVENTS, for events none of which is stored yet (the
# usual case), and _STORE_EVENTS, which stores what is new among events some of which may be.
_INPUT = """
input_us AS (
    SELECT * FROM ROWS FROM (
        unnest(string_to_array($1::text, ',')), unnest(string_to_array($2::text, ',')),
        unnest(string_to_array($3::text, ',')), unnest($4::bigint[]),
        unnest(string_to_array($5::text, E'\\x1e')::jsonb[])
    ) AS t(customer_id, event_id, name, occurred_us, context)
),
new_customers AS (
    INSERT INTO customers (customer_id, created_at, updated_at)
    SELECT DISTINCT customer_id, $7::timestamptz, $7::timestamptz
    FROM unnest(string_to_array($1::text, ',')) AS t(customer_id)
    ORDER BY 1
    ON CONFLICT (customer_id) DO NOTHING
)"""
_STATS_UPSERT = """
    GROUP BY customer_id, name ORDER BY customer_id, name
    ON CONFLICT (customer_id, name) DO UPDATE SET
        first_at = least(s.first_at, excluded.first_at),
        last_at = greatest(s.last_at, excluded.last_at),
        count = s.count + excluded.count"""

# Plain inserts, for customer events only: no ON CONFLICT arbiter probe and speculative insertion
# per event, no RETURNING, no joins on what was stored (~15 % of PostgreSQL's CPU per batch event;
# docs/performance.md). A key stored before fails it on the primary key: nothing of it is kept,
# and the events go through _STORE_EVENTS. Every event being stored, each partition stream's
# outbox row comes made ($6: the streams, $8: their customers joined, $9: their entries packed,
# in arrival order), not aggregated here from an entry per event. The stats come from the arrays,
# not from the events inserted, and are written first: data-modifying parts run to completion
# after the main statement (the outbox's insert), the last written first (PostgreSQL's
# ExecPostprocessPlan), so the stats rows, which concurrent statements share (a busy customer's),
# are locked last, once the events are in, and held only to the commit.
_STORE_NEW_EVENTS = f"""
WITH stats AS (
    INSERT INTO customer_event_stats AS s (customer_id, name, first_at, last_at, count)
    SELECT customer_id, name, to_timestamp(0) + min(occurred_us) * interval '1 microsecond',
           to_timestamp(0) + max(occurred_us) * interval '1 microsecond', count(*)
    FROM unnest(string_to_array($1::text, ','), string_to_array($3::text, ','), $4::bigint[])
        AS t(customer_id, name, occurred_us){_STATS_UPSERT}
),{_INPUT},
stored AS (
    INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at, context)
    SELECT customer_id, event_id, name, to_timestamp(0) + occurred_us * interval '1 microsecond', $7, context
    FROM input_us
)
INSERT INTO event_outbox (stream, customer_ids, entries)
SELECT stream, string_to_array(customer_ids, ','), entries
FROM unnest($6::text[], $8::text[], $9::bytea[]) AS t(stream, customer_ids, entries)
"""

# ON CONFLICT DO NOTHING makes the events stored before store nothing; the stats and the outbox
# take only what was stored.
_STORE_EVENTS = f"""
WITH{_INPUT},
-- Times arrive in microseconds since the epoch (cheaper to send than timestamps); the
-- product is exact below 2^53 µs (year 2255), and validation admits nothing after tomorrow.
input AS (
    SELECT customer_id, event_id, name, to_timestamp(0) + occurred_us * interval '1 microsecond' AS occurred_at,
           context
    FROM input_us
),
stored AS (
    INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at, context)
    SELECT customer_id, event_id, name, occurred_at, $7, context FROM input
    ON CONFLICT DO NOTHING
    RETURNING customer_id, event_id, name, occurred_at
),
stats AS (
    INSERT INTO customer_event_stats AS s (customer_id, name, first_at, last_at, count)
    SELECT customer_id, name, min(occurred_at), max(occurred_at), count(*)
    FROM stored{_STATS_UPSERT}
),
system_input AS (
    SELECT event_id, name, to_timestamp(0) + occurred_us * interval '1 microsecond' AS occurred_at,
           context, entry, seq
    FROM unnest($8::text[], $9::text[], $10::bigint[], $11::jsonb[], $12::bytea[], $16::int[])
        AS t(event_id, name, occurred_us, context, entry, seq)
),
system_stored AS (
    INSERT INTO system_events (event_id, name, occurred_at, received_at, context)
    SELECT event_id, name, occurred_at, $7, context FROM system_input
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
-- The outbox's columns come from the arrays again, not from input: read once (by stored),
-- input is inlined into stored's SELECT instead of being written to a tuplestore with every
-- entry's bytes (~0.7 µs of PostgreSQL per event; docs/performance.md).
outbox_items AS (
    SELECT i.customer_id, i.entry, coalesce(i.stream, $15::text) AS stream, i.seq
    FROM stored JOIN unnest(string_to_array($1::text, ','), string_to_array($2::text, ','), $6::bytea[],
                            $13::text[], $14::int[])
        AS i(customer_id, event_id, entry, stream, seq) USING (customer_id, event_id)
    UNION ALL
    SELECT '', i.entry, $15::text, i.seq
    FROM system_stored JOIN system_input i USING (event_id)
),
-- One row per partition stream, its entries in the order the events arrived.
outbox AS (
    INSERT INTO event_outbox (stream, customer_ids, entries)
    SELECT stream, array_agg(customer_id ORDER BY seq), string_agg(entry, ''::bytea ORDER BY seq)
    FROM outbox_items GROUP BY stream ORDER BY stream
)
-- The keys not stored (stored before): usually none, so usually no row to send and decode.
(SELECT customer_id, event_id FROM unnest(string_to_array($1::text, ','), string_to_array($2::text, ','))
    AS k(customer_id, event_id)
 EXCEPT ALL SELECT customer_id, event_id FROM stored)
UNION ALL
(SELECT '', event_id FROM unnest($8::text[]) AS k(event_id)
 EXCEPT ALL SELECT '', event_id FROM system_stored)
"""
_SEPARATOR = ","
"""Joins the customer events' ids and names sent to ``_STORE_EVENTS``: ``CUSTOMER_ID``,
``EVENT_ID`` and ``CODE`` (``eventline_shared.values``) admit no comma."""
_CONTEXT_SEPARATOR = "\x1e"
"""Joins their contexts' JSON texts (``values.encode_values``), in which a control character is
always escaped."""

_STORED_CUSTOMER_EVENTS = """
SELECT e.customer_id, e.event_id, e.name, e.occurred_at, e.received_at, e.context::text AS context
FROM customer_events e
JOIN unnest($1::text[], $2::text[]) AS k(customer_id, event_id) USING (customer_id, event_id)
"""

_STORED_SYSTEM_EVENTS = """
SELECT '' AS customer_id, event_id, name, occurred_at, received_at, context::text AS context
FROM system_events WHERE event_id = ANY($1::text[])
"""

# The upsert and, only while real-time segments exist (one probe of a small table), a profile
# notice for segmentation ($10, ``reserved.profile_notice``) on the customer's partition stream
# ($11) and a wake-up of the relays ($12) when this commits: one statement, one round trip. The
# change is stamped ($13) by the service's clock, as events' ``received_at`` and the customers
# events create are: segmentation compares it with the instants it evaluates at.
_UPSERT_CUSTOMER = """
WITH upserted AS (
    INSERT INTO customers AS c (customer_id, email, phone, push_tokens, attributes,
                                email_consent, sms_consent, push_consent, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $13, $13)
    ON CONFLICT (customer_id) DO UPDATE SET
        email = CASE WHEN 'email' = ANY($9::text[]) THEN excluded.email ELSE c.email END,
        phone = CASE WHEN 'phone' = ANY($9::text[]) THEN excluded.phone ELSE c.phone END,
        push_tokens = CASE WHEN 'push_tokens' = ANY($9::text[]) THEN excluded.push_tokens ELSE c.push_tokens END,
        attributes = CASE WHEN 'attributes' = ANY($9::text[]) THEN excluded.attributes ELSE c.attributes END,
        email_consent = CASE WHEN 'email_consent' = ANY($9::text[]) THEN excluded.email_consent ELSE c.email_consent END,
        sms_consent = CASE WHEN 'sms_consent' = ANY($9::text[]) THEN excluded.sms_consent ELSE c.sms_consent END,
        push_consent = CASE WHEN 'push_consent' = ANY($9::text[]) THEN excluded.push_consent ELSE c.push_consent END,
        updated_at = $13
    RETURNING customer_id, email, phone, push_tokens, attributes::text AS attributes,
              email_consent, sms_consent, push_consent, created_at, updated_at, (xmax = 0) AS created
),
notice AS (
    INSERT INTO event_outbox (stream, customer_ids, entries)
    SELECT $11, ARRAY[$1], $10 WHERE EXISTS (SELECT FROM segment_realtime)
    RETURNING id
)
SELECT upserted.*, (SELECT count(pg_notify($12, '')) FROM notice) AS notified FROM upserted
"""

_GET_CUSTOMER = """
SELECT customer_id, email, phone, push_tokens, attributes::text AS attributes,
       email_consent, sms_consent, push_consent, created_at, updated_at
FROM customers WHERE customer_id = $1
"""

_TIMELINE = """
SELECT customer_id, event_id, name, occurred_at, received_at, context::text AS context
FROM customer_events
WHERE customer_id = $1
  AND (cardinality($2::text[]) = 0 OR name = ANY($2::text[]))
  AND ($3::timestamptz IS NULL OR occurred_at >= $3)
  AND ($4::timestamptz IS NULL OR occurred_at < $4)
  AND ($5::timestamptz IS NULL OR (occurred_at, event_id) < ($5, $6::text))
ORDER BY occurred_at DESC, event_id DESC
LIMIT $7
"""

_RETRIES = 3
_EVENT_KEY = "customer_events_pkey"
_TOLERANT_AFTER_CONFLICT = 64
"""Statements stored through ``_STORE_EVENTS`` after a key stored before failed
``_STORE_NEW_EVENTS``: a client sending a batch again rarely sends one such batch only."""


def event_from_row(row: asyncpg.Record) -> common_pb2.Event:
    customer_id = row["customer_id"]
    return common_pb2.Event(
        event_id=row["event_id"],
        kind=common_pb2.EVENT_KIND_CUSTOMER if customer_id else common_pb2.EVENT_KIND_SYSTEM,
        customer_id=customer_id,
        name=row["name"],
        occurred_at=datetime_to_timestamp(row["occurred_at"]),
        received_at=datetime_to_timestamp(row["received_at"]),
        context=decode_values(row["context"]),
    )


def customer_from_row(row: asyncpg.Record) -> common_pb2.Customer:
    return common_pb2.Customer(
        customer_id=row["customer_id"],
        email=row["email"],
        phone=row["phone"],
        push_tokens=row["push_tokens"],
        attributes=decode_values(row["attributes"]),
        email_consent=row["email_consent"],
        sms_consent=row["sms_consent"],
        push_consent=row["push_consent"],
        created_at=datetime_to_timestamp(row["created_at"]),
        updated_at=datetime_to_timestamp(row["updated_at"]),
    )


def _joined(column: Sequence[str], separator: str = _SEPARATOR) -> str:
    """A column of texts (ids, names, contexts) as one text for ``_STORE_EVENTS``."""
    text = separator.join(column)
    # A separator inside a value would shift every column after it: refused, not stored.
    if text.count(separator) != max(len(column) - 1, 0):
        raise ValueError(f"an id, name or context holds {separator!r}")
    return text


class IngestionRepository:
    def __init__(self, pool: asyncpg.Pool, layout: stream.StreamLayout | None = None) -> None:
        self.pool = pool
        self.layout = layout or stream.StreamLayout(DEFAULT_STREAM)
        """Which partition stream each stored event's outbox row is for."""
        self._tolerant_statements = 0
        """How many statements go on storing through ``_STORE_EVENTS`` after a key stored before
        failed ``_STORE_NEW_EVENTS``."""

    async def store_events(
        self, events: Sequence[NewEvent], received_at: dt.datetime, timeout: float | None = None
    ) -> dict[tuple[str, str], tuple[bytes, bool]]:
        """Store new events; for each key, the stored event serialized (``common_pb2.Event``,
        as on the stream) and whether it was there before.

        ``events`` must have distinct keys, in the order they arrived: each
        partition's outbox row holds its entries in that order.
        """
        # One pass builds each event's stored form, its stream entry and its elements of the
        # statement's columns (the batch path's Python per event, compiled: ``stored_form``).
        received = received_at_field(datetime_to_timestamp(received_at))
        key_for = self.layout.key_for if self.layout.partitions > 1 else None
        columns = statement_columns(events, received, key_for)
        built = columns.built
        for attempt in range(_RETRIES):
            try:
                rows = await self._store(columns, received_at, timeout)
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        if not rows:  # the usual case: every event is new
            return built
        stored_before = {(r[0], r[1]) for r in rows}
        results = {key: value for key, value in built.items() if key not in stored_before}
        seen = [e for e in events if e.key in stored_before]
        if seen:
            for event in await self.stored_events(seen, timeout):
                results[(event.customer_id, event.event_id)] = (event.SerializeToString(), True)
        return results

    async def _store(
        self, columns: StatementColumns, received_at: dt.datetime, timeout: float | None
    ) -> list[asyncpg.Record]:
        """Run a storing statement: for customer events only, the plain form first, unless a key
        stored before made it fail lately (a client sending again what it sent, as at-least-once
        producers do: each failure costs a statement's work up to the key, and an error line in
        PostgreSQL's log); the keys not stored."""
        customer = columns.customer
        joined = [_joined(column) for column in (columns.customer_ids, customer.event_ids, customer.names)]
        contexts = _joined(customer.contexts, _CONTEXT_SEPARATOR)
        if self._tolerant_statements:
            self._tolerant_statements -= 1
        elif customer.event_ids and not columns.system.event_ids:
            streams, customer_ids, entries = self._outbox_rows(columns)
            try:
                await self.pool.execute(
                    _STORE_NEW_EVENTS,
                    *joined,
                    customer.occurred,
                    contexts,
                    streams,
                    received_at,
                    customer_ids,
                    entries,
                    timeout=timeout,
                )
                return []
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != _EVENT_KEY:
                    raise
                self._tolerant_statements = _TOLERANT_AFTER_CONFLICT
        system = columns.system
        return await self.pool.fetch(
            _STORE_EVENTS,
            *joined,
            customer.occurred,
            contexts,
            customer.entries,
            received_at,
            system.event_ids,
            system.names,
            system.occurred,
            system.contexts,
            system.entries,
            columns.stream_keys,
            customer.seqs,
            self.layout.key(0),
            system.seqs,
            timeout=timeout,
        )

    def _outbox_rows(self, columns: StatementColumns) -> tuple[list[str], list[str], list[bytes]]:
        """For customer events all new: each partition stream's outbox row (the streams in order,
        their customers joined, their entries packed), its events in the order they arrived."""
        customer, ids = columns.customer, columns.customer_ids
        arrived = sorted(range(len(ids)), key=customer.seqs.__getitem__)
        keys = columns.stream_keys
        if not keys:  # one partition stream
            per_stream = {self.layout.key(0): arrived}
        else:
            per_stream = {}
            for i in arrived:
                per_stream.setdefault(keys[i], []).append(i)
        streams = sorted(per_stream)
        entries = customer.entries
        return (
            streams,
            [_SEPARATOR.join([ids[i] for i in per_stream[s]]) for s in streams],
            [b"".join([entries[i] for i in per_stream[s]]) for s in streams],
        )

    async def stored_events(
        self, keys: Sequence[NewEvent], timeout: float | None = None
    ) -> list[common_pb2.Event]:
        customer = [k for k in keys if k.customer_id]
        system = [k.event_id for k in keys if not k.customer_id]
        rows: list[asyncpg.Record] = []
        if customer:
            rows += await self.pool.fetch(
                _STORED_CUSTOMER_EVENTS,
                [k.customer_id for k in customer],
                [k.event_id for k in customer],
                timeout=timeout,
            )
        if system:
            rows += await self.pool.fetch(_STORED_SYSTEM_EVENTS, system, timeout=timeout)
        return [event_from_row(r) for r in rows]

    async def upsert_customer(
        self, change: CustomerChange, at: dt.datetime, timeout: float | None = None
    ) -> tuple[common_pb2.Customer, bool]:
        """Create or change a customer's profile at ``at`` (the service's clock)."""
        row = await self.pool.fetchrow(
            _UPSERT_CUSTOMER,
            change.customer_id,
            change.email,
            change.phone,
            change.push_tokens,
            change.attributes_json,
            change.email_consent,
            change.sms_consent,
            change.push_consent,
            sorted(change.fields),
            # Profile conditions of real-time segments move at once, not at the customer's next event.
            reserved.profile_notice(change.customer_id),
            self.layout.key_for(change.customer_id),
            notifications.OUTBOX,
            at,
            timeout=timeout,
        )
        assert row is not None
        return customer_from_row(row), bool(row["created"])

    async def get_customer(
        self, customer_id: str, timeout: float | None = None
    ) -> common_pb2.Customer | None:
        row = await self.pool.fetchrow(_GET_CUSTOMER, customer_id, timeout=timeout)
        return customer_from_row(row) if row else None

    async def customer_exists(self, customer_id: str, timeout: float | None = None) -> bool:
        found = await self.pool.fetchval(
            "SELECT true FROM customers WHERE customer_id = $1", customer_id, timeout=timeout
        )
        return bool(found)

    async def timeline(
        self,
        customer_id: str,
        *,
        names: Sequence[str],
        after: dt.datetime | None,
        before: dt.datetime | None,
        cursor: tuple[dt.datetime, str] | None,
        limit: int,
        timeout: float | None = None,
    ) -> list[common_pb2.Event]:
        """Up to ``limit`` events of a customer, newest first, after ``cursor`` (occurred_at, event_id)."""
        rows = await self.pool.fetch(
            _TIMELINE,
            customer_id,
            list(names),
            after,
            before,
            cursor[0] if cursor else None,
            cursor[1] if cursor else None,
            limit,
            timeout=timeout,
        )
        return [event_from_row(r) for r in rows]

    async def erase_customer(self, customer_id: str, timeout: float | None = None) -> tuple[bool, int]:
        """Delete the profile and, by cascade, every row derived from it, the suppressions its
        reports caused and the test sends rendered for it or sent to its addresses; scrub the outbox.

        Outbox rows are locked, so a relay publishing one of them finishes (and
        its stream entries exist) before this transaction goes on. The erasure
        is counted (without the customer) in ``customer_erasures``, which the
        services keeping copies outside PostgreSQL watch.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            events = await connection.fetchval(
                "SELECT count(*) FROM customer_events WHERE customer_id = $1", customer_id, timeout=timeout
            )
            # The suppressions the customer's reports caused (suppressions is a shared table, so
            # no cascade reaches it); their reports go by cascade below. Two statements, not one
            # with a subquery: under Citus a reference table's write cannot read a sharded table.
            reported = await connection.fetchval(
                "SELECT array_agg(DISTINCT delivery_id) FROM delivery_events WHERE customer_id = $1",
                customer_id,
                timeout=timeout,
            )
            if reported:
                await connection.execute(
                    "DELETE FROM suppressions WHERE delivery_id = ANY($1::bigint[])",
                    reported,
                    timeout=timeout,
                )
            # Test sends are no customer's deliveries (no cascade reaches them): those rendered for
            # the customer and those sent to one of the customer's addresses go (e-mail addresses
            # are kept lower-cased, as the campaign service compares them). Two statements, as above.
            addresses = await connection.fetchval(
                """
                SELECT array_agg(a) FROM customers c,
                    unnest(array[lower(btrim(c.email)), btrim(c.phone)] || c.push_tokens) AS a
                WHERE c.customer_id = $1 AND a <> ''
                """,
                customer_id,
                timeout=timeout,
            )
            await connection.execute(
                "DELETE FROM test_deliveries WHERE sample_customer_id = $1 OR address = ANY($2::text[])",
                customer_id,
                addresses or [],
                timeout=timeout,
            )
            erased = await connection.fetchval(
                "DELETE FROM customers WHERE customer_id = $1 RETURNING true", customer_id, timeout=timeout
            )
            outbox = await connection.fetch(
                "SELECT id, entries FROM event_outbox WHERE $1 = ANY(customer_ids) ORDER BY id FOR UPDATE",
                customer_id,
                timeout=timeout,
            )
            for row in outbox:
                keep = [e for e in stream.unpack_entries(row["entries"]) if e[0] != customer_id]
                if not keep:
                    await connection.execute("DELETE FROM event_outbox WHERE id = $1", row["id"])
                    continue
                await connection.execute(
                    "UPDATE event_outbox SET customer_ids = $2, entries = $3 WHERE id = $1",
                    row["id"],
                    [e[0] for e in keep],
                    b"".join(stream.pack_entry(*e) for e in keep),
                )
            await connection.execute("UPDATE customer_erasures SET erasures = erasures + 1", timeout=timeout)
        return bool(erased), int(events or 0)
