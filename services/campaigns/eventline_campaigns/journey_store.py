"""Journey instances in PostgreSQL: entry under the entry rule, steps recorded once, durable timers.

An instance is keyed by (customer, campaign, entry event). Its timer (one per instance,
``eventline_shared.storage.timers``) says when its current step is due; the runner claims
due timers and, in one statement for a batch that locks the instances' rows (``advance``),
takes the timers, records the steps' outcomes and moves the instances on. A step's row in ``journey_steps``
is written once (its primary key), so a step a crashed worker left half done is finished
by the next one, never run twice (sends are exactly once through the delivery ledger).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from eventline_campaigns.journey_model import ACTIVE, CANCELLED, COMPLETED, EXITED
from eventline_campaigns.model import ARCHIVED, PAUSED
from eventline_campaigns.repository import fence_args, fence_check, fenced_off
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

# Entries and moves are recorded under the stream batch's partition fence (``fence_check``): a
# replica that lost the partition enters and moves nothing more for its events.
_ENTER = f"""
WITH {fence_check(8)}
INSERT INTO journey_instances
    (customer_id, campaign_id, entry_event_id, version, entry_slot, trigger, step_id, entered_at)
SELECT t.customer_id, t.campaign_id, t.entry_event_id, t.version, t.slot, t.trigger, '', $7
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
    AS t(customer_id, campaign_id, entry_event_id, version, slot, trigger)
WHERE (SELECT ok FROM holds)
ORDER BY t.customer_id, t.campaign_id, t.entry_event_id
ON CONFLICT DO NOTHING
RETURNING customer_id, campaign_id, entry_event_id
"""


# A batch's rows are found through the primary key. campaign_id is compared with IS NOT
# DISTINCT FROM (the same as = on this NOT NULL column), which no index serves: otherwise,
# on statistics that predate a campaign's rows (a new campaign, a young table), the planner
# probes the campaign-led indexes and filters the campaign's every row for each instance of
# the batch (batch x campaign rows: 0.5-1 s per statement of 500 at 5,000 instances). The
# customer and entry event stay equalities, so that a probe of the key is estimated at a row
# (not a scan of the table) even for a batch of one.
def _match(t: str, u: str) -> str:
    return (
        f"{t}.customer_id = {u}.customer_id AND {t}.entry_event_id = {u}.entry_event_id"
        f" AND {t}.campaign_id IS NOT DISTINCT FROM {u}.campaign_id"
    )


MOVE = 1
"""``Advance.action``: record the step's outcome and move on (``Advance.move``)."""
DEFER = 2
"""``Advance.action``: a send inside quiet hours: its timer moves to ``move.due_at``, its step
says why (``move.reason``)."""
HOLD = 3
"""``Advance.action``: the step's work was not done (its campaign was paused or archived when the
batch began): a paused campaign holds the instance, an archived one cancels it."""
DISCARD = 4
"""``Advance.action``: the instance had ended (or was gone) when the batch began: only its timer goes."""

# Advancing instances, one statement for a batch (ADVANCE below). Each instance's fate, `what`:
#   go    its step recorded, on to the next step, due at its timer
#   held  the same, but the campaign is paused: the next step's due time is kept aside
#   end   its step recorded, the instance ends (or is cancelled: its campaign is archived)
#   defer its timer moves to the quiet hours' end, its step says why
#   hold  the campaign is paused: the due time is kept aside (resuming sets the timer again)
#   drop  the instance is gone, ended, or no longer where the claim found it: only the claimed timer goes
#   NULL  nothing (a hold whose campaign was resumed meanwhile: it runs after the claim's lease)
_PLAN = f"""
CASE
    WHEN u.action = {DISCARD} OR l.customer_id IS NULL OR l.status <> {ACTIVE:d}
            OR l.step_id <> coalesce(u.at_step, l.step_id)
        THEN CASE WHEN u.claimed IS NOT NULL THEN 'drop' END
    WHEN s.state = {ARCHIVED:d} THEN 'end'
    WHEN u.action = {DEFER} THEN 'defer'
    WHEN u.action = {HOLD} THEN CASE WHEN s.state = {PAUSED:d} THEN 'hold' END
    WHEN u.next_step IS NULL THEN 'end'
    WHEN s.state = {PAUSED:d} THEN 'held'
    ELSE 'go'
END"""

