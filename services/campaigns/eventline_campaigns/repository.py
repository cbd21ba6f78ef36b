"""All SQL of the campaign service, with bind parameters only."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import ParamSpec, TypeVar

import asyncpg
from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.model import (
    ACTIVE,
    ARCHIVED,
    DRAFT,
    EMAIL,
    MAX_REASON,
    PAUSED,
    PENDING,
    QUIET_HOURS,
    SENT,
    SKIPPED,
    SMS,
    SUPPRESSIBLE,
    CampaignChanged,
    CampaignState,
    ChannelCap,
    ChannelNumber,
    DeliveryStatus,
    Message,
    Outcome,
    Owned,
    Planned,
    Profile,
    channel_cap_reason,
    normal_address,
)
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.storage.database import Connection
from eventline_shared.streams.consumer_group import Fence, PartitionTakenOver
from eventline_shared.streams.group_commit import GroupCommit

# Enum values the statements compare with are written into their text, from the protos'
# names, when this module loads (never from a request): a parameter instead would keep
# PostgreSQL from using the partial indexes that name them (``deliveries_pending`` is
# ``WHERE status = 1``, ``delivery_events_soft_bounces`` ``WHERE kind = 3``).
_PENDING = int(PENDING)
_SOFT_BOUNCE = int(campaigns_pb2.DELIVERY_EVENT_KIND_BOUNCED_SOFT)
_SOFT_BOUNCES_REASON = campaigns_pb2.SUPPRESSION_REASON_SOFT_BOUNCES

# --- campaigns ---------------------------------------------------------------

_CAMPAIGN_COLUMNS = "campaign_id, display_name, state, spec, revision, created_at, updated_at, active_since"


@dataclass(frozen=True)
class CampaignRow:
    campaign_id: str
    display_name: str
    state: CampaignState
    spec: bytes
    revision: int
    created_at: dt.datetime
    updated_at: dt.datetime
    active_since: dt.datetime | None


def _campaign(row: asyncpg.Record) -> CampaignRow:
    return CampaignRow(*row)


@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: int
    campaign_id: str
    event_id: str
    customer_id: str
    channel: ChannelNumber
    status: DeliveryStatus
    reason: str
    attempts: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Fanout:
    after_customer_id: str
    """The highest customer id among the fan-out's deliveries: where it goes on."""
    done: bool


# --- the partition fence ---

BATCH_FENCE: ContextVar[Fence | None] = ContextVar("BATCH_FENCE", default=None)
"""The fence of the stream batch being handled (``CampaignHandler.handle`` sets it for the
batch's tasks): the ledger's recording statements check it, so that a replica that lost the
batch's partition records nothing more of it. None outside a leased batch (nothing checked)."""

_FENCE_REFUSED = "EL409"
"""The SQLSTATE ``eventline_partition_fence`` raises (migration 0292)."""


def fence_check(first: int) -> str:
    """Common table expressions that fence a recording statement, which gates its rows with
    ``WHERE (SELECT ok FROM holds)``: the partition's fence row locked FOR SHARE until the
    statement's transaction ends (a take-over's raise waits for it) and the batch's token checked
    against it, once (an InitPlan that raises when it is stale). ``$first`` the partition (NULL:
    nothing to check), the next parameter the token (``fence_args``)."""
    partition, token = f"${first}", f"${first + 1}"
    return f"""fence AS (SELECT token FROM partition_fences WHERE partition_key = {partition} FOR SHARE),
holds AS (SELECT eventline_partition_fence({partition}::text, {token}::bigint, (SELECT token FROM fence)) AS ok)"""


# No row returned: the token was $2 already (kept). The row is locked either way.
_RAISE_FENCE = """
INSERT INTO partition_fences AS f (partition_key, token) VALUES ($1, 1)
ON CONFLICT (partition_key) DO UPDATE SET token = f.token + 1, updated_at = now()
    WHERE f.token IS DISTINCT FROM $2::bigint
RETURNING token
"""


def fence_args() -> tuple[str | None, int | None]:
    """The batch's fence as a fenced statement's parameters (``fence_check``)."""
    fence = BATCH_FENCE.get()
    return (fence.partition, fence.token) if fence is not None else (None, None)


P = ParamSpec("P")
R = TypeVar("R")


def fenced_off(
    record: Callable[P, Coroutine[object, object, R]],
) -> Callable[P, Coroutine[object, object, R]]:
    """``record`` with the fence's refusal translated: the partition was taken over
    (``PartitionTakenOver``), the transaction rolled back."""

    @functools.wraps(record)
    async def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await record(*args, **kwargs)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _FENCE_REFUSED:
                raise PartitionTakenOver(str(exc)) from exc
            raise

    return checked


_RECORD = f"""
WITH {fence_check(9)}
INSERT INTO deliveries (customer_id, campaign_id, event_id, channel, status, reason, message, lease_until)
SELECT t.customer_id, $1, $2, t.channel, t.status, t.reason, t.message,
       CASE WHEN t.status = {PENDING:d} THEN now() + $8 * interval '1 second' END
FROM unnest($3::text[], $4::smallint[], $5::smallint[], $6::text[], $7::jsonb[])
    AS t(customer_id, channel, status, reason, message)
WHERE (SELECT ok FROM holds)
ORDER BY t.customer_id, t.channel
ON CONFLICT DO NOTHING
RETURNING delivery_id, customer_id, channel, status, attempts
"""

_TAKE_OVER = f"""
UPDATE deliveries SET lease_until = now() + $4 * interval '1 second', lease_token = lease_token + 1,
    updated_at = now()
WHERE customer_id = ANY($3::text[]) AND campaign_id = $1 AND event_id = $2
  AND status = {PENDING:d} AND lease_until < now()
RETURNING delivery_id, customer_id, channel, status, message::text, attempts, lease_token
"""

_RECORD_MANY = f"""
WITH {fence_check(9)}
INSERT INTO deliveries (customer_id, campaign_id, event_id, channel, status, reason, message, lease_until)
SELECT t.customer_id, t.campaign_id, t.event_id, t.channel, t.status, t.reason, t.message,
       CASE WHEN t.status = {PENDING:d} THEN now() + $8 * interval '1 second' END
FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[], $5::smallint[], $6::text[], $7::jsonb[])
    AS t(campaign_id, event_id, customer_id, channel, status, reason, message)
WHERE (SELECT ok FROM holds)
ORDER BY t.customer_id, t.campaign_id, t.event_id, t.channel
ON CONFLICT DO NOTHING
RETURNING delivery_id, customer_id, campaign_id, event_id, channel, status, attempts
"""

_TAKE_OVER_MANY = f"""
UPDATE deliveries d SET lease_until = now() + $4 * interval '1 second', lease_token = d.lease_token + 1,
    updated_at = now()
FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::text[], $3::text[]) AS t(campaign_id, event_id, customer_id)) t
WHERE d.customer_id = t.customer_id AND d.campaign_id = t.campaign_id AND d.event_id = t.event_id
  AND d.status = {PENDING:d} AND d.lease_until < now()
RETURNING d.delivery_id, d.customer_id, d.channel, d.status, d.message::text, d.attempts, d.lease_token
"""

