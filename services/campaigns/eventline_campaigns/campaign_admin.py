"""What the API does with campaigns: create, update through a field mask, the state machine, previews.

The servicer validates a request, calls one method here and maps the result to its reply;
nothing here knows of gRPC (errors are ``eventline_shared.errors``, carrying their code).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2

from eventline_campaigns import validation
from eventline_campaigns.audience import Audience
from eventline_campaigns.campaign_cache import CampaignCache
from eventline_campaigns.journey_model import send_step_action
from eventline_campaigns.journey_store import JourneyStore
from eventline_campaigns.model import (
    ACTIVE,
    ARCHIVED,
    DRAFT,
    PAUSED,
    CampaignState,
    Planned,
    Trigger,
    compile_campaign,
)
from eventline_campaigns.planning import plan
from eventline_campaigns.rendering import Rendering
from eventline_campaigns.repository import CampaignRepository, CampaignRow
from eventline_campaigns.templates import Limits
from eventline_shared import field_masks
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    ResourceExhausted,
    quote,
    raise_if_any,
)
from eventline_shared.paging import MAX_REPLY_BYTES
from eventline_shared.values import datetime_to_timestamp

UPDATABLE = frozenset(
    {
        "display_name",
        "trigger",
        "audience",
        "actions",
        "frequency_cap",
        "transactional",
        "steps",
        "entry_rule",
        "exit_event",
        "goal",
        "default_time_zone",
        "quiet_hours",
    }
)
"""The fields UpdateCampaign's mask may name."""
OUTPUT_ONLY = ("state", "create_time", "update_time", "active_since")

CAMPAIGN_OUTPUT_BYTES = 256
"""The most a campaign's output-only fields and id add to it in a reply."""


@dataclass(frozen=True)
class Transition:
    """A move of the state machine: to ``state`` from any of ``allowed_from``."""

    state: CampaignState
    allowed_from: tuple[CampaignState, ...]
    verb: str
    """The move as a refusal names it: "an archived campaign cannot be activated"."""


ACTIVATE = Transition(ACTIVE, (DRAFT, PAUSED), "activated")
PAUSE = Transition(PAUSED, (ACTIVE,), "paused")
ARCHIVE = Transition(ARCHIVED, (DRAFT, ACTIVE, PAUSED), "archived")


def to_proto(row: CampaignRow) -> campaigns_pb2.Campaign:
    """The stored campaign with its output-only fields, as replies carry it."""
    campaign = campaigns_pb2.Campaign.FromString(row.spec)
    campaign.campaign_id = row.campaign_id
    campaign.display_name = row.display_name
    campaign.state = row.state
    campaign.create_time.CopyFrom(datetime_to_timestamp(row.created_at))
    campaign.update_time.CopyFrom(datetime_to_timestamp(row.updated_at))
    if row.active_since is not None:
        campaign.active_since.CopyFrom(datetime_to_timestamp(row.active_since))
    return campaign


def stored_spec(campaign: campaigns_pb2.Campaign) -> bytes:
    """What is stored: the campaign without its output-only fields and columns."""
    spec = campaigns_pb2.Campaign()
    spec.CopyFrom(campaign)
    for name in ("campaign_id", "display_name", *OUTPUT_ONLY):
        spec.ClearField(name)
    return spec.SerializeToString(deterministic=True)


def fits_a_reply(campaign: campaigns_pb2.Campaign) -> None:
    """Refuse, before storing, a campaign whose every later reply would be too large."""
    size = campaign.ByteSize() + CAMPAIGN_OUTPUT_BYTES
    if size > MAX_REPLY_BYTES:
        raise ResourceExhausted(
            [
                FieldViolation(
                    "campaign",
                    f"the campaign takes {size:,} bytes; it must fit in a reply of {MAX_REPLY_BYTES:,} bytes",
                )
            ]
        )


