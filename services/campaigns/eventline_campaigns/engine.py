"""What the stream's events set going: triggered campaigns, their audience, then delivery.

A customer event triggers the active campaigns of its name whose predicates hold on
it (``CampaignCache``, ``CompiledCampaign.triggered_by``); segmentation says whether
the customer is in each one's audience; ``Delivery`` plans, records and sends. A system
event fans each triggered campaign out to its whole audience (``FanOut``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventline.common.v1 import common_pb2

from eventline_campaigns.audience import Audience, AudienceUnresolvable
from eventline_campaigns.campaign_cache import CampaignCache
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.fanout import FanOut, Keepalive, nothing
from eventline_campaigns.model import CUSTOMER_TRIGGER, MAX_REASON, SYSTEM_TRIGGER, CompiledCampaign, Trigger
from eventline_campaigns.repository import CampaignRepository
from eventline_shared.values import timestamp_to_datetime

if TYPE_CHECKING:
    from eventline_campaigns.journeys import JourneyRunner


class Engine:
    """Handles trigger events: records and sends their deliveries (no knowledge of the stream)."""

    def __init__(
        self,
        repository: CampaignRepository,
        cache: CampaignCache,
        audience: Audience,
        delivery: Delivery,
        *,
        fanout_batch: int = 1000,
        journeys: JourneyRunner | None = None,
    ) -> None:
        self.repository = repository
        self.cache = cache
        self.audience = audience
        self.delivery = delivery
        self.fan_out = FanOut(delivery, cache, audience, batch=fanout_batch)
        self.journeys = journeys
        """Runs the campaigns that have steps; None where journeys do not run (tools)."""

    async def handle_customer_events(self, events: Sequence[common_pb2.Event]) -> None:
        """Record and send the deliveries of a batch of customer events; enter customers into
        triggered journeys, then move on the journey instances these events concern (an
        instance entered by an event of the batch sees the later ones)."""
        await self._trigger(events)
        if self.journeys is not None and self.cache.journeys():
            await self.journeys.handle_events(events)

    async def _trigger(self, events: Sequence[common_pb2.Event]) -> None:
        pairs: list[tuple[CompiledCampaign, Trigger]] = []
        for event in events:
            received = timestamp_to_datetime(event.received_at)
            campaigns = [
                c
                for c in self.cache.for_trigger(CUSTOMER_TRIGGER, event.name)
                if c.triggered_by(event, received)
            ]
            if campaigns:
                trigger = Trigger.of(event)
                pairs += [(c, trigger) for c in campaigns]
        if not pairs:
            return
        verdicts = await asyncio.gather(*(self._in_audience(c, t) for c, t in pairs))
        wanted = [(c, t, reason) for (c, t), (inside, reason) in zip(pairs, verdicts, strict=True) if inside]
        if self.journeys is not None:
            # A journey is entered by the customers of its audience (a skip reason: not entered).
            entering = [(c, t) for c, t, reason in wanted if c.journey and not reason]
            wanted = [(c, t, reason) for c, t, reason in wanted if not c.journey]
            if entering:
                await self.journeys.enter(entering)
        if not wanted:
            return
        profiles = await self.repository.profiles(sorted({t.event.customer_id for _, t, _ in wanted}))
        # A customer erased meanwhile has no profile: nothing to deliver, nothing to keep.
        await self.delivery.deliver(
            [
                (campaign, trigger, profiles[trigger.event.customer_id], reason)
                for campaign, trigger, reason in wanted
                if trigger.event.customer_id in profiles
            ]
        )

    async def _in_audience(self, campaign: CompiledCampaign, trigger: Trigger) -> tuple[bool, str]:
        """(whether to record deliveries, skip reason) for one customer."""
        if campaign.audience is None:
            return True, ""
        try:
            matched = await self.audience.match(
                campaign.audience,
                trigger.event.customer_id,
                trigger.event.context,
                trigger.event.occurred_at,
                trigger_event_id=trigger.event.event_id,
            )
        except AudienceUnresolvable as exc:
            return True, f"audience cannot be evaluated: {exc}"[:MAX_REASON]
        return matched, ""

    async def handle_system_event(self, event: common_pb2.Event, keepalive: Keepalive = nothing) -> None:
        """Fan each campaign the system event triggers out to its audience, one after the other."""
        received = timestamp_to_datetime(event.received_at)
        for campaign in self.cache.for_trigger(SYSTEM_TRIGGER, event.name):
            if campaign.triggered_by(event, received):
                await self.fan_out.run(campaign, event, keepalive)