# One statement takes the claimed timers, records the steps' outcomes and moves the
# instances (a statement is its own transaction: one round trip for the batch). Locks in
# the order the journey's other writers take them: the instances (key order: the arrays
# come sorted and each instance is locked by a probe of the primary key, whatever the
# statistics say of the table's size, as the lateral subquery with its row lock is
# never flattened into a join that could scan the table), then their
# timers, then the campaigns (FOR SHARE: a pause or archive waits for the steps being
# recorded, then sees them). A claimed timer is taken (TimerTable's contract) only if it
# still stands at the instant claimed (`claimed`); only the instances whose timer was
# taken move, so a step is recorded once however many workers ran it. Without a claim
# (an event moved the instance) the timer is set or removed whatever it was.
_ADVANCE = f"""
WITH {fence_check(15)},
u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::smallint[],
                         $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::text[],
                         $13::smallint[])
        AS u(customer_id, campaign_id, entry_event_id, claimed, at_step, action,
             outcome, reason, next_step, due_at, waiting_event, variant, final_status)
    WHERE (SELECT ok FROM holds)
),
locked AS (
    SELECT l.* FROM u CROSS JOIN LATERAL (
        SELECT i.customer_id, i.campaign_id, i.entry_event_id, i.status, i.step_id
        FROM journey_instances i WHERE {_match("i", "u")}
        FOR UPDATE OF i) l
),
states AS (
    SELECT campaign_id, state FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM locked)
    ORDER BY campaign_id FOR SHARE
),
plan AS (
    SELECT u.customer_id, u.campaign_id, u.entry_event_id, u.claimed, l.step_id, {_PLAN} AS what,
           CASE WHEN s.state = {ARCHIVED:d} THEN 'cancelled' ELSE u.outcome END AS outcome,
           CASE WHEN s.state = {ARCHIVED:d} THEN '' ELSE u.reason END AS reason,
           CASE WHEN s.state = {ARCHIVED:d} THEN {CANCELLED:d}::smallint ELSE u.final_status END AS final_status,
           CASE WHEN s.state = {ARCHIVED:d} THEN NULL ELSE u.variant END AS variant,
           u.next_step, u.waiting_event, coalesce(u.due_at, $14) AS due_at
    FROM u LEFT JOIN locked l ON {_match("l", "u")} LEFT JOIN states s ON s.campaign_id = u.campaign_id
),
retimed AS (
    UPDATE journey_timers t SET due_at = p.due_at, claimed_until = NULL
    FROM plan p
    WHERE p.what IN ('go', 'defer') AND p.claimed IS NOT NULL AND {_match("t", "p")} AND t.due_at = p.claimed
    RETURNING t.customer_id, t.campaign_id, t.entry_event_id
),
dropped AS (
    DELETE FROM journey_timers t USING plan p
    WHERE p.what IN ('end', 'held', 'hold', 'drop') AND {_match("t", "p")}
      AND (p.claimed IS NULL OR t.due_at = p.claimed)
    RETURNING t.customer_id, t.campaign_id, t.entry_event_id
),
set_anyway AS (
    INSERT INTO journey_timers (customer_id, campaign_id, entry_event_id, due_at, claimed_until)
    SELECT customer_id, campaign_id, entry_event_id, due_at, NULL FROM plan
    WHERE what IN ('go', 'defer') AND claimed IS NULL
    ORDER BY customer_id, campaign_id, entry_event_id
    ON CONFLICT (customer_id, campaign_id, entry_event_id)
    DO UPDATE SET due_at = excluded.due_at, claimed_until = NULL
),
taken AS (
    SELECT p.* FROM plan p
    WHERE p.what IS NOT NULL AND (
        p.claimed IS NULL
        OR (p.customer_id, p.campaign_id, p.entry_event_id) IN (SELECT * FROM retimed UNION ALL SELECT * FROM dropped))
),
moved AS (
    UPDATE journey_instances i SET
        status = CASE WHEN p.what = 'end' THEN p.final_status ELSE i.status END,
        step_id = CASE WHEN p.what IN ('go', 'held') THEN p.next_step ELSE i.step_id END,
        waiting_event = CASE WHEN p.what IN ('go', 'held') THEN p.waiting_event
                             WHEN p.what = 'end' THEN NULL ELSE i.waiting_event END,
        variant = coalesce(p.variant, i.variant),
        held_due_at = CASE p.what WHEN 'held' THEN p.due_at WHEN 'hold' THEN p.claimed ELSE NULL END,
        finished_at = CASE WHEN p.what = 'end' THEN $14 ELSE i.finished_at END,
        entry_slot = CASE WHEN p.what = 'end' AND i.entry_slot = 'active' THEN NULL ELSE i.entry_slot END
    FROM taken p
    WHERE p.what IN ('go', 'held', 'end', 'hold') AND {_match("i", "p")}
),
recorded AS (
    UPDATE journey_steps s SET
        outcome = CASE WHEN p.what = 'defer' THEN s.outcome ELSE p.outcome END,
        reason = p.reason,
        deferred = s.deferred OR p.what = 'defer',
        finished_at = CASE WHEN p.what = 'defer' THEN s.finished_at ELSE $14 END
    FROM taken p
    WHERE p.what IN ('go', 'held', 'end', 'defer') AND p.step_id <> '{START}'
      AND {_match("s", "p")} AND s.step_id = p.step_id
),
entered AS (
    INSERT INTO journey_steps (customer_id, campaign_id, entry_event_id, step_id, entered_at)
    SELECT customer_id, campaign_id, entry_event_id, next_step, $14 FROM taken
    WHERE what IN ('go', 'held')
    ORDER BY customer_id, campaign_id, entry_event_id
    ON CONFLICT DO NOTHING
)
SELECT customer_id, campaign_id, entry_event_id, what FROM taken
"""