def _with_article(word: str) -> str:
    """ "an archived", "a draft": the indefinite article a generated message needs."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def sample_event(name: str, context: Mapping[str, common_pb2.Value], now: dt.datetime) -> common_pb2.Event:
    """The trigger event a preview renders with: ``name`` with ``context``, happening ``now``."""
    event = common_pb2.Event(event_id="preview", name=name, context=context)
    event.occurred_at.CopyFrom(datetime_to_timestamp(now))
    event.received_at.CopyFrom(datetime_to_timestamp(now))
    return event


@dataclass(frozen=True)
class CampaignAdmin:
    """Campaigns as the API changes them; every change reaches this replica's cache at once."""

    repository: CampaignRepository
    audience: Audience
    cache: CampaignCache
    rendering: Rendering
    limits: Limits
    clock: Clock = SYSTEM_CLOCK
    """Previews render at this clock's now."""
    journeys: JourneyStore | None = None
    """The journeys' instances: resuming releases those a pause held, archiving cancels them."""

    async def _changed(self) -> None:
        # This replica sees its own change at once; the others within a poll.
        await self.cache.refresh()

    async def _check_with_segmentation(
        self, campaign: campaigns_pb2.Campaign, paths: Collection[str] | None
    ) -> None:
        """What only segmentation can check, of the fields ``paths`` names (all when None): the
        audience filter, a segment trigger's segment (it exists and is real-time) and the
        filters of a journey's branch steps."""
        if (paths is None or "audience" in paths) and campaign.HasField("audience"):
            await self.audience.validate(campaign.audience, "campaign.audience")
        if (paths is None or "trigger" in paths) and campaign.trigger.WhichOneof("kind") == "segment":
            await self.audience.require_realtime_segment(
                campaign.trigger.segment.segment_id, "campaign.trigger.segment.segment_id"
            )
        if paths is None or "steps" in paths:
            await self._validate_branches(campaign)

    async def require(self, campaign_id: str, field: str = "campaign_id") -> CampaignRow:
        """The stored campaign; INVALID_ARGUMENT for a malformed id, NOT_FOUND for a missing one."""
        raise_if_any(v for v in [validation.check_campaign_id(campaign_id, field)] if v)
        row = await self.repository.get_campaign(campaign_id)
        if row is None:
            raise NotFound(f"campaign {quote(campaign_id)} does not exist")
        return row

    async def create(self, campaign_id: str, campaign: campaigns_pb2.Campaign) -> CampaignRow:
        """Store a new (checked) campaign as a draft; the same one again returns it (AIP-155)."""
        fits_a_reply(campaign)
        await self._check_with_segmentation(campaign, None)
        spec = stored_spec(campaign)
        row, created = await self.repository.create_campaign(campaign_id, campaign.display_name, spec)
        # AIP-155: the same request again returns the campaign; another one with the id is refused.
        if not created and (row.display_name, row.spec) != (campaign.display_name, spec):
            raise AlreadyExists(f"campaign {quote(campaign_id)} already exists with other content")
        return row

    async def update(self, given: campaigns_pb2.Campaign, paths: Collection[str]) -> CampaignRow:
        """Change the fields ``paths`` names (the paths of a mask ``field_masks.read`` accepted) to ``given``'s."""
        current = await self.require(given.campaign_id, "campaign.campaign_id")
        merged = to_proto(current)
        field_masks.merge(given, merged, paths)
        raise_if_any(validation.check_campaign(merged, "campaign", set(paths), limits=self.limits))
        fits_a_reply(merged)
        await self._check_with_segmentation(merged, paths)
        if current.state == ARCHIVED:
            raise FailedPrecondition("an archived campaign cannot change")
        row = await self.repository.update_campaign(
            current.campaign_id, merged.display_name, stored_spec(merged)
        )
        if row is None:
            raise FailedPrecondition("an archived campaign cannot change")
        await self._changed()
        return row

    async def move(self, campaign_id: str, transition: Transition) -> CampaignRow:
        """Take the campaign through ``transition``; repeating one changes nothing."""
        current = await self.require(campaign_id)
        if current.state == transition.state:
            return current
        row = await self.repository.set_state(campaign_id, list(transition.allowed_from), transition.state)
        if row is None:
            latest = await self.require(campaign_id)
            if latest.state == transition.state:
                return latest
            name = campaigns_pb2.CampaignState.Name(latest.state).removeprefix("CAMPAIGN_STATE_").lower()
            raise FailedPrecondition(f"{_with_article(name)} campaign cannot be {transition.verb}")
        if self.journeys is not None:
            if transition.state == ACTIVE:
                await self.journeys.release_held(campaign_id)
            elif transition.state == ARCHIVED:
                await self.journeys.cancel_all(campaign_id, self.clock.now())
        await self._changed()
        return row

    async def _validate_branches(self, campaign: campaigns_pb2.Campaign) -> None:
        """A branch's filter is checked by segmentation, as an audience is."""
        for i, step in enumerate(campaign.steps):
            if step.WhichOneof("kind") == "branch" and step.branch.HasField("filter"):
                await self.audience.validate(step.branch.filter, f"campaign.steps[{i}].branch.filter")

    async def preview(
        self,
        campaign_id: str,
        customer_id: str,
        context: Mapping[str, common_pb2.Value],
        step_id: str = "",
    ) -> list[Planned]:
        """The campaign's messages to the customer, rendered now with ``context`` and sent nowhere:
        ``planning.plan`` of every action (or of the journey's send step ``step_id``), whatever
        the customer's consent and addresses."""
        row = await self.require(campaign_id)
        spec = campaigns_pb2.Campaign.FromString(row.spec)
        if step_id:
            action = send_step_action(spec, step_id)
            del spec.actions[:]
            spec.actions.append(action)
        profile = (await self.repository.profiles([customer_id])).get(customer_id)
        if profile is None:
            raise NotFound(f"customer {quote(customer_id)} does not exist")
        now = self.clock.now()
        # A preview does not test the trigger: a draft's activation time does not matter.
        campaign = compile_campaign(
            row.campaign_id,
            row.revision,
            spec,
            row.active_since or now,
        )
        trigger = Trigger.of(sample_event(campaign.event_name, context, now))
        [planned] = await plan(self.rendering, [(campaign, trigger, profile, "")], preview=True)
        return planned
