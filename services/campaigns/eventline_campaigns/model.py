"""Campaigns as the worker runs them: their templates by action, trigger tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2

from eventline_campaigns.channels import EMAIL, PUSH, SMS, WEBHOOK, Message
from eventline_predicates.evaluation import predicate_holds
from eventline_predicates.filters import Predicate, check_trigger_predicates

CUSTOMER_TRIGGER = common_pb2.EVENT_KIND_CUSTOMER
SYSTEM_TRIGGER = common_pb2.EVENT_KIND_SYSTEM

PENDING = campaigns_pb2.DELIVERY_STATUS_PENDING
SENT = campaigns_pb2.DELIVERY_STATUS_SENT
FAILED = campaigns_pb2.DELIVERY_STATUS_FAILED
SKIPPED = campaigns_pb2.DELIVERY_STATUS_SKIPPED

ACTIVE = campaigns_pb2.CAMPAIGN_STATE_ACTIVE


TemplateSource = tuple[str, bool]
"""A template's source and whether it is HTML (autoescaped)."""


@dataclass(frozen=True)
class CompiledAction:
    """An action's templates, by part: ``subject``, ``html``, ``text`` or ``data:<key>``.

    Templates are checked when a campaign is saved and rendered by the render
    workers (``eventline_campaigns.rendering``), never in the service's process.
    """

    channel: int
    parts: tuple[tuple[str, TemplateSource], ...]
    url: str = ""
    """A webhook's URL (its one recipient)."""

    def message(self, delivery_id: int, to: list[str], rendered: Sequence[str]) -> Message:
        """The message from the rendered parts, in the order of ``parts``."""
        texts = {"subject": "", "html": "", "text": ""}
        data: dict[str, str] = {}
        for (part, _), text in zip(self.parts, rendered, strict=True):
            if part.startswith("data:"):
                data[part.removeprefix("data:")] = text
            else:
                texts[part] = text
        # A subject or title is one line, whatever the template produced.
        subject = " ".join(texts["subject"].split())
        return Message(delivery_id, self.channel, to, subject, texts["html"], texts["text"], data)


def compile_action(action: campaigns_pb2.Action) -> CompiledAction:
    """An action's templates (validated when the campaign was saved)."""
    kind = action.WhichOneof("channel")
    if kind == "email":
        email = action.email
        parts = [("subject", (email.subject, False))]
        if email.html_body:
            parts.append(("html", (email.html_body, True)))
        if email.text_body:
            parts.append(("text", (email.text_body, False)))
        return CompiledAction(EMAIL, tuple(parts))
    if kind == "sms":
        return CompiledAction(SMS, (("text", (action.sms.text, False)),))
    if kind == "webhook":
        return CompiledAction(WEBHOOK, (("text", (action.webhook.body, False)),), action.webhook.url)
    push = action.push
    data = tuple((f"data:{key}", (value, False)) for key, value in sorted(push.data.items()))
    return CompiledAction(PUSH, (("subject", (push.title, False)), ("text", (push.body, False)), *data))


@dataclass(frozen=True)
class CompiledCampaign:
    campaign_id: str
    revision: int
    kind: int
    event_name: str
    predicates: tuple[Predicate, ...]
    audience: segmentation_pb2.Filter | None
    actions: tuple[CompiledAction, ...]
    cap_max: int
    cap_period_s: float
    active_since: dt.datetime
    transactional: bool = False
    """No unsubscribe link in its e-mails (see Campaign.transactional)."""

    def triggered_by(self, event: common_pb2.Event, received_at: dt.datetime) -> bool:
        """Whether ``event`` triggers this campaign (name, kind, predicates, activation time)."""
        if event.name != self.event_name or event.kind != self.kind:
            return False
        if received_at < self.active_since:
            return False
        return all(predicate_holds(p, event.context) for p in self.predicates)


def trigger_predicates(predicates: Sequence[segmentation_pb2.Predicate]) -> tuple[Predicate, ...]:
    """A trigger's context predicates, checked and typed once (they were checked when the campaign
    was saved: a violation here is a stored campaign the checker no longer accepts)."""
    checked = check_trigger_predicates(predicates, "trigger.context_predicates")
    if checked.violations:
        raise ValueError("; ".join(f"{v.field}: {v.description}" for v in checked.violations))
    return checked.predicates


def compile_campaign(
    campaign_id: str, revision: int, spec: campaigns_pb2.Campaign, active_since: dt.datetime
) -> CompiledCampaign:
    trigger_kind = spec.trigger.WhichOneof("kind")
    if trigger_kind == "customer_event":
        kind, trigger = CUSTOMER_TRIGGER, spec.trigger.customer_event
        name, predicates = trigger.event_name, tuple(trigger.context_predicates)
    else:
        system = spec.trigger.system_event
        kind, name, predicates = SYSTEM_TRIGGER, system.event_name, tuple(system.context_predicates)
    cap = spec.frequency_cap if spec.HasField("frequency_cap") else None
    return CompiledCampaign(
        campaign_id=campaign_id,
        revision=revision,
        kind=kind,
        event_name=name,
        predicates=trigger_predicates(predicates),
        audience=spec.audience if spec.HasField("audience") else None,
        actions=tuple(compile_action(a) for a in spec.actions),
        cap_max=cap.max_sends if cap else 0,
        cap_period_s=cap.period.ToTimedelta().total_seconds() if cap else 0.0,
        active_since=active_since,
        transactional=spec.transactional,
    )