_TAKE_OVER_STALE = f"""
UPDATE deliveries d SET lease_until = now() + $2 * interval '1 second', lease_token = d.lease_token + 1,
    updated_at = now()
FROM (
    SELECT customer_id, campaign_id, event_id, channel FROM deliveries
    WHERE status = {PENDING:d} AND lease_until < now()
    ORDER BY lease_until LIMIT $1
    FOR UPDATE SKIP LOCKED
) stale
WHERE (d.customer_id, d.campaign_id, d.event_id, d.channel)
    = (stale.customer_id, stale.campaign_id, stale.event_id, stale.channel)
RETURNING d.delivery_id, d.customer_id, d.channel, d.status, d.message::text, d.attempts, d.lease_token
"""

_LOCK_CUSTOMERS = """
SELECT count(pg_advisory_xact_lock(hashtext($1), hashtext(c)))
FROM (SELECT c FROM unnest($2::text[]) AS c ORDER BY c) AS sorted
"""

_RECENT_SENDS = """
SELECT customer_id,
       count(*) FILTER (WHERE event_id <> $3 AND sent_at > $5::timestamptz - $4 * interval '1 second') AS recent,
       bool_or(event_id = $3) AS counted
FROM campaign_sends
WHERE customer_id = ANY($2::text[]) AND campaign_id = $1
GROUP BY customer_id
"""

_COUNT_SENDS = """
INSERT INTO campaign_sends (customer_id, campaign_id, event_id, sent_at)
SELECT c, $1, $2, $4::timestamptz FROM unnest($3::text[]) AS c ORDER BY c
ON CONFLICT DO NOTHING
"""

# Caps across campaigns: one lock per customer whatever the campaign (a bigint key, apart
# from the (campaign, customer) pairs of the per-campaign caps), taken in id order.
_LOCK_CHANNEL_CUSTOMERS = """
SELECT count(pg_advisory_xact_lock(hashtextextended('channel-cap:' || c, 0)))
FROM (SELECT c FROM unnest($1::text[]) AS c ORDER BY c) AS sorted
"""

_CHANNEL_CAPS = "SELECT channel, max_sends, window_s FROM channel_caps ORDER BY channel"

# The suppressed ones among (channel, normal address) pairs, with their reason.
_SUPPRESSED = """
SELECT channel, address, reason FROM suppressions
WHERE (channel, address) IN (SELECT * FROM unnest($1::smallint[], $2::text[]))
"""

# The caps across campaigns (address NULL) and the suppressed pairs, in one round trip: what a
# batch of triggers reads before it is planned.
_CAPS_AND_SUPPRESSED = f"""
SELECT channel, NULL::text AS address, max_sends, window_s FROM channel_caps
UNION ALL
SELECT channel, address, reason, NULL FROM ({_SUPPRESSED}) AS suppressed
ORDER BY 1
"""

# A customer's counted messages on the capped channels within the longest window.
_CHANNEL_SENDS_WITHIN = """
SELECT customer_id, channel, campaign_id, event_id, sent_at FROM channel_sends
WHERE customer_id = ANY($1::text[]) AND channel = ANY($2::smallint[])
  AND sent_at > $3::timestamptz - $4 * interval '1 second'
"""

_COUNT_CHANNEL_SENDS = """
WITH expired AS (
    DELETE FROM channel_sends
    WHERE customer_id = ANY($1::text[]) AND sent_at <= $5::timestamptz - $6 * interval '1 second'
)
INSERT INTO channel_sends (customer_id, channel, campaign_id, event_id, sent_at)
SELECT t.customer_id, t.channel, t.campaign_id, t.event_id, $5::timestamptz
FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[]) AS t(customer_id, channel, campaign_id, event_id)
ORDER BY t.customer_id, t.channel, t.campaign_id, t.event_id
ON CONFLICT DO NOTHING
"""

_MARK = f"""
UPDATE deliveries AS d SET
    status = u.status,
    -- A journey's quiet-hour deferral stays the reason of the message it deferred.
    reason = CASE WHEN u.status = {SENT:d} AND d.reason LIKE '{QUIET_HOURS}%' THEN d.reason ELSE u.reason END,
    attempts = d.attempts + u.calls,
    message = CASE WHEN u.status = {PENDING:d} THEN d.message END,
    lease_until = CASE WHEN u.status = {PENDING:d} THEN now() + u.retry_s * interval '1 second' END,
    updated_at = now()
FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::text[], $5::int[], $6::float8[], $7::bigint[])
    AS u(customer_id, delivery_id, status, reason, calls, retry_s, lease_token)
WHERE d.customer_id = u.customer_id AND d.delivery_id = u.delivery_id AND d.status = {PENDING:d}
  AND d.lease_token = u.lease_token
"""

_EXTEND = f"""
UPDATE deliveries AS d SET lease_until = now() + $4 * interval '1 second', updated_at = now()
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(customer_id, delivery_id, lease_token)
WHERE d.customer_id = u.customer_id AND d.delivery_id = u.delivery_id AND d.status = {PENDING:d}
  AND d.lease_token = u.lease_token
RETURNING d.delivery_id
"""


Key = tuple[object, ...]
"""A delivery's key in the ledger, or the part of it a statement varies."""
T = TypeVar("T")


def _taken_over(rows: Sequence[asyncpg.Record]) -> list[Owned]:
    """Pending deliveries whose lease this worker took over: their message is the ledger's copy."""
    return [
        Owned(
            r["delivery_id"],
            r["customer_id"],
            r["channel"],
            Message.from_json(r["delivery_id"], r["channel"], r["message"]),
            r["attempts"],
            r["lease_token"],
        )
        for r in rows
        if r["status"] == PENDING
    ]


def _inserted(rows: Sequence[asyncpg.Record], messages: Mapping[Key, Message], *key: str) -> list[Owned]:
    """The pending deliveries among rows this worker inserted, with the messages it rendered
    (``messages`` by the row's ``key`` columns): what was just built is not read back."""
    owned = []
    for r in rows:
        if r["status"] == PENDING:
            message = replace(messages[tuple(r[k] for k in key)], delivery_id=r["delivery_id"])
            owned.append(Owned(r["delivery_id"], r["customer_id"], r["channel"], message, r["attempts"]))
    return owned


def _firsts(items: Iterable[tuple[Key, T]]) -> dict[Key, T]:
    """The first item of each ledger key: the ledger keeps one row per key (a later one of
    the same batch would be dropped by ``ON CONFLICT DO NOTHING`` anyway)."""
    found: dict[Key, T] = {}
    for key, item in items:
        found.setdefault(key, item)
    return found


def _json(planned: Planned) -> str | None:
    return planned.message.to_json() if planned.message is not None else None