# The instances of a batch with their campaigns' states, each found by a probe of the primary
# key (OFFSET 0 keeps the lateral subquery from being flattened into a join, which the
# planner would make a hash of the whole table: 10 ms a batch at 17,000 instances).
_INSTANCES = f"""
SELECT i.*, c.state
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(customer_id, campaign_id, entry_event_id)
CROSS JOIN LATERAL (
    SELECT {_INSTANCE_COLUMNS} FROM journey_instances i WHERE {_match("i", "u")} OFFSET 0) i
LEFT JOIN campaigns c ON c.campaign_id = i.campaign_id
"""


@dataclass(frozen=True)
class Advance:
    """One instance's step to record (``JourneyStore.advance``): ``action`` (MOVE, DEFER, HOLD,
    DISCARD) with its ``move``; ``claimed``, the instant of the claimed timer that ran it (None:
    an event moved the instance, no timer is taken); ``at_step``, the step it must still be at
    (None: wherever it is, e.g. an exit event)."""

    key: InstanceKey
    move: Move
    claimed: dt.datetime | None = None
    at_step: str | None = None
    action: int = MOVE


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

    @fenced_off
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
                *fence_args(),
            )
            keys = [(r[0], r[1], r[2]) for r in rows]
            await self.timers.set_many(connection, keys, now)
        return keys

    # --- the runner's statement ---

    async def instances(self, keys: Sequence[InstanceKey]) -> dict[InstanceKey, tuple[Instance, int | None]]:
        """The instances of ``keys`` (those that exist), each with its campaign's state."""
        if not keys:
            return {}
        ordered = sorted(set(keys))
        rows = await self.pool.fetch(
            _INSTANCES,
            [k[0] for k in ordered],
            [k[1] for k in ordered],
            [k[2] for k in ordered],
        )
        found = [(Instance(*r[:-1]), r[-1]) for r in rows]
        return {i.key: (i, state) for i, state in found}

    @fenced_off
    async def advance(
        self, connection: Connection | asyncpg.Pool, steps: Sequence[Advance], now: dt.datetime
    ) -> dict[InstanceKey, str]:
        """Record the steps of a batch of instances in one statement (``_ADVANCE``): take their
        claimed timers, record their outcomes, move them on. Returns what came of each instance
        whose step was recorded (its timer taken), by key: ``go`` (on to ``move.next_step``, due
        at ``move.due_at``), ``held`` (the same, its campaign paused), ``end``, ``defer``,
        ``hold`` or ``drop`` (see ``_PLAN``); the others were left as they were. A key at most once."""
        if not steps:
            return {}
        ordered = sorted(steps, key=lambda a: a.key)
        columns: list[list[object]] = [[] for _ in range(13)]
        (
            customers, campaigns, entries, claimed, at_step, action,
            outcome, reason, next_step, due_at, waiting_event, variant, final_status,
        ) = columns  # fmt: skip
        for a in ordered:
            m = a.move
            customers.append(a.key[0])
            campaigns.append(a.key[1])
            entries.append(a.key[2])
            claimed.append(a.claimed)
            at_step.append(a.at_step)
            action.append(a.action)
            outcome.append(m.outcome)
            reason.append(m.reason)
            next_step.append(m.next_step)
            due_at.append(m.due_at)
            waiting_event.append(m.waiting_event)
            variant.append(m.variant)
            final_status.append(m.final_status)
        rows = await connection.fetch(_ADVANCE, *columns, now, *fence_args())
        return {(r[0], r[1], r[2]): r[3] for r in rows}

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
