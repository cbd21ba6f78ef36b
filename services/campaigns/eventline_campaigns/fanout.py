"""A system event's campaign delivered to its whole audience, batch by batch, resumably."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from eventline.common.v1 import common_pb2

from eventline_campaigns.audience import Audience, AudienceUnresolvable
from eventline_campaigns.campaign_cache import CampaignCache
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.model import CampaignChanged, CompiledCampaign, Owned, Trigger
from eventline_shared.values import timestamp_to_datetime

log = logging.getLogger(__name__)

Keepalive = Callable[[], Awaitable[None]]
"""Called after each batch: the consumer group's sign that the entry is still being handled."""

CAPPED_BATCH = 200
"""Fan-out batch size of a campaign with a frequency cap (one advisory lock per customer)."""

PHASES = ("audience", "profiles", "render", "record", "send_wait")
"""Where a fan-out spends its time, logged at its end."""


async def nothing() -> None:
    """A keepalive that does nothing."""
    return None


class FanOut:
    """Delivers system events' campaigns to their audiences (``run``), resuming where a crash left off.

    Resumable: the cursor is the last customer in the ledger (whose rows are written in one
    transaction per batch), and the audience is evaluated at the event's occurred_at, so a
    restarted fan-out continues with the same audience, skipping nobody and repeating nobody.

    Changes of the campaign apply at once, on every replica: each batch is recorded only if
    the campaign, read in that transaction (and locked against a concurrent change), is still
    active at the revision the batch was rendered with. After an update the fan-out goes on
    from its cursor with the new revision (re-rendering the batch it had rendered); after a
    pause or archive (or an update after which the event no longer triggers the campaign) it
    stops for good. Deliveries recorded before the change are still sent: at most the two
    batches in the pipeline.
    """

    def __init__(
        self, delivery: Delivery, cache: CampaignCache, audience: Audience, *, batch: int = 1000
    ) -> None:
        self.delivery = delivery
        self.repository = delivery.repository
        self.cache = cache
        self.audience = audience
        self.batch = batch

    async def run(
        self, campaign: CompiledCampaign, event: common_pb2.Event, keepalive: Keepalive = nothing
    ) -> int:
        """Deliver the campaign to its audience; returns how many deliveries were sent."""
        received = timestamp_to_datetime(event.received_at)
        spent = dict.fromkeys(PHASES, 0.0)
        sent = 0
        outcome = "done"
        while True:
            progress = await self.repository.start_fanout(campaign.campaign_id, event.event_id)
            if progress.done:
                return sent
            try:
                sent += await FanOutPass(self, campaign, event, keepalive, spent).run(
                    progress.after_customer_id
                )
                break
            except CampaignChanged as change:
                sent += change.sent
                latest = await self.cache.current(campaign.campaign_id)
                if latest is None or not latest.triggered_by(event, received):
                    outcome = "stopped: the campaign was paused, archived or no longer triggered by the event"
                    break
                log.info(
                    "campaign changed during its fan-out; going on with the new revision",
                    extra={"campaign_id": campaign.campaign_id, "revision": latest.revision},
                )
                campaign = latest
        await self.repository.finish_fanout(campaign.campaign_id, event.event_id)
        log.info(
            "fan-out " + outcome.split(":")[0],
            extra={
                "campaign_id": campaign.campaign_id,
                "event_id": event.event_id,
                "sent": sent,
                "outcome": outcome,
                **{f"{phase}_s": round(seconds, 3) for phase, seconds in spent.items()},
            },
        )
        return sent

    async def audience_batches(
        self, campaign: CompiledCampaign, event: common_pb2.Event, after: str
    ) -> AsyncGenerator[list[str], None]:
        """The campaign's audience in customer id order after ``after``, a batch at a time."""
        size = self.batch
        if campaign.cap_max:
            # Each customer of a capped batch holds an advisory lock until commit; PostgreSQL's
            # shared lock table is small (max_locks_per_transaction x connections).
            size = min(size, CAPPED_BATCH)
        if campaign.audience is None:
            while True:
                batch = await self.repository.all_customers_after(after, size)
                if not batch:
                    return
                yield batch
                after = batch[-1]
        else:
            async for chunk in self.audience.stream(
                campaign.audience, event.context, event.occurred_at, after, size
            ):
                for start in range(0, len(chunk), size):
                    yield chunk[start : start + size]


