"""Journey instances in PostgreSQL: entry under the entry rule, steps recorded once, durable timers.

An instance is keyed by (customer, campaign, entry event). Its timer (one per instance,
``eventline_shared.storage.timers``) says when its current step is due; the runner claims
due timers and, in one transaction holding the instance's row lock, takes the timer,
records the step's outcome and moves the instance on. A step's row in ``journey_steps``
is written once (its primary key), so a step a crashed worker left half done is finished
by the next one, never run twice (sends are exactly once through the delivery ledger).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from eventline_campaigns.journey_model import ACTIVE, CANCELLED, COMPLETED, EXITED
from eventline_shared.storage.database import Connection
from eventline_shared.storage.timers import TimerTable

InstanceKey = tuple[str, str, str]
"""(customer id, campaign id, entry event id)."""

START = ""
"""The step an instance is at before its first step: firing it enters the first step."""


@dataclass(frozen=True)
class Instance:
    customer_id: str
    campaign_id: str
    entry_event_id: str
    version: str
    status: int
    step_id: str
    variant: str | None
    trigger: bytes
    entered_at: dt.datetime
    converted_at: dt.datetime | None

    @property
    def key(self) -> InstanceKey:
        return (self.customer_id, self.campaign_id, self.entry_event_id)


@dataclass(frozen=True)
class Entry:
    """An instance to start: its key, graph version, entry slot and the trigger event (bytes)."""

    customer_id: str
    campaign_id: str
    entry_event_id: str
    version: str
    slot: str | None
    trigger: bytes


@dataclass(frozen=True)
class Move:
    """What a step came to: its outcome (and reason), then where the instance goes.

    ``next_step`` None ends the journey with ``final_status``; otherwise the instance waits
    at ``next_step`` until ``due_at`` (listening for ``waiting_event`` meanwhile)."""

    outcome: str
    reason: str = ""
    next_step: str | None = None
    due_at: dt.datetime | None = None
    waiting_event: str | None = None
    variant: str | None = None
    final_status: int = COMPLETED


_INSTANCE_COLUMNS = "customer_id, campaign_id, entry_event_id, version, status, step_id, variant, trigger, entered_at, converted_at"

_ENTER = """
INSERT INTO journey_instances
    (customer_id, campaign_id, entry_event_id, version, entry_slot, trigger, step_id, entered_at)
SELECT t.customer_id, t.campaign_id, t.entry_event_id, t.version, t.slot, t.trigger, '', $7
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
    AS t(customer_id, campaign_id, entry_event_id, version, slot, trigger)
ORDER BY t.customer_id, t.campaign_id, t.entry_event_id
ON CONFLICT DO NOTHING
RETURNING customer_id, campaign_id, entry_event_id
"""

_STEP_ENTERED = """
INSERT INTO journey_steps (customer_id, campaign_id, entry_event_id, step_id, entered_at)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
"""

_STEP_DONE = """
UPDATE journey_steps SET outcome = $5, reason = $6, finished_at = $7
WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3 AND step_id = $4
"""

_MOVE = """
UPDATE journey_instances SET step_id = $4, waiting_event = $5, variant = coalesce($6, variant),
    held_due_at = $7
WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3
"""

_FINISH = f"""
UPDATE journey_instances SET status = $4, waiting_event = NULL, held_due_at = NULL, finished_at = $5,
    variant = coalesce($6, variant),
    entry_slot = CASE WHEN entry_slot = 'active' THEN NULL ELSE entry_slot END
WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3 AND status = {ACTIVE:d}
"""


class JourneyStore:
    """Instances, their steps and timers."""

    def __init__(self, pool: asyncpg.Pool, lease_s: float = 30.0) -> None:
        self.pool = pool
        self.timers = TimerTable("journey_timers", ["customer_id", "campaign_id", "entry_event_id"], lease_s)

    # --- versions ---

    async def save_version(self, campaign_id: str, version: str, spec: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO journey_versions (campaign_id, version, spec) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            campaign_id,
            version,
            spec,
        )

    async def version(self, campaign_id: str, version: str) -> bytes | None:
        value: bytes | None = await self.pool.fetchval(
            "SELECT spec FROM journey_versions WHERE campaign_id = $1 AND version = $2", campaign_id, version
        )
        return value

    # --- entry ---

    async def enter(self, entries: Sequence[Entry], now: dt.datetime) -> list[InstanceKey]:
        """Start the instances the entry rules let in (the others conflict and are skipped), each
        due at once at its start; returns the keys of those started."""
        if not entries:
            return []
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                _ENTER,
                [e.customer_id for e in entries],
                [e.campaign_id for e in entries],
                [e.entry_event_id for e in entries],
                [e.version for e in entries],
                [e.slot for e in entries],
                [e.trigger for e in entries],
                now,
            )
            keys = [(r[0], r[1], r[2]) for r in rows]
            await self.timers.set_many(connection, keys, now)
        return keys

    # --- the runner's transaction ---

    async def instance(
        self, connection: Connection | asyncpg.Pool, key: InstanceKey, lock: bool = False
    ) -> Instance | None:
        row = await connection.fetchrow(
            f"SELECT {_INSTANCE_COLUMNS} FROM journey_instances "
            f"WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3{' FOR UPDATE' if lock else ''}",
            *key,
        )
        return Instance(*row) if row else None

    async def campaign_state(
        self, connection: Connection | asyncpg.Pool, campaign_id: str, lock: bool = False
    ) -> int:
        """The campaign's state; with ``lock``, held (FOR SHARE) until the transaction ends, so that
        a pause or archive waits for the step being recorded and then sees its outcome."""
        state: int | None = await connection.fetchval(
            f"SELECT state FROM campaigns WHERE campaign_id = $1{' FOR SHARE' if lock else ''}", campaign_id
        )
        return state or 0

    async def record_move(
        self, connection: Connection, instance: Instance, move: Move, now: dt.datetime, *, held: bool
    ) -> None:
        """Record the outcome of the instance's current step and move it on (in the caller's
        transaction). A ``held`` instance (its campaign is paused) keeps its due time aside
        instead of a timer: resuming the campaign sets it again."""
        key = instance.key
        if instance.step_id != START:
            await connection.execute(_STEP_DONE, *key, instance.step_id, move.outcome, move.reason, now)
        if move.next_step is None:
            await connection.execute(_FINISH, *key, move.final_status, now, move.variant)
            await self.timers.cancel(connection, key)
            return
        await connection.execute(_STEP_ENTERED, *key, move.next_step, now)
        due = move.due_at or now
        await connection.execute(
            _MOVE, *key, move.next_step, move.waiting_event, move.variant, due if held else None
        )
        if held:
            await self.timers.cancel(connection, key)
        else:
            await self.timers.set(connection, key, due)

    async def hold(self, connection: Connection, key: InstanceKey, due_at: dt.datetime) -> None:
        """Keep a due instance of a paused campaign where it is."""
        await connection.execute(
            "UPDATE journey_instances SET held_due_at = $4 "
            "WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3",
            *key,
            due_at,
        )

    async def defer(
        self, connection: Connection, instance: Instance, until: dt.datetime, reason: str
    ) -> None:
        """A send step deferred by quiet hours: its timer moves to their end, the step says why."""
        await connection.execute(
            "UPDATE journey_steps SET deferred = true, reason = $5 "
            "WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3 AND step_id = $4",
            *instance.key,
            instance.step_id,
            reason,
        )
        await self.timers.set(connection, instance.key, until)

    async def step_reason(self, connection: Connection, instance: Instance) -> str:
        value: str | None = await connection.fetchval(
            "SELECT reason FROM journey_steps "
            "WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3 AND step_id = $4",
            *instance.key,
            instance.step_id,
        )
        return value or ""

    async def deliveries(self, key: InstanceKey, event_id: str) -> list[tuple[int, str]]:
        """(status, reason) of the ledger's deliveries of one send step."""
        rows = await self.pool.fetch(
            "SELECT status, reason FROM deliveries WHERE customer_id = $1 AND campaign_id = $2 AND event_id = $3",
            key[0],
            key[1],
            event_id,
        )
        return [(r[0], r[1]) for r in rows]

    # --- events: waits, exits, goals ---

    async def listening(
        self,
        customer_ids: Sequence[str],
        names: Sequence[str],
        campaign_ids: Sequence[str],
        since: dt.datetime,
    ) -> list[tuple[Instance, str | None]]:
        """Instances of these customers an event may concern: active ones waiting for one of
        ``names``, and those of ``campaign_ids`` (exit and goal events) still active or
        entered since ``since`` and not converted; with the event each waits for."""
        rows = await self.pool.fetch(
            f"""
            SELECT {_INSTANCE_COLUMNS}, waiting_event FROM journey_instances
            WHERE customer_id = ANY($1::text[])
              AND ((status = {ACTIVE:d} AND waiting_event = ANY($2::text[]))
                   OR (campaign_id = ANY($3::text[])
                       AND (status = {ACTIVE:d} OR (converted_at IS NULL AND entered_at >= $4))))
            """,
            list(customer_ids),
            list(names),
            list(campaign_ids),
            since,
        )
        return [(Instance(*r[:-1]), r[-1]) for r in rows]

    async def convert(self, key: InstanceKey, at: dt.datetime) -> bool:
        done = await self.pool.fetchval(
            "UPDATE journey_instances SET converted_at = $4 "
            "WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3 AND converted_at IS NULL "
            "RETURNING true",
            *key,
            at,
        )
        return bool(done)

    # --- campaign life cycle ---

    async def release_held(self, campaign_id: str) -> int:
        """Resume: set again the timers of the instances a pause held."""
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                f"""
                SELECT customer_id, campaign_id, entry_event_id, held_due_at FROM journey_instances
                WHERE campaign_id = $1 AND status = {ACTIVE:d} AND held_due_at IS NOT NULL
                ORDER BY customer_id, entry_event_id
                FOR UPDATE
                """,
                campaign_id,
            )
            await connection.execute(
                "UPDATE journey_instances SET held_due_at = NULL WHERE campaign_id = $1 AND held_due_at IS NOT NULL",
                campaign_id,
            )
            for row in rows:
                await self.timers.set(connection, (row[0], row[1], row[2]), row[3])
        return len(rows)

    async def cancel_all(self, campaign_id: str, now: dt.datetime) -> int:
        """Archive: end every active instance of the campaign and drop its timers."""
        async with self.pool.acquire() as connection, connection.transaction():
            count = await connection.fetchval(
                f"""
                WITH ended AS (
                    UPDATE journey_instances SET status = {CANCELLED:d}, waiting_event = NULL, held_due_at = NULL,
                        finished_at = $2,
                        entry_slot = CASE WHEN entry_slot = 'active' THEN NULL ELSE entry_slot END
                    WHERE campaign_id = $1 AND status = {ACTIVE:d}
                    RETURNING 1)
                SELECT count(*) FROM ended
                """,
                campaign_id,
                now,
            )
            await connection.execute("DELETE FROM journey_timers WHERE campaign_id = $1", campaign_id)
        return int(count or 0)

    # --- stats ---

    async def step_counts(self, campaign_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"""
            SELECT s.step_id,
                   count(*) AS entered,
                   count(*) FILTER (WHERE s.outcome IS NULL AND i.status = {ACTIVE:d} AND i.step_id = s.step_id) AS waiting,
                   count(*) FILTER (WHERE s.outcome = 'sent') AS sent,
                   count(*) FILTER (WHERE s.outcome = 'skipped') AS skipped,
                   count(*) FILTER (WHERE s.deferred) AS deferred,
                   count(*) FILTER (WHERE i.status = {EXITED:d} AND i.step_id = s.step_id) AS exited,
                   count(*) FILTER (WHERE i.converted_at IS NOT NULL) AS converted
            FROM journey_steps s
            JOIN journey_instances i USING (customer_id, campaign_id, entry_event_id)
            WHERE s.campaign_id = $1
            GROUP BY s.step_id
            """,
            campaign_id,
        )

    async def skip_reasons(self, campaign_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT step_id, reason, count(*) FROM journey_steps "
            "WHERE campaign_id = $1 AND outcome = 'skipped' GROUP BY step_id, reason",
            campaign_id,
        )

    async def variant_counts(self, campaign_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """
            SELECT s.step_id, s.outcome AS variant, count(*) AS entered,
                   count(*) FILTER (WHERE i.converted_at IS NOT NULL) AS converted
            FROM journey_steps s
            JOIN journey_instances i USING (customer_id, campaign_id, entry_event_id)
            WHERE s.campaign_id = $1 AND s.outcome LIKE 'variant:%'
            GROUP BY s.step_id, s.outcome
            """,
            campaign_id,
        )

    async def totals(self, campaign_id: str) -> dict[int, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) FROM journey_instances WHERE campaign_id = $1 GROUP BY status",
            campaign_id,
        )
        return {r[0]: r[1] for r in rows}

    async def converted(self, campaign_id: str) -> int:
        value = await self.pool.fetchval(
            "SELECT count(*) FROM journey_instances WHERE campaign_id = $1 AND converted_at IS NOT NULL",
            campaign_id,
        )
        return int(value or 0)
