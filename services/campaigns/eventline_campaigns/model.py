"""The campaign service's domain: channels, deliveries and campaigns as the worker runs them.

Numbers are the protos' enums (``campaigns_pb2.Channel``, ``DeliveryStatus``,
``CampaignState``, ``common_pb2.Consent``), named here once; every module of the
service speaks in these names and types.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2

from eventline_predicates.evaluation import predicate_holds
from eventline_predicates.filters import Predicate, check_trigger_predicates
from eventline_shared.streams.reserved import SEGMENT_ENTERED, SEGMENT_EXITED
from eventline_shared.values import python_values, say_duration, timestamp_to_datetime

ChannelNumber: TypeAlias = campaigns_pb2.Channel
DeliveryStatus: TypeAlias = campaigns_pb2.DeliveryStatus
CampaignState: TypeAlias = campaigns_pb2.CampaignState
Consent: TypeAlias = common_pb2.Consent

EMAIL = campaigns_pb2.CHANNEL_EMAIL
SMS = campaigns_pb2.CHANNEL_SMS
PUSH = campaigns_pb2.CHANNEL_PUSH
WEBHOOK = campaigns_pb2.CHANNEL_WEBHOOK
CHANNEL_NAMES: dict[ChannelNumber, str] = {EMAIL: "email", SMS: "sms", PUSH: "push", WEBHOOK: "webhook"}
"""A channel's name in message files, provider calls and unsubscribe links."""
CHANNEL_WORDS: dict[ChannelNumber, str] = {EMAIL: "e-mail", SMS: "SMS", PUSH: "push", WEBHOOK: "webhook"}
"""A channel as reasons name it ("no e-mail consent")."""
SUPPRESSIBLE = (EMAIL, SMS)
"""The channels whose addresses can be suppressed (a bounce or complaint stops later messages)."""

CUSTOMER_TRIGGER = common_pb2.EVENT_KIND_CUSTOMER
SYSTEM_TRIGGER = common_pb2.EVENT_KIND_SYSTEM

PENDING = campaigns_pb2.DELIVERY_STATUS_PENDING
SENT = campaigns_pb2.DELIVERY_STATUS_SENT
FAILED = campaigns_pb2.DELIVERY_STATUS_FAILED
SKIPPED = campaigns_pb2.DELIVERY_STATUS_SKIPPED

DRAFT = campaigns_pb2.CAMPAIGN_STATE_DRAFT
ACTIVE = campaigns_pb2.CAMPAIGN_STATE_ACTIVE
PAUSED = campaigns_pb2.CAMPAIGN_STATE_PAUSED
ARCHIVED = campaigns_pb2.CAMPAIGN_STATE_ARCHIVED

GRANTED = common_pb2.CONSENT_GRANTED

QUIET_HOURS = "deferred by quiet hours"
"""How the reason of a journey's message deferred by quiet hours starts (kept once it is sent)."""

MAX_REASON = 1000
"""The longest reason a delivery keeps (why it was skipped, failed or is retried)."""


TemplateSource = tuple[str, bool]
"""A template's source and whether it is HTML (autoescaped)."""


@dataclass
class Message:
    """A rendered message ready for a provider; stored in the ledger while pending."""

    delivery_id: int
    channel: ChannelNumber
    to: list[str]
    subject: str = ""
    html: str = ""
    text: str = ""
    data: dict[str, str] = field(default_factory=dict)
    unsubscribe: list[str] = field(default_factory=list)
    """The List-Unsubscribe URLs of a marketing e-mail (one-click HTTPS first, then mailto);
    empty for transactional messages."""

    def to_json(self) -> str:
        """The ledger's copy of a pending message (what a sender that takes its lease over sends)."""
        fields: dict[str, Any] = {
            "to": self.to,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "data": self.data,
        }
        if self.unsubscribe:
            fields["unsubscribe"] = self.unsubscribe
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_json(cls, delivery_id: int, channel: ChannelNumber, text: str) -> Message:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            delivery_id,
            channel,
            raw["to"],
            raw["subject"],
            raw["html"],
            raw["text"],
            raw["data"],
            raw.get("unsubscribe", []),
        )


@dataclass(frozen=True)
class Profile:
    """What a campaign reads of a customer: addresses, consents, attributes (JSON)."""

    customer_id: str
    email: str
    phone: str
    push_tokens: list[str]
    attributes: str
    email_consent: Consent
    sms_consent: Consent
    push_consent: Consent

    def address(self, channel: ChannelNumber) -> tuple[list[str], Consent]:
        """The customer's recipients on a channel and their consent to it."""
        if channel == WEBHOOK:
            return [], GRANTED  # a webhook goes to its action's URL, whatever the customer's addresses
        if channel == EMAIL:
            return ([self.email] if self.email else []), self.email_consent
        if channel == SMS:
            return ([self.phone] if self.phone else []), self.sms_consent
        return list(self.push_tokens), self.push_consent


def normal_address(channel: ChannelNumber, address: str) -> str:
    """How an address is kept and compared: e-mail addresses without regard to case."""
    address = address.strip()
    return address.lower() if channel == EMAIL else address