class CampaignRepository:
    def __init__(self, pool: asyncpg.Pool, clock: Clock = SYSTEM_CLOCK) -> None:
        self.pool = pool
        self.clock = clock
        """Frequency caps count sends at, and look back from, this clock's now."""

    # --- campaigns ---

    async def create_campaign(
        self, campaign_id: str, display_name: str, spec: bytes
    ) -> tuple[CampaignRow, bool]:
        """The stored campaign and whether this call created it."""
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(
                f"""
                INSERT INTO campaigns (campaign_id, display_name, state, spec)
                VALUES ($1, $2, {DRAFT:d}, $3) ON CONFLICT DO NOTHING
                RETURNING {_CAMPAIGN_COLUMNS}
                """,
                campaign_id,
                display_name,
                spec,
            )
            if row is not None:
                return _campaign(row), True
            existing = await connection.fetchrow(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE campaign_id = $1", campaign_id
            )
            assert existing is not None
            return _campaign(existing), False

    async def get_campaign(self, campaign_id: str) -> CampaignRow | None:
        row = await self.pool.fetchrow(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE campaign_id = $1", campaign_id
        )
        return _campaign(row) if row else None

    async def list_campaigns(
        self, limit: int, after: tuple[dt.datetime, str] | None, states: list[int], max_bytes: int
    ) -> list[CampaignRow]:
        """Up to ``limit`` campaigns, newest first, stopping after the first that starts past ``max_bytes``.

        The byte bound (of the stored campaign, counted without reading it) keeps a page of
        large campaigns from loading hundreds of them.
        """
        rows = await self.pool.fetch(
            f"""
            SELECT {_CAMPAIGN_COLUMNS} FROM (
                SELECT {_CAMPAIGN_COLUMNS},
                       sum(size) OVER (ORDER BY created_at DESC, campaign_id DESC) - size AS before
                FROM (
                    SELECT {_CAMPAIGN_COLUMNS}, octet_length(spec) + octet_length(display_name) AS size
                    FROM campaigns
                    WHERE (cardinality($1::smallint[]) = 0 OR state = ANY($1::smallint[]))
                      AND ($2::timestamptz IS NULL OR (created_at, campaign_id) < ($2, $3))
                    ORDER BY created_at DESC, campaign_id DESC
                    LIMIT $4
                ) AS sized
            ) AS counted
            WHERE before <= $5
            ORDER BY created_at DESC, campaign_id DESC
            """,
            states,
            after[0] if after else None,
            after[1] if after else "",
            limit,
            max_bytes,
        )
        return [_campaign(r) for r in rows]

    async def update_campaign(self, campaign_id: str, display_name: str, spec: bytes) -> CampaignRow | None:
        """Store new fields unless the campaign is archived; None when it does not exist."""
        row = await self.pool.fetchrow(
            f"""
            UPDATE campaigns SET display_name = $2, spec = $3, updated_at = now(),
                revision = nextval('campaign_revisions')
            WHERE campaign_id = $1 AND state <> {ARCHIVED:d}
            RETURNING {_CAMPAIGN_COLUMNS}
            """,
            campaign_id,
            display_name,
            spec,
        )
        return _campaign(row) if row else None

    async def set_state(self, campaign_id: str, allowed_from: list[int], state: int) -> CampaignRow | None:
        """Move to ``state`` when the current state is in ``allowed_from``; None otherwise."""
        row = await self.pool.fetchrow(
            f"""
            UPDATE campaigns SET state = $3::smallint, updated_at = now(),
                revision = nextval('campaign_revisions'),
                active_since = CASE WHEN $3::smallint = {ACTIVE:d} THEN now() ELSE active_since END
            WHERE campaign_id = $1 AND state = ANY($2::smallint[])
            RETURNING {_CAMPAIGN_COLUMNS}
            """,
            campaign_id,
            allowed_from,
            state,
        )
        return _campaign(row) if row else None

    async def campaigns_revision(self) -> tuple[int, int]:
        """(highest revision, number of campaigns): changes whenever any campaign changes."""
        row = await self.pool.fetchrow("SELECT coalesce(max(revision), 0), count(*) FROM campaigns")
        assert row is not None
        return row[0], row[1]

    async def live_campaigns(self) -> list[CampaignRow]:
        """The active and the paused campaigns (a paused journey's instances still hear its exit
        and goal events, and the events they wait for)."""
        rows = await self.pool.fetch(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE state IN ({ACTIVE:d}, {PAUSED:d})"
        )
        return [_campaign(r) for r in rows]

    # --- customers ---

    async def profiles(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        rows = await self.pool.fetch(
            """
            SELECT customer_id, email, phone, push_tokens, attributes::text,
                   email_consent, sms_consent, push_consent
            FROM customers WHERE customer_id = ANY($1::text[])
            """,
            list(customer_ids),
        )
        return {r[0]: Profile(*r) for r in rows}

    async def all_customers_after(self, after: str, limit: int) -> list[str]:
        """Every customer, in id order, after ``after``: the audience of a campaign without a filter."""
        rows = await self.pool.fetch(
            "SELECT customer_id FROM customers WHERE customer_id > $1 ORDER BY customer_id LIMIT $2",
            after,
            limit,
        )
        return [r[0] for r in rows]

    # --- the ledger ---

    @fenced_off
    async def record(
        self,
        campaign_id: str,
        event_id: str,
        planned: Sequence[Planned],
        *,
        lease_s: float,
        marketing: bool,
        cap_max: int = 0,
        cap_period_s: float = 0.0,
        fanout: bool = False,
        revision: int | None = None,
    ) -> list[Owned]:
        """Record ``planned`` deliveries in one transaction; returns the pending ones to send now.

        A repeated (customer, campaign, event, channel) keeps its first row;
        its pending row is returned only when its previous sender's lease has
        expired (that sender crashed). With a frequency cap, customers are
        locked (transaction advisory locks in id order) and those over the cap
        get skipped rows instead of pending ones. With ``fanout`` the
        fan-out's progress counts the batch. With ``revision``
        nothing is recorded (``CampaignChanged``) unless the campaign is active
        at that revision; its row is locked (FOR SHARE) until commit, so a
        pause, archive or update on any replica either waits for this batch or
        is seen by it. A ``marketing`` campaign's messages pass the caps across
        campaigns (``_within_channel_caps``) in the same transaction.
        """
        planned = list(planned)
        customers = sorted({p.customer_id for p in planned})
        async with self.pool.acquire() as connection, connection.transaction():
            if revision is not None:
                current = await connection.fetchrow(
                    "SELECT state, revision FROM campaigns WHERE campaign_id = $1 FOR SHARE", campaign_id
                )
                if current is None or current["state"] != ACTIVE or current["revision"] != revision:
                    raise CampaignChanged(
                        current["state"] if current else 0, current["revision"] if current else 0
                    )
            now = self.clock.now()
            if cap_max and customers:
                await connection.fetchval(_LOCK_CUSTOMERS, campaign_id, customers)
                sends = {
                    r["customer_id"]: (r["recent"], r["counted"])
                    for r in await connection.fetch(
                        _RECENT_SENDS, campaign_id, customers, event_id, cap_period_s, now
                    )
                }
                capped = {c for c, (recent, counted) in sends.items() if not counted and recent >= cap_max}
                if capped:
                    planned = [
                        Planned(
                            p.customer_id,
                            p.channel,
                            SKIPPED,
                            f"frequency cap: {cap_max} sends per period",
                            None,
                        )
                        if p.customer_id in capped and p.status == PENDING
                        else p
                        for p in planned
                    ]
            caps: dict[ChannelNumber, ChannelCap] = {}
            if marketing:
                checked, caps = await self._within_channel_caps(
                    connection, [(campaign_id, event_id, p) for p in planned], now
                )
                planned = [p for _, _, p in checked]
            if cap_max and customers:
                sending = sorted({p.customer_id for p in planned if p.status == PENDING})
                if sending:
                    await connection.execute(_COUNT_SENDS, campaign_id, event_id, sending, now)
            firsts = _firsts(((p.customer_id, p.channel), p) for p in planned)
            unique = list(firsts.values())
            rows = await connection.fetch(
                _RECORD,
                campaign_id,
                event_id,
                [p.customer_id for p in unique],
                [p.channel for p in unique],
                [p.status for p in unique],
                [p.reason for p in unique],
                [_json(p) for p in unique],
                lease_s,
                *fence_args(),
            )
            await self._count_channel_sends(connection, rows, caps, now, campaign_id, event_id)
            messages = {key: p.message for key, p in firsts.items() if p.message is not None}
            owned = _inserted(rows, messages, "customer_id", "channel")
            if len(rows) < len(unique):
                taken = await connection.fetch(_TAKE_OVER, campaign_id, event_id, customers, lease_s)
                owned += _taken_over(taken)
            if fanout:
                await connection.execute(
                    """
                    UPDATE campaign_fanouts SET recorded = recorded + $3, updated_at = now()
                    WHERE campaign_id = $1 AND event_id = $2
                    """,
                    campaign_id,
                    event_id,
                    len(rows),
                )
        return owned

    async def _within_channel_caps(
        self, connection: Connection, items: list[tuple[str, str, Planned]], now: dt.datetime
    ) -> tuple[list[tuple[str, str, Planned]], dict[ChannelNumber, ChannelCap]]:
        """(campaign id, event id, delivery) ``items`` of marketing campaigns, with the messages
        over a cap across campaigns skipped; and the caps whose messages ``_count_channel_sends``
        counts once recorded (none when nothing is capped).

        The customers are locked (one transaction advisory lock each, the same for every
        campaign, in id order) until the transaction ends, while their messages within each
        capped channel's window are counted, the items' in order (an earlier item of the
        batch counts against a later one): replicas sending one customer several campaigns at
        once take turns, so the cap holds exactly. A trigger counted before (a redelivered
        stream entry, a resumed fan-out) is not counted twice and keeps its delivery.
        """
        caps = {r[0]: ChannelCap(r[0], r[1], r[2]) for r in await connection.fetch(_CHANNEL_CAPS)}
        capped = [p for _, _, p in items if p.status == PENDING and p.channel in caps]
        if not capped:
            return items, {}
        customers = sorted({p.customer_id for p in capped})
        await connection.fetchval(_LOCK_CHANNEL_CUSTOMERS, customers)
        rows = await connection.fetch(
            _CHANNEL_SENDS_WITHIN, customers, list(caps), now, max(c.window_s for c in caps.values())
        )
        counted = {(r["customer_id"], r["channel"], r["campaign_id"], r["event_id"]) for r in rows}
        sent: dict[tuple[str, ChannelNumber], list[tuple[dt.datetime, Key]]] = defaultdict(list)
        for r in rows:
            sent[r["customer_id"], r["channel"]].append(
                (r["sent_at"], (r["customer_id"], r["channel"], r["campaign_id"], r["event_id"]))
            )
        checked = []
        for campaign_id, event_id, p in items:
            key = (p.customer_id, p.channel, campaign_id, event_id)
            if p.status == PENDING and p.channel in caps and key not in counted:
                cap = caps[p.channel]
                since = now - dt.timedelta(seconds=cap.window_s)
                if sum(1 for at, _ in sent[p.customer_id, p.channel] if at > since) >= cap.max_sends:
                    p = Planned(p.customer_id, p.channel, SKIPPED, channel_cap_reason(cap), None)
                else:
                    counted.add(key)
                    sent[p.customer_id, p.channel].append((now, key))
            checked.append((campaign_id, event_id, p))
        return checked, caps

    async def _count_channel_sends(
        self,
        connection: Connection,
        recorded: Sequence[asyncpg.Record],
        caps: Mapping[ChannelNumber, ChannelCap],
        now: dt.datetime,
        campaign_id: str = "",
        event_id: str = "",
    ) -> None:
        """Count against the caps the messages this transaction recorded as pending (rows
        returned by the ledger's insert; ``campaign_id`` and ``event_id`` when they are not
        columns). A delivery recorded before (a redelivered trigger) was counted then, or skipped."""
        if not caps:
            return
        counting = sorted(
            {
                (r["customer_id"], r["channel"], campaign_id or r["campaign_id"], event_id or r["event_id"])
                for r in recorded
                if r["status"] == PENDING and r["channel"] in caps
            }
        )
        if counting:
            await connection.execute(
                _COUNT_CHANNEL_SENDS,
                [k[0] for k in counting],
                [k[1] for k in counting],
                [k[2] for k in counting],
                [k[3] for k in counting],
                now,
                max(c.window_s for c in caps.values()),
            )

    async def channel_caps(self) -> list[ChannelCap]:
        """The caps across campaigns, in channel order."""
        return [ChannelCap(r[0], r[1], r[2]) for r in await self.pool.fetch(_CHANNEL_CAPS)]

    async def caps_and_suppressed(
        self, addresses: Sequence[tuple[ChannelNumber, str]]
    ) -> tuple[list[ChannelCap], dict[tuple[ChannelNumber, str], int]]:
        """``channel_caps`` and ``SuppressionRepository.suppressed`` of ``addresses`` in one statement
        (a batch of triggers reads both before planning: one round trip, not two)."""
        rows = await self.pool.fetch(
            _CAPS_AND_SUPPRESSED, [c for c, _ in addresses], [a for _, a in addresses]
        )
        caps = [ChannelCap(r[0], r[2], r[3]) for r in rows if r[1] is None]
        return caps, {(r[0], r[1]): r[2] for r in rows if r[1] is not None}

    async def set_channel_caps(self, caps: Sequence[ChannelCap]) -> list[ChannelCap]:
        """Set the caps given (``max_sends`` 0 removes the channel's); returns every cap."""
        keep = [c for c in caps if c.max_sends > 0]
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "DELETE FROM channel_caps WHERE channel = ANY($1::smallint[])",
                [c.channel for c in caps if c.max_sends == 0],
            )
            await connection.execute(
                """
                INSERT INTO channel_caps (channel, max_sends, window_s)
                SELECT * FROM unnest($1::smallint[], $2::int[], $3::float8[])
                ON CONFLICT (channel) DO UPDATE SET max_sends = excluded.max_sends,
                    window_s = excluded.window_s, updated_at = now()
                """,
                [c.channel for c in keep],
                [c.max_sends for c in keep],
                [c.window_s for c in keep],
            )
            rows = await connection.fetch(_CHANNEL_CAPS)
        return [ChannelCap(r[0], r[1], r[2]) for r in rows]

    @fenced_off
    async def record_many(
        self, items: Sequence[tuple[str, str, Planned]], *, lease_s: float, marketing: bool = False
    ) -> list[Owned]:
        """``record`` for many (campaign id, event id, delivery) at once, for campaigns without a
        frequency cap of their own (``Delivery.deliver`` chooses).

        Without ``marketing``, one statement (no explicit transaction): the hot path of
        customer-event triggers, where a stream batch holds many events; no cap across
        campaigns applies (transactional campaigns, or no capped channel). With it, one
        transaction that applies the caps across campaigns (``_within_channel_caps``) first.
        """
        if not items:
            return []
        if not marketing:
            return await self._record_many(self.pool, items, lease_s)
        async with self.pool.acquire() as connection, connection.transaction():
            now = self.clock.now()
            checked, caps = await self._within_channel_caps(connection, list(items), now)
            return await self._record_many(connection, checked, lease_s, caps, now)

    async def _record_many(
        self,
        connection: Connection | asyncpg.Pool,
        items: Sequence[tuple[str, str, Planned]],
        lease_s: float,
        caps: Mapping[ChannelNumber, ChannelCap] | None = None,
        now: dt.datetime | None = None,
    ) -> list[Owned]:
        firsts = _firsts(((c, e, p.customer_id, p.channel), (c, e, p)) for c, e, p in items)
        unique = list(firsts.values())
        rows = await connection.fetch(
            _RECORD_MANY,
            [c for c, _, _ in unique],
            [e for _, e, _ in unique],
            [p.customer_id for _, _, p in unique],
            [p.channel for _, _, p in unique],
            [p.status for _, _, p in unique],
            [p.reason for _, _, p in unique],
            [_json(p) for _, _, p in unique],
            lease_s,
            *fence_args(),
        )
        if caps and now is not None and not isinstance(connection, asyncpg.Pool):
            await self._count_channel_sends(connection, rows, caps, now)
        messages = {key: p.message for key, (_, _, p) in firsts.items() if p.message is not None}
        owned = _inserted(rows, messages, "campaign_id", "event_id", "customer_id", "channel")
        if len(rows) < len(unique):
            taken = await connection.fetch(
                _TAKE_OVER_MANY,
                [c for c, _, _ in unique],
                [e for _, e, _ in unique],
                [p.customer_id for _, _, p in unique],
                lease_s,
            )
            owned += _taken_over(taken)
        return owned

    async def raise_fence(self, partition: str, held: int | None = None) -> int:
        """A take-over of stream ``partition``: its fencing token, one more than the previous
        owner's, which every recording statement of that owner's batches finds from now on (and
        fails). Waits for the previous owner's recording transactions in progress (they hold the
        row FOR SHARE). When ``held`` (the token this replica had before) is still the current
        one, nobody fenced the partition since: it is kept, and this replica's batches in flight
        (a lease lost to a stall and taken again, no other owner between) go on."""
        token: int | None = await self.pool.fetchval(_RAISE_FENCE, partition, held)
        if token is None:
            assert held is not None
            return held
        return token

    async def take_over_stale(self, limit: int, lease_s: float) -> list[Owned]:
        """Pending deliveries whose sender's lease expired (it crashed or the provider was down)."""
        rows = await self.pool.fetch(_TAKE_OVER_STALE, limit, lease_s)
        return _taken_over(rows)

    async def mark(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        await self.pool.execute(
            _MARK,
            [o.customer_id for o in outcomes],
            [o.delivery_id for o in outcomes],
            [o.status for o in outcomes],
            [o.reason for o in outcomes],
            [o.calls for o in outcomes],
            [o.retry_in_s for o in outcomes],
            [o.lease_token for o in outcomes],
        )

    async def extend_leases(self, owned: Sequence[Owned], lease_s: float) -> set[int]:
        """Extend the leases this worker still holds (its token unchanged); returns their delivery ids."""
        if not owned:
            return set()
        rows = await self.pool.fetch(
            _EXTEND,
            [o.customer_id for o in owned],
            [o.delivery_id for o in owned],
            [o.lease_token for o in owned],
            lease_s,
        )
        return {r[0] for r in rows}

    # --- fan-out progress ---

    async def start_fanout(self, campaign_id: str, event_id: str) -> Fanout:
        """Start or resume a fan-out. Its cursor is derived from the ledger rather than stored, so
        that no row outlives the erasure of the customer it would name (the ledger's rows go with
        the customer): a fan-out whose last customer was erased resumes a little earlier, and
        the ledger's unique key makes the repeated customers no-ops."""
        async with self.pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO campaign_fanouts (campaign_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                campaign_id,
                event_id,
            )
            done = await connection.fetchval(
                "SELECT done FROM campaign_fanouts WHERE campaign_id = $1 AND event_id = $2",
                campaign_id,
                event_id,
            )
            after = await connection.fetchval(
                "SELECT coalesce(max(customer_id), '') FROM deliveries WHERE event_id = $2 AND campaign_id = $1",
                campaign_id,
                event_id,
            )
        return Fanout(after, bool(done))

    async def finish_fanout(self, campaign_id: str, event_id: str) -> None:
        await self.pool.execute(
            "UPDATE campaign_fanouts SET done = true, updated_at = now() WHERE campaign_id = $1 AND event_id = $2",
            campaign_id,
            event_id,
        )

    # --- erasure ---

    async def erasures(self) -> int:
        """How many customer erasures there have been (it changes with each one)."""
        return int(await self.pool.fetchval("SELECT erasures FROM customer_erasures"))

    async def missing_deliveries(self, delivery_ids: Sequence[int]) -> set[int]:
        """The ids among ``delivery_ids`` that neither the ledger nor the test deliveries hold
        (their customer was erased)."""
        if not delivery_ids:
            return set()
        rows = await self.pool.fetch(
            """
            SELECT delivery_id FROM deliveries WHERE delivery_id = ANY($1::bigint[])
            UNION ALL
            SELECT test_delivery_id FROM test_deliveries WHERE test_delivery_id = ANY($1::bigint[])
            """,
            list(delivery_ids),
        )
        return set(delivery_ids) - {r[0] for r in rows}

    # --- reading the ledger ---

    async def list_deliveries(
        self, parent: str, value: str, before: int | None, limit: int
    ) -> list[DeliveryRow]:
        column = {"campaign_id": "campaign_id", "customer_id": "customer_id", "event_id": "event_id"}[parent]
        # The column name comes from the fixed table above, never from the request.
        rows = await self.pool.fetch(
            f"""
            SELECT delivery_id, campaign_id, event_id, customer_id, channel, status, reason, attempts,
                   created_at, updated_at
            FROM deliveries
            WHERE {column} = $1 AND ($2::bigint IS NULL OR delivery_id < $2)
            ORDER BY {column}, delivery_id DESC
            LIMIT $3
            """,
            value,
            before,
            limit,
        )
        return [DeliveryRow(*r) for r in rows]

    async def stats(self, campaign_id: str) -> list[tuple[DeliveryStatus, str, int]]:
        rows = await self.pool.fetch(
            "SELECT status, reason, count(*) FROM deliveries WHERE campaign_id = $1 GROUP BY status, reason",
            campaign_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]


# --- test sends ------------------------------------------------------------------


class TestDeliveryRepository:
    """The record of test sends (``test_deliveries``): apart from the ledger, its stats and caps."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def start(
        self, campaign_id: str, step_id: str, channel: ChannelNumber, address: str, sample_customer_id: str
    ) -> tuple[int, dt.datetime]:
        """Record a test send about to be made (pending): its id (the provider's idempotency
        key) and creation time."""
        row = await self.pool.fetchrow(
            f"""
            INSERT INTO test_deliveries (campaign_id, step_id, channel, address, sample_customer_id, status)
            VALUES ($1, $2, $3, $4, $5, {PENDING:d}) RETURNING test_delivery_id, created_at
            """,
            campaign_id,
            step_id,
            channel,
            address,
            sample_customer_id,
        )
        assert row is not None
        return row[0], row[1]

    async def finish(self, test_delivery_id: int, status: DeliveryStatus, reason: str) -> None:
        """Record how a test send ended."""
        await self.pool.execute(
            "UPDATE test_deliveries SET status = $2, reason = $3 WHERE test_delivery_id = $1",
            test_delivery_id,
            status,
            reason,
        )


# --- suppressions and provider reports ----------------------------------------


@dataclass(frozen=True)
class SuppressionRow:
    channel: ChannelNumber
    address: str
    reason: campaigns_pb2.SuppressionReason
    detail: str
    delivery_id: int | None
    created_at: dt.datetime


_SUPPRESSION_COLUMNS = "channel, address, reason, detail, delivery_id, created_at"


@dataclass(frozen=True)
class Report:
    """A provider's report about a delivery, as ``RecordDeliveryEvents`` received it."""

    delivery_id: int
    kind: campaigns_pb2.DeliveryEventKind
    occurred_at: dt.datetime | None
    detail: str
    provider_event_id: str | None
    recipient: str


@dataclass(frozen=True)
class Recorded:
    recorded: int
    unmatched: int
    duplicates: int
    suppressed: int


@dataclass(frozen=True)
class ReportRow:
    delivery_id: int
    kind: campaigns_pb2.DeliveryEventKind
    occurred_at: dt.datetime
    detail: str
    provider_event_id: str | None
    address: str


_REPORTED_DELIVERIES = f"""
SELECT d.delivery_id, d.customer_id, d.channel,
       CASE d.channel WHEN {EMAIL:d} THEN c.email WHEN {SMS:d} THEN c.phone ELSE '' END AS address
FROM deliveries d JOIN customers c USING (customer_id)
WHERE d.delivery_id = ANY($1::bigint[])
"""

_RECORD_REPORTS = """
INSERT INTO delivery_events (delivery_id, customer_id, channel, address, kind, occurred_at, detail, provider_event_id)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::smallint[], $4::text[], $5::smallint[],
                     $6::timestamptz[], $7::text[], $8::text[])
ON CONFLICT (customer_id, provider_event_id) WHERE provider_event_id IS NOT NULL DO NOTHING
RETURNING delivery_id, channel, address, kind, detail
"""

_SUPPRESS = """
INSERT INTO suppressions (channel, address, reason, detail, delivery_id)
SELECT * FROM unnest($1::smallint[], $2::text[], $3::smallint[], $4::text[], $5::bigint[])
ON CONFLICT DO NOTHING
"""

_SOFT_BOUNCES = f"""
SELECT channel, address, count(*) FROM delivery_events
WHERE kind = {_SOFT_BOUNCE:d} AND occurred_at > now() - $3 * interval '1 second'
  AND (channel, address) IN (SELECT * FROM unnest($1::smallint[], $2::text[]))
GROUP BY channel, address
"""


REQUEST_KEY_TTL_S = 86400.0
"""How long the key of a signed request is remembered (replays within it are refused)."""

# Oldest first along seen_requests_expiry, which stops at the first key still remembered, then
# each key by the primary key: as a plain IN (…LIMIT 100), a table without statistics (or with
# none since its keys started expiring) was read whole, twice, to find no expired key (seq scans
# growing with the day's callbacks).
_FORGET_EXPIRED_REQUESTS = """
DELETE FROM seen_requests WHERE request_key = ANY(ARRAY(
    SELECT request_key FROM seen_requests WHERE expires_at < now()
    ORDER BY expires_at LIMIT 100 FOR UPDATE SKIP LOCKED
))
"""

# A key is new when it was never seen or its row has expired; a few expired rows go each time.
_SEE_REQUEST = """
WITH expired AS (
    DELETE FROM seen_requests WHERE request_key IN (
        SELECT request_key FROM seen_requests WHERE expires_at < now()
        ORDER BY expires_at LIMIT 10 FOR UPDATE SKIP LOCKED
    ) AND request_key <> $1
)
INSERT INTO seen_requests (request_key, expires_at) VALUES ($1, now() + $2 * interval '1 second')
ON CONFLICT (request_key) DO UPDATE SET expires_at = excluded.expires_at
    WHERE seen_requests.expires_at < now()
RETURNING true
"""


# The common case in one statement: reports that suppress nothing (delivered, opened,
# clicked) of several requests (a group commit), each request's key checked on its own,
# the reports of the requests whose key is new matched to their deliveries and recorded.
# Keys go in sorted, and reports in provider event id order, so that concurrent statements
# (of this process or of other replicas) take their row locks in one order.
_RECORD_PLAIN_REPORTS = f"""
WITH keys AS (
    SELECT k.request_key, k.r FROM unnest($8::text[]) WITH ORDINALITY AS k(request_key, r)
), seen AS (
    INSERT INTO seen_requests (request_key, expires_at)
    SELECT request_key, now() + $9 * interval '1 second' FROM keys WHERE request_key <> ''
    ORDER BY request_key
    ON CONFLICT (request_key) DO UPDATE SET expires_at = excluded.expires_at
        WHERE seen_requests.expires_at < now()
    RETURNING request_key
), allowed AS (
    SELECT r FROM keys WHERE request_key = '' OR request_key IN (SELECT request_key FROM seen)
), matched AS (
    SELECT t.n, t.delivery_id, d.customer_id, d.channel, t.kind, t.occurred_at, t.detail, t.provider_event_id,
           CASE d.channel WHEN {EMAIL:d} THEN lower(btrim(coalesce(nullif(t.recipient, ''), c.email)))
                          WHEN {SMS:d} THEN btrim(coalesce(nullif(t.recipient, ''), c.phone))
                          ELSE t.recipient END AS address
    FROM unnest($1::bigint[], $2::smallint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int[])
         WITH ORDINALITY AS t(delivery_id, kind, occurred_at, detail, provider_event_id, recipient, r, n)
    -- One index probe per report (deliveries_by_id), whatever the planner guesses of the
    -- arrays' length or the ledger's size: as a join, a ledger without statistics yet (just
    -- loaded) or a generic plan's guess of the arrays' length gave a scan of every delivery.
    -- A delivery id is unique (one sequence), so LIMIT 1 changes no result.
    CROSS JOIN LATERAL (
        SELECT customer_id, channel FROM deliveries WHERE deliveries.delivery_id = t.delivery_id LIMIT 1
    ) AS d
    JOIN customers c ON c.customer_id = d.customer_id
    WHERE t.r IN (SELECT r FROM allowed)
), inserted AS (
    INSERT INTO delivery_events
        (delivery_id, customer_id, channel, address, kind, occurred_at, detail, provider_event_id)
    SELECT delivery_id, customer_id, channel, address, kind, coalesce(occurred_at, now()), detail,
           nullif(provider_event_id, '')
    FROM matched ORDER BY customer_id, provider_event_id, n
    ON CONFLICT (customer_id, provider_event_id) WHERE provider_event_id IS NOT NULL DO NOTHING
    RETURNING customer_id, provider_event_id
)
SELECT ARRAY(SELECT r FROM allowed), ARRAY(SELECT n FROM matched ORDER BY n),
       ARRAY(SELECT customer_id FROM matched ORDER BY n),
       ARRAY(SELECT customer_id FROM inserted WHERE provider_event_id IS NOT NULL ORDER BY 1),
       ARRAY(SELECT provider_event_id FROM inserted WHERE provider_event_id IS NOT NULL ORDER BY customer_id)
"""

PLAIN_REPORTS_PER_STATEMENT = 2000
"""The most reports one group-commit statement carries (whole requests only)."""


def _plain(reports: Sequence[Report], reasons: dict[int, int]) -> bool:
    """Whether reports suppress nothing (delivered, opened, clicked): the group commit's kind."""
    return not any(r.kind in reasons or r.kind == _SOFT_BOUNCE for r in reports)


class Replayed(Exception):
    """The request key was seen before: the request is a replay."""


class SuppressionRepository:
    """Suppressed addresses, provider reports and the soft-bounce count, with bind parameters only."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._plain: GroupCommit[tuple[Sequence[Report], str], Recorded | None] = GroupCommit(
            self._record_plain_requests,
            size=lambda request: len(request[0]),
            max_size=PLAIN_REPORTS_PER_STATEMENT,
        )

    async def suppressed(
        self, addresses: Sequence[tuple[ChannelNumber, str]]
    ) -> dict[tuple[ChannelNumber, str], int]:
        """The suppressed ones among (channel, normal address) pairs, with their reason."""
        if not addresses:
            return {}
        rows = await self.pool.fetch(_SUPPRESSED, [c for c, _ in addresses], [a for _, a in addresses])
        return {(r[0], r[1]): r[2] for r in rows}

    async def page(
        self, channel: int, before: tuple[dt.datetime, int, str] | None, limit: int
    ) -> list[SuppressionRow]:
        rows = await self.pool.fetch(
            f"""
            SELECT {_SUPPRESSION_COLUMNS} FROM suppressions
            WHERE ($1::smallint = 0 OR channel = $1)
              AND ($2::timestamptz IS NULL OR (created_at, channel, address) < ($2, $3, $4))
            ORDER BY created_at DESC, channel DESC, address DESC
            LIMIT $5
            """,
            channel,
            before[0] if before else None,
            before[1] if before else 0,
            before[2] if before else "",
            limit,
        )
        return [SuppressionRow(*r) for r in rows]

    async def add(self, channel: int, address: str, reason: int, detail: str) -> SuppressionRow:
        """Suppress by hand; the stored row (an earlier one wins)."""
        async with self.pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO suppressions (channel, address, reason, detail) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING",
                channel,
                address,
                reason,
                detail,
            )
            row = await connection.fetchrow(
                f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE channel = $1 AND address = $2",
                channel,
                address,
            )
        assert row is not None
        return SuppressionRow(*row)

    async def remove(self, channel: int, address: str) -> bool:
        """Lift a suppression; whether there was one. The address's soft bounces stop counting
        (their kind is negated: they still show on their deliveries), so the next one does not
        suppress it again at once."""
        async with self.pool.acquire() as connection, connection.transaction():
            removed = await connection.fetchval(
                "DELETE FROM suppressions WHERE channel = $1 AND address = $2 RETURNING true",
                channel,
                address,
            )
            await connection.execute(
                f"UPDATE delivery_events SET kind = -kind WHERE kind = {_SOFT_BOUNCE:d} AND channel = $1 AND address = $2",
                channel,
                address,
            )
        return bool(removed)

    async def record_reports(
        self,
        reports: Sequence[Report],
        *,
        soft_limit: int,
        soft_window_s: float,
        reasons: dict[int, int],
        request_key: str = "",
    ) -> Recorded:
        """Record reports on their deliveries and suppress what they call for, in one transaction.

        ``reasons`` maps a report kind that suppresses at once (hard bounce, complaint)
        to its suppression reason; soft bounces suppress after ``soft_limit`` within
        ``soft_window_s`` (reason ``SUPPRESSION_REASON_SOFT_BOUNCES``). A ``request_key`` seen within
        ``REQUEST_KEY_TTL_S`` raises ``Replayed`` and records nothing.
        """
        if _plain(reports, reasons):
            return await self._record_plain_reports(reports, request_key)
        async with self.pool.acquire() as connection, connection.transaction():
            if request_key and not await connection.fetchval(_SEE_REQUEST, request_key, REQUEST_KEY_TTL_S):
                raise Replayed()
            found = {
                r["delivery_id"]: r
                for r in await connection.fetch(
                    _REPORTED_DELIVERIES, sorted({r.delivery_id for r in reports})
                )
            }
            matched = [r for r in reports if r.delivery_id in found]
            now = await connection.fetchval("SELECT now()")
            columns: list[list[object]] = [[] for _ in range(8)]
            for report in matched:
                delivery = found[report.delivery_id]
                address = normal_address(delivery["channel"], report.recipient or delivery["address"] or "")
                values = (
                    report.delivery_id,
                    delivery["customer_id"],
                    delivery["channel"],
                    address,
                    report.kind,
                    report.occurred_at or now,
                    report.detail,
                    report.provider_event_id,
                )
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
            inserted = await connection.fetch(_RECORD_REPORTS, *columns) if matched else []
            suppress: dict[tuple[int, str], tuple[int, str, int]] = {}
            soft: set[tuple[int, str]] = set()
            for row in inserted:
                key = (row["channel"], row["address"])
                if not key[1] or row["channel"] not in SUPPRESSIBLE:
                    continue
                if row["kind"] in reasons:
                    suppress.setdefault(key, (reasons[row["kind"]], row["detail"], row["delivery_id"]))
                elif row["kind"] == _SOFT_BOUNCE:
                    soft.add(key)
            if soft:
                for channel, address, count in await connection.fetch(
                    _SOFT_BOUNCES, [c for c, _ in soft], [a for _, a in soft], soft_window_s
                ):
                    if count >= soft_limit:
                        last = next(
                            r
                            for r in reversed(inserted)
                            if (r["channel"], r["address"]) == (channel, address)
                        )
                        suppress.setdefault(
                            (channel, address),
                            (
                                _SOFT_BOUNCES_REASON,
                                f"{count} soft bounces: {last['detail']}"[:MAX_REASON],
                                last["delivery_id"],
                            ),
                        )
            suppressed = 0
            if suppress:
                keys = sorted(suppress)
                status = await connection.execute(
                    _SUPPRESS,
                    [c for c, _ in keys],
                    [a for _, a in keys],
                    [suppress[k][0] for k in keys],
                    [suppress[k][1] for k in keys],
                    [suppress[k][2] for k in keys],
                )
                suppressed = int(status.split()[-1])
        return Recorded(len(inserted), len(reports) - len(matched), len(matched) - len(inserted), suppressed)

    async def record_requests(
        self,
        requests: Sequence[tuple[Sequence[Report], str]],
        *,
        soft_limit: int,
        soft_window_s: float,
        reasons: dict[int, int],
    ) -> list[Recorded | None]:
        """``record_reports`` for each of several provider requests (reports, request key),
        None for a replay. The requests whose reports suppress nothing go into the group
        commit together (one statement for all of them and whatever else is queued, not a
        statement for the first and another for the rest); the others are recorded as
        ``record_reports`` does, each in its own transaction, meanwhile."""
        outcomes: list[Recorded | None] = [None] * len(requests)
        plain = [i for i, (reports, _) in enumerate(requests) if _plain(reports, reasons)]
        others = [i for i, (reports, _) in enumerate(requests) if not _plain(reports, reasons)]

        async def record_plain() -> None:
            for i, outcome in zip(
                plain, await self._plain.submit_many([requests[i] for i in plain]), strict=True
            ):
                outcomes[i] = outcome

        async def record_other(i: int) -> None:
            reports, key = requests[i]
            try:
                outcomes[i] = await self.record_reports(
                    reports,
                    soft_limit=soft_limit,
                    soft_window_s=soft_window_s,
                    reasons=reasons,
                    request_key=key,
                )
            except Replayed:
                outcomes[i] = None

        if others:
            await asyncio.gather(record_plain(), *(record_other(i) for i in others))
        else:
            await record_plain()
        return outcomes

    async def _record_plain_reports(self, reports: Sequence[Report], request_key: str) -> Recorded:
        """Reports that suppress nothing: one statement shared with the concurrent requests."""
        recorded = await self._plain.submit((reports, request_key))
        if recorded is None:
            raise Replayed()
        return recorded

    async def _record_plain_requests(
        self, requests: list[tuple[Sequence[Report], str]]
    ) -> list[Recorded | None]:
        """Record the plain reports of several requests in one statement; for each request
        what it recorded, or None for a replay (its key seen before, nothing recorded).

        A key repeated within the group is a replay after its first request, whatever that
        one's outcome; of reports with one provider event id, the first one is recorded."""
        firsts: dict[str, int] = {}
        keys: list[str] = []
        for index, (_, key) in enumerate(requests):
            if key and key in firsts:
                keys.append("")  # not in the statement: answered as a replay below
            else:
                firsts.setdefault(key, index)
                keys.append(key)
        columns: list[list[object]] = [[] for _ in range(7)]
        owners: list[int] = []
        for index, (reports, key) in enumerate(requests):
            if key and firsts[key] != index:
                continue
            for report in reports:
                values = (
                    report.delivery_id,
                    report.kind,
                    report.occurred_at,
                    report.detail,
                    report.provider_event_id or "",
                    report.recipient,
                    index + 1,
                )
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
                owners.append(index)
        row = await self.pool.fetchrow(_RECORD_PLAIN_REPORTS, *columns, keys, REQUEST_KEY_TTL_S)
        assert row is not None
        allowed, matched, customers = {r - 1 for r in row[0]}, row[1], row[2]
        # Provider event ids are unique per customer (the ledger is distributed by customer).
        inserted_ids = set(zip(row[3], row[4], strict=True))
        counts = [[0, 0] for _ in requests]  # matched, inserted
        for n, customer_id in zip(matched, customers, strict=True):
            owner = owners[n - 1]
            event_id = columns[4][n - 1]
            counts[owner][0] += 1
            if not event_id:
                counts[owner][1] += 1
            elif (customer_id, event_id) in inserted_ids:
                inserted_ids.discard((customer_id, event_id))
                counts[owner][1] += 1
        if any(key for _, key in requests) and random.random() < 0.01:
            await self.pool.execute(_FORGET_EXPIRED_REQUESTS)
        return [
            Recorded(inserted, len(reports) - found, found - inserted, 0)
            if index in allowed and not (key and firsts[key] != index)
            else None
            for index, ((reports, key), (found, inserted)) in enumerate(zip(requests, counts, strict=True))
        ]

    async def reports(self, delivery_ids: Sequence[int], per_delivery: int) -> dict[int, list[ReportRow]]:
        """The first ``per_delivery`` reports of each delivery, oldest first."""
        if not delivery_ids:
            return {}
        rows = await self.pool.fetch(
            """
            SELECT delivery_id, abs(kind), occurred_at, detail, provider_event_id, address FROM (
                SELECT *, row_number() OVER (PARTITION BY delivery_id ORDER BY occurred_at, recorded_at) AS n
                FROM delivery_events WHERE delivery_id = ANY($1::bigint[])
            ) AS numbered
            WHERE n <= $2 ORDER BY delivery_id, n
            """,
            list(delivery_ids),
            per_delivery,
        )
        found: dict[int, list[ReportRow]] = {}
        for r in rows:
            found.setdefault(r[0], []).append(ReportRow(*r))
        return found

    async def report_stats(self, campaign_id: str) -> dict[int, int]:
        """Sent deliveries of a campaign with at least one report of each kind."""
        rows = await self.pool.fetch(
            """
            SELECT abs(e.kind), count(DISTINCT e.delivery_id) FROM delivery_events e
            JOIN deliveries d USING (delivery_id)
            WHERE d.campaign_id = $1
            GROUP BY abs(e.kind)
            """,
            campaign_id,
        )
        return {r[0]: r[1] for r in rows}
