"""The active campaigns of every replica, by trigger, and the journeys whose instances live
(active or paused), reloaded whenever any campaign changes."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.model import ACTIVE, CompiledCampaign, compile_campaign
from eventline_campaigns.polling import poll
from eventline_campaigns.repository import CampaignRepository, CampaignRow
from eventline_shared.values import EPOCH

log = logging.getLogger(__name__)


def compiled(row: CampaignRow) -> CompiledCampaign | None:
    """A stored campaign as the worker runs it; None unless it is active."""
    if row.state != ACTIVE or row.active_since is None:
        return None
    return compile_campaign(
        row.campaign_id, row.revision, campaigns_pb2.Campaign.FromString(row.spec), row.active_since
    )


class CampaignCache:
    """The active campaigns by trigger, reloaded whenever any campaign changes.

    Every replica polls the campaigns' highest revision (one index-only query)
    every ``poll_s``; a change therefore reaches every replica within about
    ``poll_s`` plus the reload time.
    """

    def __init__(self, repository: CampaignRepository, poll_s: float = 0.25) -> None:
        self.repository = repository
        self.poll_s = poll_s
        self._seen: tuple[int, int] | None = None
        self._compiled: dict[tuple[str, int], CompiledCampaign] = {}
        self._by_trigger: dict[tuple[int, str], list[CompiledCampaign]] = {}
        self._paused_journeys: list[CompiledCampaign] = []
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    def for_trigger(self, kind: int, name: str) -> list[CompiledCampaign]:
        return self._by_trigger.get((kind, name), [])

    def active(self, campaign_id: str) -> CompiledCampaign | None:
        """The campaign as cached, if it is active."""
        return next((c for c in self._compiled.values() if c.campaign_id == campaign_id), None)

    def journeys(self) -> list[CompiledCampaign]:
        """The journeys (campaigns with steps) whose instances live: the active ones, and the
        paused ones, whose instances are held but still exit, convert and hear awaited events."""
        return [c for c in self._compiled.values() if c.journey] + self._paused_journeys

    async def current(self, campaign_id: str) -> CompiledCampaign | None:
        """The campaign as stored now (not as cached), if it is active."""
        row = await self.repository.get_campaign(campaign_id)
        return compiled(row) if row is not None else None

    async def refresh(self) -> bool:
        """Reload when anything changed; returns whether it did."""
        async with self._lock:
            seen = await self.repository.campaigns_revision()
            if seen == self._seen:
                return False
            rows = await self.repository.live_campaigns()
            loaded: dict[tuple[str, int], CompiledCampaign] = {}
            by_trigger: dict[tuple[int, str], list[CompiledCampaign]] = defaultdict(list)
            paused: list[CompiledCampaign] = []
            for row in rows:
                if row.state != ACTIVE:
                    spec = campaigns_pb2.Campaign.FromString(row.spec)
                    if spec.steps:
                        try:
                            paused.append(
                                compile_campaign(
                                    row.campaign_id, row.revision, spec, row.active_since or EPOCH
                                )
                            )
                        except Exception:
                            log.exception("cannot compile campaign", extra={"campaign_id": row.campaign_id})
                    continue
                key = (row.campaign_id, row.revision)
                campaign = self._compiled.get(key)
                if campaign is None:
                    try:
                        campaign = compiled(row)
                        assert campaign is not None
                    except Exception:
                        log.exception("cannot compile campaign", extra={"campaign_id": row.campaign_id})
                        continue
                loaded[key] = campaign
                by_trigger[(campaign.kind, campaign.event_name)].append(campaign)
            self._compiled = loaded
            self._by_trigger = dict(by_trigger)
            self._paused_journeys = paused
            self._seen = seen
            log.info("campaigns loaded", extra={"active": len(loaded), "revision": seen[0]})
            return True

    async def run(self) -> None:
        await poll(self.refresh, self.poll_s, self._stop, "cannot reload campaigns")

    def shutdown(self) -> None:
        self._stop.set()
