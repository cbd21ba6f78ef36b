"""Planning a campaign's deliveries to customers: skipped, rendered or failed, never half-made.

``plan`` is the one place that decides what a customer gets: deliveries (the engine and
the fan-out record them) and previews (``PreviewMessage`` shows them) come from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.links import UnsubscribeLinks
from eventline_campaigns.model import (
    CHANNEL_NAMES,
    CHANNEL_WORDS,
    EMAIL,
    FAILED,
    GRANTED,
    MAX_REASON,
    PENDING,
    SKIPPED,
    SUPPRESSIBLE,
    WEBHOOK,
    ChannelNumber,
    CompiledAction,
    CompiledCampaign,
    Planned,
    Profile,
    TemplateSource,
    Trigger,
    normal_address,
)
from eventline_campaigns.rendering import Rendering
from eventline_shared.values import decode_values, python_values

SUPPRESSION_WORDS: dict[int, str] = {
    campaigns_pb2.SUPPRESSION_REASON_HARD_BOUNCE: "hard bounce",
    campaigns_pb2.SUPPRESSION_REASON_COMPLAINT: "complaint",
    campaigns_pb2.SUPPRESSION_REASON_SOFT_BOUNCES: "soft bounces",
    campaigns_pb2.SUPPRESSION_REASON_MANUAL: "added by hand",
}


def suppressed_reason(reason: int) -> str:
    """Why a message to a suppressed address is skipped: "suppressed: hard bounce"."""
    return f"suppressed: {SUPPRESSION_WORDS.get(reason, 'suppressed')}"


TEMPLATE_FAILED = "template: "
"""How the reason of a delivery whose template failed starts (the render error follows)."""


PlanItem = tuple[CompiledCampaign, Trigger, Profile, str]
"""A campaign, its trigger, a customer and (when the deliveries are skipped) the reason."""


def template_arguments(profile: Profile, trigger: Trigger) -> dict[str, Any]:
    """The arguments of ``templates.variables`` for one customer and trigger (sent to a render worker)."""
    return {
        "customer_id": profile.customer_id,
        "email": profile.email,
        "phone": profile.phone,
        "attributes": python_values(decode_values(profile.attributes)),
        "context": trigger.context,
        "event_name": trigger.event.name,
        "event_id": trigger.event.event_id,
        "occurred_at": trigger.occurred_at,
    }


async def render_actions(
    rendering: Rendering, requests: Sequence[tuple[CompiledAction, dict[str, Any]]]
) -> list[list[str] | str]:
    """Render each (action, template arguments): its parts' texts, or why it failed."""
    sources: dict[TemplateSource, int] = {}
    jobs = [
        (tuple(sources.setdefault(source, len(sources)) for _, source in action.parts), arguments)
        for action, arguments in requests
    ]
    answers = await rendering.render(list(sources), jobs)
    rendered: list[list[str] | str] = []
    for answer in answers:
        failure = next((text for ok, text in answer if not ok), None)
        rendered.append(failure if failure is not None else [text for _, text in answer])
    return rendered


def suppressible(items: Sequence[PlanItem]) -> list[tuple[ChannelNumber, str]]:
    """The (channel, address) pairs of e-mail and SMS deliveries ``plan`` would render."""
    pairs = set()
    for campaign, _, profile, skip_reason in items:
        if skip_reason:
            continue
        for action in campaign.actions:
            if action.channel in SUPPRESSIBLE:
                to, consent = profile.address(action.channel)
                if to and consent == GRANTED:
                    pairs.add((action.channel, normal_address(action.channel, to[0])))
    return sorted(pairs)


def _skip_reason(
    action: CompiledAction,
    to: list[str],
    consent: int,
    suppressed: Mapping[tuple[ChannelNumber, str], int],
) -> str:
    """Why a customer gets nothing of an action; empty when they get it."""
    word = CHANNEL_WORDS[action.channel]
    if consent != GRANTED:
        return f"no {word} consent"
    if not to:
        return f"no {word} address"
    reason = suppressed.get((action.channel, normal_address(action.channel, to[0])))
    if reason is not None and action.channel in SUPPRESSIBLE:
        return suppressed_reason(reason)
    return ""


async def plan(
    rendering: Rendering,
    items: Sequence[PlanItem],
    suppressed: Mapping[tuple[ChannelNumber, str], int] | None = None,
    links: UnsubscribeLinks | None = None,
    *,
    preview: bool = False,
) -> list[list[Planned]]:
    """For each item, the deliveries of the campaign to the customer: rendered, skipped or failed.

    ``suppressed`` holds the suppressed (channel, address) pairs among the items' with
    their reason: those deliveries are skipped, ``suppressed: <reason>``. With ``links``,
    the e-mails of campaigns that are not transactional carry their List-Unsubscribe URLs.
    A ``preview`` renders every action, whatever the customer's consent and addresses, and
    keeps a template's error whole.
    """
    planned: list[list[Planned | None]] = [[] for _ in items]
    requests: list[tuple[CompiledAction, dict[str, Any]]] = []
    places: list[tuple[int, int, list[str]]] = []
    for n, (campaign, trigger, profile, skip_reason) in enumerate(items):
        arguments: dict[str, Any] | None = None
        for action in campaign.actions:
            if skip_reason:
                planned[n].append(Planned(profile.customer_id, action.channel, SKIPPED, skip_reason, None))
                continue
            to, consent = (
                ([action.url], GRANTED) if action.channel == WEBHOOK else profile.address(action.channel)
            )
            reason = "" if preview else _skip_reason(action, to, consent, suppressed or {})
            if reason:
                planned[n].append(Planned(profile.customer_id, action.channel, SKIPPED, reason, None))
                continue
            if arguments is None:
                arguments = template_arguments(profile, trigger)
            requests.append((action, arguments))
            places.append((n, len(planned[n]), to))
            planned[n].append(None)  # rendered below
    rendered = await render_actions(rendering, requests)
    for (n, position, to), (action, _), texts in zip(places, requests, rendered, strict=True):
        customer_id = items[n][2].customer_id
        if isinstance(texts, str):
            failure = f"{TEMPLATE_FAILED}{texts}"
            planned[n][position] = Planned(
                customer_id, action.channel, FAILED, failure if preview else failure[:MAX_REASON], None
            )
        else:
            message = action.message(0, to, texts)
            campaign = items[n][0]
            if links is not None and action.channel == EMAIL and not campaign.transactional:
                message.unsubscribe = links.urls(customer_id, CHANNEL_NAMES[EMAIL], campaign.campaign_id)
            planned[n][position] = Planned(customer_id, action.channel, PENDING, "", message)
    return [[p for p in deliveries if p is not None] for deliveries in planned]
