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

_KEYS = "$1::text[], $2::text[], $3::text[]"
# A batch's rows are found through the primary key. campaign_id is compared with IS NOT
# DISTINCT FROM (the same as = on this NOT NULL column), which no index serves: otherwise,
# on statistics that predate a campaign's rows (a new campaign, a young table), the planner
# probes the campaign-led indexes and filters the campaign's every row for each instance of
# the batch (batch x campaign rows: 0.5-1 s per statement of 500 at 5,000 instances). The
# customer and entry event stay equalities, so that a probe of the key is estimated at a row
# (not a scan of the table) even for a batch of one.
_MATCH = (
    "t.customer_id = u.customer_id AND t.entry_event_id = u.entry_event_id"
    " AND t.campaign_id IS NOT DISTINCT FROM u.campaign_id"
)

_STEP_ENTERED = f"""
INSERT INTO journey_steps (customer_id, campaign_id, entry_event_id, step_id, entered_at)
SELECT u.*, $5 FROM unnest({_KEYS}, $4::text[]) AS u(customer_id, campaign_id, entry_event_id, step_id)
ORDER BY 1, 2, 3, 4
ON CONFLICT DO NOTHING
"""

_STEP_DONE = f"""
UPDATE journey_steps t SET outcome = u.outcome, reason = u.reason, finished_at = $7
FROM unnest({_KEYS}, $4::text[], $5::text[], $6::text[])
    AS u(customer_id, campaign_id, entry_event_id, step_id, outcome, reason)
WHERE {_MATCH} AND t.step_id = u.step_id
"""

_MOVE = f"""
UPDATE journey_instances t SET step_id = u.step_id, waiting_event = u.waiting_event,
    variant = coalesce(u.variant, t.variant), held_due_at = u.held_due_at
FROM unnest({_KEYS}, $4::text[], $5::text[], $6::text[], $7::timestamptz[])
    AS u(customer_id, campaign_id, entry_event_id, step_id, waiting_event, variant, held_due_at)
WHERE {_MATCH}
"""

_FINISH = f"""
UPDATE journey_instances t SET status = u.status, waiting_event = NULL, held_due_at = NULL, finished_at = $6,
    variant = coalesce(u.variant, t.variant),
    entry_slot = CASE WHEN t.entry_slot = 'active' THEN NULL ELSE t.entry_slot END
FROM unnest({_KEYS}, $4::smallint[], $5::text[]) AS u(customer_id, campaign_id, entry_event_id, status, variant)
WHERE {_MATCH} AND t.status = {ACTIVE:d}
"""


