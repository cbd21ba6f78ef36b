"""Deliveries, exactly once, step by step: plan → record → send → recover.

1. the deliveries of a trigger are planned (``planning.plan``: rendered or skipped) and
   written to the ledger in one transaction (``INSERT ... ON CONFLICT DO NOTHING`` on
   (customer, campaign, event, channel)), pending ones with a lease; the frequency caps
   (the campaign's own, and the caps across campaigns for a marketing campaign's messages:
   ``CampaignRepository.record`` with ``marketing``) are applied in that transaction, so
   every path that records deliveries (triggers, fan-outs, journey steps) passes them;
2. only rows this worker inserted (or whose lease expired: their sender crashed) are
   sent, each with its delivery id as the idempotency key;
3. the outcome is written back (sent / failed, or pending again with a later lease
   after a transient provider error);
4. only then is the stream entry acknowledged (by the consumer group).

A sender keeps what it holds: while it sends, the leases of its pending deliveries are
extended every third of the lease (``keep_alive``), and a batch is sent only
once its leases are confirmed its own (``CampaignRepository.extend_leases``: the row's
``lease_token`` unchanged, which also renews the lease), or right after the sender
recorded or took them over itself (less than ``FRESH_LEASE`` of the lease ago by its
monotonic clock: nobody can have taken them over since, and nine tenths of the lease at
least are left, where a confirmation would leave all of it); a delivery whose keepalive
found it taken over is not sent. Every take-over
increments the token, and an outcome is written only under the token it was sent with,
so a sender that stalled past its lease (a paused process) neither sends nor marks a
delivery another replica's ``recover`` took over.

A worker killed anywhere leaves either an unacknowledged entry (reprocessed by another
replica: the ledger makes it a no-op apart from taking over expired leases) or a
pending row with a lease (sent again, with the same idempotency key, once the lease
expires: ``Delivery.recover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace

from eventline_campaigns.channels import (
    BulkChannel,
    Channel,
    FileSink,
    PermanentError,
    TransientError,
    with_retries,
)
from eventline_campaigns.links import UnsubscribeLinks
from eventline_campaigns.model import (
    FAILED,
    MAX_REASON,
    PENDING,
    SENT,
    ChannelCap,
    ChannelNumber,
    Outcome,
    Owned,
    Planned,
)
from eventline_campaigns.planning import PlanItem, plan, suppressible
from eventline_campaigns.rendering import Rendering
from eventline_campaigns.repository import CampaignRepository, SuppressionRepository
from eventline_shared import faults

log = logging.getLogger(__name__)

MAX_RETRY_S = 60.0
"""The longest a delivery waits for its next try after a transient provider error."""

FRESH_LEASE = 0.1
"""The share of the lease within which a batch this sender has just recorded (or taken over) is
sent without confirming its leases again (one round trip less per batch of triggers)."""


class Delivery:
    """Plans, records and sends deliveries; sends again those whose sender crashed."""

    def __init__(
        self,
        repository: CampaignRepository,
        channels: Mapping[ChannelNumber, Channel],
        rendering: Rendering,
        *,
        lease_s: float = 60.0,
        send_attempts: int = 3,
        send_concurrency: int = 32,
        retry_base_s: float = 0.05,
        unsubscribe_links: UnsubscribeLinks | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.suppressions = SuppressionRepository(repository.pool)
        self.channels = channels
        self._bulk = {number: c for number, c in channels.items() if isinstance(c, BulkChannel)}
        """The channels that take many messages in one call."""
        self.rendering = rendering
        self.unsubscribe_links = unsubscribe_links
        self.lease_s = lease_s
        self.send_attempts = send_attempts
        self.max_calls = send_attempts * 5
        self.retry_base_s = retry_base_s
        self._monotonic = monotonic
        self._send_limit = asyncio.Semaphore(send_concurrency)
        self._in_flight: dict[int, Owned] = {}
        """The pending deliveries being sent, by delivery id: their leases are kept alive."""

    async def plan(self, items: Sequence[PlanItem]) -> list[list[Planned]]:
        """``planning.plan`` with the suppressions of the items' addresses (one query)."""
        suppressed = await self.suppressions.suppressed(suppressible(items))
        return await plan(self.rendering, items, suppressed, self.unsubscribe_links)

    async def deliver(self, items: Sequence[PlanItem], notes: Sequence[str] = ()) -> None:
        """Plan, record and send the deliveries of triggered campaigns to their customers.

        Campaigns with a frequency cap of their own have a transaction each (their customers
        are locked while their recent sends are counted). Of the others, the messages of
        marketing campaigns on channels capped across campaigns share one transaction (their
        customers locked while counted), and the rest one statement. The caps across
        campaigns are read once per call to choose (with the suppressions, one statement);
        the transaction reads them again and applies them.
        ``notes`` (one per item, when given) become the reason of the item's pending
        deliveries, kept once sent (a journey's quiet-hour deferral).
        """
        caps: list[ChannelCap] = []
        if any(not campaign.transactional for campaign, _, _, _ in items):
            # The caps come with the suppressions: one round trip per batch, as before caps.
            caps, suppressed = await self.repository.caps_and_suppressed(suppressible(items))
        else:
            suppressed = await self.suppressions.suppressed(suppressible(items))
        plans = await plan(self.rendering, items, suppressed, self.unsubscribe_links)
        capped_channels = {c.channel for c in caps}
        uncapped: list[tuple[str, str, Planned]] = []
        across: list[tuple[str, str, Planned]] = []
        capped = []
        if notes:
            plans = [
                [replace(p, reason=note) if note and p.status == PENDING else p for p in planned]
                for planned, note in zip(plans, notes, strict=True)
            ]
        for (campaign, trigger, _, _), planned in zip(items, plans, strict=True):
            if campaign.cap_max:
                capped.append(
                    self.repository.record(
                        campaign.campaign_id,
                        trigger.event.event_id,
                        planned,
                        lease_s=self.lease_s,
                        marketing=not campaign.transactional,
                        cap_max=campaign.cap_max,
                        cap_period_s=campaign.cap_period_s,
                    )
                )
                continue
            keyed = [(campaign.campaign_id, trigger.event.event_id, p) for p in planned]
            if not campaign.transactional and any(
                p.status == PENDING and p.channel in capped_channels for p in planned
            ):
                across += keyed
            else:
                uncapped += keyed
        leased_at = self._monotonic()
        recorded = await asyncio.gather(
            self.repository.record_many(uncapped, lease_s=self.lease_s),
            self.repository.record_many(across, lease_s=self.lease_s, marketing=True),
            *capped,
        )
        await self.send([replace(o, leased_at=leased_at) for batch in recorded for o in batch])

    async def send(self, owned: Sequence[Owned]) -> int:
        """Send the deliveries this worker holds and record the outcomes; returns how many were sent."""
        fresh = self._monotonic() - self.lease_s * FRESH_LEASE
        if not all(o.leased_at is not None and o.leased_at > fresh for o in owned):
            # Only what is still this sender's: a batch that waited past its lease may have been
            # taken over.
            held = await self.repository.extend_leases(owned, self.lease_s)
            owned = [o for o in owned if o.delivery_id in held]
        if not owned:
            return 0
        bulk: dict[BulkChannel, list[Owned]] = defaultdict(list)
        single: list[Owned] = []
        for item in owned:
            channel = self._bulk.get(item.channel)
            if channel is not None:
                bulk[channel].append(item)
            else:
                single.append(item)
        async with self._keeping(owned):
            singles, batches = await asyncio.gather(
                asyncio.gather(*(self._send_one(o) for o in single)),
                asyncio.gather(*(self._send_many(c, items) for c, items in bulk.items())),
            )
        tokens = {o.delivery_id: o.lease_token for o in owned}
        outcomes: list[Outcome] = [replace(o, lease_token=tokens[o.delivery_id]) for o in singles if o]
        for batch in batches:
            outcomes += [replace(o, lease_token=tokens[o.delivery_id]) for o in batch]
        await faults.point("campaigns.after_send")
        await self.repository.mark(outcomes)
        await self._forget_erased(owned)
        return sum(1 for o in outcomes if o.status == SENT)

    async def keep_alive(self) -> None:
        """Extend the leases of the deliveries being sent (what ``send`` does every third of the lease)."""
        held = await self.repository.extend_leases(list(self._in_flight.values()), self.lease_s)
        for delivery_id in set(self._in_flight) - held:
            # Taken over by another sender: its outcome will not be written by this one.
            self._in_flight.pop(delivery_id, None)

    @contextlib.asynccontextmanager
    async def _keeping(self, owned: Sequence[Owned]) -> AsyncIterator[None]:
        """Keep the leases of ``owned`` alive while the block runs."""
        self._in_flight.update((o.delivery_id, o) for o in owned)

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.lease_s / 3)
                try:
                    await self.keep_alive()
                except Exception as exc:  # the next round tries again; the fence still holds
                    log.warning("cannot extend delivery leases", extra={"error": repr(exc)[:300]})

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            for o in owned:
                self._in_flight.pop(o.delivery_id, None)

    async def recover(self, limit: int = 500) -> int:
        """Send pending deliveries whose sender crashed or whose provider was down; returns how many."""
        total = 0
        while True:
            owned = await self.repository.take_over_stale(limit, self.lease_s)
            if not owned:
                return total
            total += len(owned)
            await self.send(owned)
            if len(owned) < limit:
                return total

    async def _forget_erased(self, owned: Sequence[Owned]) -> None:
        """Remove the message files of deliveries whose customer was erased while they were sent."""
        sinks = {id(c): c for o in owned if isinstance(c := self.channels[o.channel], FileSink)}
        if not sinks:
            return
        written = [o.delivery_id for o in owned if isinstance(self.channels[o.channel], FileSink)]
        missing = await self.repository.missing_deliveries(written)
        if missing:
            for sink in sinks.values():
                await asyncio.to_thread(sink.forget, missing)

    def _retry_later(self, owned: Owned, calls: int, error: object) -> Outcome:
        """After transient errors: pending again with a backoff, or failed once the calls run out."""
        if owned.attempts + calls >= self.max_calls:
            return Outcome(
                owned.customer_id,
                owned.delivery_id,
                FAILED,
                f"provider unavailable: {error}"[:MAX_REASON],
                calls,
            )
        retry = min(MAX_RETRY_S, self.retry_base_s * 2 ** (owned.attempts + calls))
        return Outcome(
            owned.customer_id, owned.delivery_id, PENDING, f"retrying: {error}"[:MAX_REASON], calls, retry
        )

    async def _send_many(self, channel: BulkChannel, owned: Sequence[Owned]) -> list[Outcome]:
        """One call for many messages, for channels that take them so."""
        owned = [o for o in owned if o.delivery_id in self._in_flight]
        if not owned:
            return []
        errors = await channel.send_many([o.message for o in owned])
        return [
            Outcome(item.customer_id, item.delivery_id, SENT, "", 1)
            if error is None
            else self._retry_later(item, 1, error)
            for item, error in zip(owned, errors, strict=True)
        ]

    async def _send_one(self, owned: Owned) -> Outcome | None:
        """Send one message; None when its lease was taken over before the call."""
        channel = self.channels[owned.channel]
        calls = 0

        async def call() -> None:
            nonlocal calls
            calls += 1
            await channel.send(owned.message)

        async with self._send_limit:
            if owned.delivery_id not in self._in_flight:
                return None  # taken over while it waited for its turn
            try:
                await with_retries(call, self.send_attempts, self.retry_base_s)
            except PermanentError as exc:
                return Outcome(
                    owned.customer_id, owned.delivery_id, FAILED, f"provider: {exc}"[:MAX_REASON], calls
                )
            except TransientError as exc:
                return self._retry_later(owned, calls, exc)
            except Exception as exc:
                log.exception("channel failed", extra={"delivery_id": owned.delivery_id})
                return Outcome(
                    owned.customer_id,
                    owned.delivery_id,
                    PENDING,
                    f"retrying: {type(exc).__name__}",
                    calls,
                    self.lease_s,
                )
        return Outcome(owned.customer_id, owned.delivery_id, SENT, "", calls)
