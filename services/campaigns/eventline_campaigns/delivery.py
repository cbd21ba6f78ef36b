"""Deliveries, exactly once, step by step: plan → record → send → recover.

1. the deliveries of a trigger are planned (``planning.plan``: rendered or skipped) and
   written to the ledger in one transaction (``INSERT ... ON CONFLICT DO NOTHING`` on
   (customer, campaign, event, channel)), pending ones with a lease;
2. only rows this worker inserted (or whose lease expired: their sender crashed) are
   sent, each with its delivery id as the idempotency key;
3. the outcome is written back (sent / failed, or pending again with a later lease
   after a transient provider error);
4. only then is the stream entry acknowledged (by the consumer group).

A worker killed anywhere leaves either an unacknowledged entry (reprocessed by another
replica: the ledger makes it a no-op apart from taking over expired leases) or a
pending row with a lease (sent again, with the same idempotency key, once the lease
expires: ``Delivery.recover``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

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
        self._send_limit = asyncio.Semaphore(send_concurrency)

    async def plan(self, items: Sequence[PlanItem]) -> list[list[Planned]]:
        """``planning.plan`` with the suppressions of the items' addresses (one query)."""
        suppressed = await self.suppressions.suppressed(suppressible(items))
        return await plan(self.rendering, items, suppressed, self.unsubscribe_links)

    async def deliver(self, items: Sequence[PlanItem]) -> None:
        """Plan, record and send the deliveries of triggered campaigns to their customers.

        Campaigns without a frequency cap share one statement; each capped one has its
        own transaction (its customers are locked while their recent sends are counted).
        """
        uncapped: list[tuple[str, str, Planned]] = []
        capped = []
        for (campaign, trigger, _, _), planned in zip(items, await self.plan(items), strict=True):
            if campaign.cap_max:
                capped.append(
                    self.repository.record(
                        campaign.campaign_id,
                        trigger.event.event_id,
                        planned,
                        lease_s=self.lease_s,
                        cap_max=campaign.cap_max,
                        cap_period_s=campaign.cap_period_s,
                    )
                )
            else:
                uncapped += [(campaign.campaign_id, trigger.event.event_id, p) for p in planned]
        recorded = await asyncio.gather(self.repository.record_many(uncapped, lease_s=self.lease_s), *capped)
        await self.send([owned for batch in recorded for owned in batch])

    async def send(self, owned: Sequence[Owned]) -> int:
        """Send the deliveries this worker holds and record the outcomes; returns how many were sent."""
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
        singles, batches = await asyncio.gather(
            asyncio.gather(*(self._send_one(o) for o in single)),
            asyncio.gather(*(self._send_many(c, items) for c, items in bulk.items())),
        )
        outcomes: list[Outcome] = list(singles)
        for batch in batches:
            outcomes += batch
        await faults.point("campaigns.after_send")
        await self.repository.mark(outcomes)
        await self._forget_erased(owned)
        return sum(1 for o in outcomes if o.status == SENT)

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
        errors = await channel.send_many([o.message for o in owned])
        return [
            Outcome(item.customer_id, item.delivery_id, SENT, "", 1)
            if error is None
            else self._retry_later(item, 1, error)
            for item, error in zip(owned, errors, strict=True)
        ]

    async def _send_one(self, owned: Owned) -> Outcome:
        channel = self.channels[owned.channel]
        calls = 0

        async def call() -> None:
            nonlocal calls
            calls += 1
            await channel.send(owned.message)

        async with self._send_limit:
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