def _columns(rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
    """Rows as the column arrays an ``unnest`` statement takes."""
    return [list(column) for column in zip(*rows, strict=True)]


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
        return (await self.instances(connection, [key], lock)).get(key)

    async def instances(
        self, connection: Connection | asyncpg.Pool, keys: Sequence[InstanceKey], lock: bool = False
    ) -> dict[InstanceKey, Instance]:
        """The instances of ``keys`` (those that exist); with ``lock``, locked in key order."""
        if not keys:
            return {}
        ordered = sorted(set(keys))
        rows = await connection.fetch(
            f"SELECT {', '.join('i.' + c.strip() for c in _INSTANCE_COLUMNS.split(','))} "
            "FROM journey_instances i "
            "JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(customer_id, campaign_id, entry_event_id) "
            "USING (customer_id, campaign_id, entry_event_id) "
            f"ORDER BY i.customer_id, i.campaign_id, i.entry_event_id{' FOR UPDATE OF i' if lock else ''}",
            [k[0] for k in ordered],
            [k[1] for k in ordered],
            [k[2] for k in ordered],
        )
        found = [Instance(*r) for r in rows]
        return {i.key: i for i in found}

    async def campaign_states(
        self, connection: Connection | asyncpg.Pool, campaign_ids: Sequence[str], lock: bool = False
    ) -> dict[str, int]:
        """The campaigns' states; with ``lock``, held (FOR SHARE) until the transaction ends, so
        that a pause or archive waits for the steps being recorded and then sees them."""
        rows = await connection.fetch(
            "SELECT campaign_id, state FROM campaigns WHERE campaign_id = ANY($1::text[]) "
            f"ORDER BY campaign_id{' FOR SHARE' if lock else ''}",
            sorted(set(campaign_ids)),
        )
        return {r[0]: r[1] for r in rows}

    async def record_moves(
        self, connection: Connection, moves: Sequence[tuple[Instance, Move, bool]], now: dt.datetime
    ) -> None:
        """Record the outcome of each instance's current step and move it on (in the caller's
        transaction), a few statements for the whole batch. A ``held`` instance (its campaign
        is paused) keeps its due time aside instead of a timer: resuming sets it again."""
        done = [(*i.key, i.step_id, m.outcome, m.reason) for i, m, _ in moves if i.step_id != START]
        if done:
            await connection.execute(_STEP_DONE, *_columns(done), now)
        finishing = [(i, m) for i, m, _ in moves if m.next_step is None]
        going = [(i, m, held) for i, m, held in moves if m.next_step is not None]
        if finishing:
            await connection.execute(
                _FINISH, *_columns([(*i.key, m.final_status, m.variant) for i, m in finishing]), now
            )
        if going:
            await connection.execute(
                _STEP_ENTERED, *_columns([(*i.key, m.next_step) for i, m, _ in going]), now
            )
            await connection.execute(
                _MOVE,
                *_columns(
                    [
                        (*i.key, m.next_step, m.waiting_event, m.variant, (m.due_at or now) if held else None)
                        for i, m, held in going
                    ]
                ),
            )
        await self.timers.cancel_many(
            connection, [i.key for i, _ in finishing] + [i.key for i, _, held in going if held]
        )
        await self.timers.set_each(connection, [(i.key, m.due_at or now) for i, m, held in going if not held])

    async def record_move(
        self, connection: Connection, instance: Instance, move: Move, now: dt.datetime, *, held: bool
    ) -> None:
        """``record_moves`` for one instance."""
        await self.record_moves(connection, [(instance, move, held)], now)

    async def hold(self, connection: Connection, held: Sequence[tuple[InstanceKey, dt.datetime]]) -> None:
        """Keep due instances of a paused campaign where they are (their timers were taken)."""
        if held:
            await connection.executemany(
                "UPDATE journey_instances SET held_due_at = $4 "
                "WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3",
                [(*key, due_at) for key, due_at in held],
            )

    async def defer(
        self, connection: Connection, deferred: Sequence[tuple[Instance, dt.datetime, str]]
    ) -> None:
        """Send steps deferred by quiet hours: their timers move to the hours' end, the steps say why."""
        if not deferred:
            return
        await connection.executemany(
            "UPDATE journey_steps SET deferred = true, reason = $5 "
            "WHERE customer_id = $1 AND campaign_id = $2 AND entry_event_id = $3 AND step_id = $4",
            [(*i.key, i.step_id, reason) for i, _, reason in deferred],
        )
        await self.timers.set_each(connection, [(i.key, until) for i, until, _ in deferred])

    async def step_reasons(self, instances: Sequence[Instance]) -> dict[InstanceKey, str]:
        """The reason recorded on each instance's current step (a quiet-hour deferral)."""
        if not instances:
            return {}
        rows = await self.pool.fetch(
            "SELECT s.customer_id, s.campaign_id, s.entry_event_id, s.reason FROM journey_steps s "
            "JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
            "AS k(customer_id, campaign_id, entry_event_id, step_id) "
            "USING (customer_id, campaign_id, entry_event_id, step_id) WHERE s.reason <> ''",
            [i.customer_id for i in instances],
            [i.campaign_id for i in instances],
            [i.entry_event_id for i in instances],
            [i.step_id for i in instances],
        )
        return {(r[0], r[1], r[2]): r[3] for r in rows}

    async def deliveries(
        self, sends: Sequence[tuple[InstanceKey, str]]
    ) -> dict[InstanceKey, list[tuple[int, str]]]:
        """(status, reason) of the ledger's deliveries of send steps, by instance: (instance, its
        step's event id) pairs."""
        if not sends:
            return {}
        rows = await self.pool.fetch(
            "SELECT d.customer_id, d.campaign_id, k.entry_event_id, d.status, d.reason FROM deliveries d "
            "JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
            "AS k(customer_id, campaign_id, event_id, entry_event_id) USING (customer_id, campaign_id, event_id)",
            [key[0] for key, _ in sends],
            [key[1] for key, _ in sends],
            [event_id for _, event_id in sends],
            [key[2] for key, _ in sends],
        )
        found: dict[InstanceKey, list[tuple[int, str]]] = {}
        for r in rows:
            found.setdefault((r[0], r[1], r[2]), []).append((r[3], r[4]))
        return found

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