@dataclass(frozen=True)
class Trigger:
    """One trigger event as templates and the audience see it."""

    event: common_pb2.Event
    context: dict[str, Any]
    occurred_at: dt.datetime

    @classmethod
    def of(cls, event: common_pb2.Event) -> Trigger:
        return cls(event, python_values(event.context), timestamp_to_datetime(event.occurred_at))


@dataclass(frozen=True)
class Planned:
    """A delivery about to be recorded; ``message`` is the rendered message of pending ones."""

    customer_id: str
    channel: ChannelNumber
    status: DeliveryStatus
    reason: str
    message: Message | None


@dataclass(frozen=True)
class Owned:
    """A pending delivery this worker must now send (it holds the lease)."""

    delivery_id: int
    customer_id: str
    channel: ChannelNumber
    message: Message
    attempts: int
    lease_token: int = 0
    """The lease's fencing token: a take-over by another sender changes it."""
    leased_at: float | None = None
    """When (``Delivery``'s monotonic clock, read before the call) this sender recorded the
    delivery or took it over itself; None when it must confirm its lease before sending."""


@dataclass(frozen=True)
class Outcome:
    """What sending a delivery came to: sent, failed, or pending again (retried in ``retry_in_s``)."""

    customer_id: str
    """With ``delivery_id``, the delivery's key: a sharded ledger finds the row by its customer."""
    delivery_id: int
    status: DeliveryStatus
    reason: str
    calls: int
    retry_in_s: float = 0.0
    lease_token: int = 0
    """The token of the lease it was sent under: the outcome is written only while it holds."""


CAPPABLE = (EMAIL, SMS, PUSH)
"""The channels a cap across campaigns can limit (messages to customers, not webhooks)."""


@dataclass(frozen=True)
class ChannelCap:
    """A per-customer cap on a channel over every marketing campaign: ``max_sends`` within ``window_s``."""

    channel: ChannelNumber
    max_sends: int
    window_s: float


def channel_cap_reason(cap: ChannelCap) -> str:
    """Why a message over a cap across campaigns is skipped: "channel cap: 3 e-mail messages per 7 days"."""
    window = say_duration(dt.timedelta(seconds=cap.window_s))
    return f"channel cap: {cap.max_sends} {CHANNEL_WORDS[cap.channel]} messages per {window}"


@dataclass(frozen=True)
class TestDelivery:
    """A test send (``SendTestMessage``): never in the ledger, the stats or the caps."""

    __test__ = False  # not a pytest test class, whatever its name

    test_delivery_id: int
    campaign_id: str
    step_id: str
    channel: ChannelNumber
    address: str
    sample_customer_id: str
    status: DeliveryStatus
    reason: str
    created_at: dt.datetime


class CampaignChanged(Exception):
    """A batch was not recorded: its campaign is no longer active at the revision it was rendered with."""

    def __init__(self, state: int, revision: int) -> None:
        super().__init__(f"the campaign is now in state {state} at revision {revision}")
        self.state = state
        self.revision = revision
        self.sent = 0
        """Deliveries the interrupted fan-out pass sent (it fills this in)."""


@dataclass(frozen=True)
class CompiledAction:
    """An action's templates, by part: ``subject``, ``html``, ``text`` or ``data:<key>``.

    Templates are checked when a campaign is saved and rendered by the render
    workers (``eventline_campaigns.rendering``), never in the service's process.
    """

    channel: ChannelNumber
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
    journey: bool = False
    """It has steps: a trigger enters the customer into a journey (``journeys.JourneyRunner``)."""
    entry_rule: int = 0
    """The journey's Campaign.entry_rule."""
    listens: frozenset[str] = frozenset()
    """The journey's exit and goal event names (of its current version)."""

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


def segment_trigger_event(
    trigger: campaigns_pb2.SegmentTrigger,
) -> tuple[str, tuple[segmentation_pb2.Predicate, ...]]:
    """A segment trigger as the customer event that records its transition: the event's name
    and the predicate on its segment (segmentation writes these events, see ``streams.reserved``)."""
    entered = trigger.on == segmentation_pb2.TRANSITION_KIND_ENTERED
    segment = segmentation_pb2.Predicate(
        field="segment_id",
        operator=segmentation_pb2.OPERATOR_EQUALS,
        value=segmentation_pb2.Operand(literal=common_pb2.Value(string_value=trigger.segment_id)),
    )
    return (SEGMENT_ENTERED if entered else SEGMENT_EXITED), (segment,)


def compile_campaign(
    campaign_id: str, revision: int, spec: campaigns_pb2.Campaign, active_since: dt.datetime
) -> CompiledCampaign:
    trigger_kind = spec.trigger.WhichOneof("kind")
    if trigger_kind == "customer_event":
        kind, trigger = CUSTOMER_TRIGGER, spec.trigger.customer_event
        name, predicates = trigger.event_name, tuple(trigger.context_predicates)
    elif trigger_kind == "segment":
        kind = CUSTOMER_TRIGGER
        name, predicates = segment_trigger_event(spec.trigger.segment)
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
        journey=len(spec.steps) > 0,
        entry_rule=spec.entry_rule,
        listens=frozenset(m.event_name for m in (spec.exit_event, spec.goal.event) if m.event_name),
    )