@dataclass
class FanOutPass:
    """One pass of a fan-out from a cursor, at one revision of the campaign.

    A pipeline: batch k+1 is rendered while batch k is recorded and batch k-1 is sent.
    Ledger writes stay strictly in order (each advances the resumable cursor).
    """

    fan_out: FanOut
    campaign: CompiledCampaign
    event: common_pb2.Event
    keepalive: Keepalive
    spent: dict[str, float]
    """Seconds spent by phase (``PHASES``), over every pass of the fan-out."""
    sent: int = 0
    recording: asyncio.Task[list[Owned]] | None = None
    """The batch being recorded."""
    sending: asyncio.Task[int] | None = None
    """The batch being sent."""
    _mark: float = field(init=False, default_factory=lambda: asyncio.get_running_loop().time())

    @property
    def delivery(self) -> Delivery:
        return self.fan_out.delivery

    def lap(self, phase: str) -> None:
        """Count the time since the last lap as spent in ``phase``."""
        now = asyncio.get_running_loop().time()
        self.spent[phase] += now - self._mark
        self._mark = now

    async def run(self, after: str) -> int:
        """Deliver to the audience after ``after``; returns how many deliveries were sent.

        Raises ``CampaignChanged`` (carrying what it sent) when the campaign changed.
        """
        campaign, event = self.campaign, self.event
        trigger = Trigger.of(event)
        try:
            async with aclosing(self.fan_out.audience_batches(campaign, event, after)) as batches:
                async for batch in batches:
                    self.lap("audience")
                    profiles = await self.fan_out.repository.profiles(batch)
                    self.lap("profiles")
                    items = [(campaign, trigger, profiles[c], "") for c in batch if c in profiles]
                    planned = [p for deliveries in await self.delivery.plan(items) for p in deliveries]
                    self.lap("render")
                    await self._hand_over()
                    self.recording = asyncio.create_task(
                        self.fan_out.repository.record(
                            campaign.campaign_id,
                            event.event_id,
                            planned,
                            lease_s=self.delivery.lease_s,
                            cap_max=campaign.cap_max,
                            cap_period_s=campaign.cap_period_s,
                            fanout=True,
                            revision=campaign.revision,
                            marketing=not campaign.transactional,
                        )
                    )
                    await self.keepalive()
            await self._hand_over()
            await self._sent_previous()
            self.lap("send_wait")
        except AudienceUnresolvable as exc:
            log.warning(
                "system event audience cannot be evaluated",
                extra={"campaign_id": campaign.campaign_id, "event_id": event.event_id, "error": str(exc)},
            )
        except CampaignChanged as change:
            if self.sending is not None:
                finished = (await asyncio.gather(self.sending, return_exceptions=True))[0]
                self.sent += finished if isinstance(finished, int) else 0
                self.sending = None
            change.sent = self.sent
            raise
        finally:
            # Interrupted (an error of the audience stream or of a later batch): what was
            # recorded is ours to send, now rather than when its lease expires.
            if self.recording is not None:
                recorded = (await asyncio.gather(self.recording, return_exceptions=True))[0]
                if isinstance(recorded, list):
                    await asyncio.gather(self.delivery.send(recorded), return_exceptions=True)
            if self.sending is not None:
                await asyncio.gather(self.sending, return_exceptions=True)
        return self.sent

    async def _sent_previous(self) -> None:
        """Wait for the batch being sent; count what it sent."""
        if self.sending is not None:
            self.sent += await self.sending
            self.sending = None

    async def _hand_over(self) -> None:
        """Once the batch being recorded is recorded, send it (after the one being sent)."""
        if self.recording is None:
            return
        owned = await self.recording
        self.lap("record")
        await self._sent_previous()
        self.sending = asyncio.create_task(self.delivery.send(owned))
        self.recording = None  # only now: until it is being sent, ``run`` sends it when interrupted
        self.lap("send_wait")
