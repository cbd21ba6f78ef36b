"""Request validation: every problem of a request at once, each with its field path."""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse

from eventline.campaigns.v1 import campaigns_pb2
from eventline.segmentation.v1 import segmentation_pb2
from google.protobuf import duration_pb2

from eventline_campaigns.journey_model import check_journey_fields, check_step_id, check_steps
from eventline_campaigns.model import CAPPABLE, EMAIL, PUSH, SMS, SUPPRESSIBLE, ChannelCap, ChannelNumber
from eventline_campaigns.templates import DEFAULT_LIMITS, Limits, TemplateProblem, compile_template
from eventline_predicates.filters import check_trigger_predicates
from eventline_shared.errors import FieldViolation, quote
from eventline_shared.values import (
    check_code,
    check_customer_id,
    check_duration,
    check_event_id,
    check_id,
    encode_values,
    quote_path,
)

CAMPAIGN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Checked with fullmatch: "$" would accept a trailing newline (then NOT_FOUND without it)."""
MAX_DISPLAY_NAME = 200
MIN_PERIOD = dt.timedelta(seconds=1)
MAX_PERIOD = dt.timedelta(days=366)
MAX_CHANNEL_CAP = 1000
"""The most messages a cap across campaigns allows per window."""
MAX_PUSH_TOKEN = 4096
_PHONE = re.compile(r"\+?[0-9]{3,20}")

# (field, limit in characters, html?)
_EMAIL_FIELDS = (("subject", 1000, False), ("html_body", 100_000, True), ("text_body", 100_000, False))


def check_campaign_id(value: str, field: str) -> FieldViolation | None:
    return check_id(value, field, "campaign id", CAMPAIGN_ID, "1 to 64 letters, digits, '_' or '-'")


def check_parent(parent: str | None, value: str) -> FieldViolation | None:
    """The parent of ListDeliveries: a campaign, customer or event id of its own grammar."""
    if parent == "campaign_id":
        return check_campaign_id(value, parent)
    if parent == "customer_id":
        return check_customer_id(value, parent)
    if parent == "event_id":
        return check_event_id(value, parent)
    return FieldViolation("parent", "campaign_id, customer_id or event_id is required")


def _template(
    source: str, field: str, limit: int, html: bool, required: bool, limits: Limits = DEFAULT_LIMITS
) -> list[FieldViolation]:
    if not source:
        return [FieldViolation(field, "template is required")] if required else []
    if len(source) > limit:
        return [FieldViolation(field, f"template is longer than {limit} characters")]
    try:
        compile_template(source, html=html, limits=limits)
    except TemplateProblem as problem:
        return [FieldViolation(field, f"template error at {problem.description}")]
    return []


def _trigger(trigger: campaigns_pb2.Trigger, field: str) -> list[FieldViolation]:
    kind = trigger.WhichOneof("kind")
    if kind is None:
        return [FieldViolation(field, "a trigger (customer_event, system_event or segment) is required")]
    if kind == "segment":
        return _segment_trigger(trigger.segment, f"{field}.segment")
    inner = trigger.customer_event if kind == "customer_event" else trigger.system_event
    found: list[FieldViolation] = []
    name = check_code(inner.event_name, f"{field}.{kind}.event_name", "event name")
    if name:
        found.append(name)
    found += check_trigger_predicates(
        inner.context_predicates, f"{field}.{kind}.context_predicates"
    ).violations
    return found


def _segment_trigger(trigger: campaigns_pb2.SegmentTrigger, field: str) -> list[FieldViolation]:
    """The request's own checks; whether the segment exists and is real-time is segmentation's
    answer (``CampaignAdmin``)."""
    found = [v for v in [check_event_id(trigger.segment_id, f"{field}.segment_id", "segment id")] if v]
    if trigger.on not in (segmentation_pb2.TRANSITION_KIND_ENTERED, segmentation_pb2.TRANSITION_KIND_EXITED):
        found.append(
            FieldViolation(f"{field}.on", "TRANSITION_KIND_ENTERED or TRANSITION_KIND_EXITED is required")
        )
    return found


def _actions(
    actions: list[campaigns_pb2.Action], field: str, limits: Limits = DEFAULT_LIMITS
) -> list[FieldViolation]:
    if not 1 <= len(actions) <= 3:
        return [FieldViolation(field, "1 to 3 actions are required")]
    found: list[FieldViolation] = []
    seen: set[str] = set()
    for i, action in enumerate(actions):
        path = f"{field}[{i}]"
        kind = action.WhichOneof("channel")
        if kind is None:
            found.append(FieldViolation(path, "a channel (email, sms, push or webhook) is required"))
            continue
        if kind in seen:
            found.append(FieldViolation(f"{path}.{kind}", "at most one action per channel"))
        seen.add(kind)
        found += _action(action, path, limits)
    return found


def _action(action: campaigns_pb2.Action, path: str, limits: Limits = DEFAULT_LIMITS) -> list[FieldViolation]:
    """Violations of one action (its channel is set), under ``path``."""
    found: list[FieldViolation] = []
    kind = action.WhichOneof("channel")
    if kind == "email":
        email = action.email
        for name, limit, html in _EMAIL_FIELDS:
            found += _template(
                getattr(email, name), f"{path}.email.{name}", limit, html, name == "subject", limits
            )
        if not email.html_body and not email.text_body:
            found.append(FieldViolation(f"{path}.email", "html_body or text_body is required"))
    elif kind == "sms":
        found += _template(action.sms.text, f"{path}.sms.text", 2000, False, True, limits)
    elif kind == "webhook":
        found += _webhook_url(action.webhook.url, f"{path}.webhook.url")
        found += _template(action.webhook.body, f"{path}.webhook.body", 100_000, False, True, limits)
    else:
        push = action.push
        found += _template(push.title, f"{path}.push.title", 1000, False, True, limits)
        found += _template(push.body, f"{path}.push.body", 4000, False, True, limits)
        if len(push.data) > 20:
            found.append(FieldViolation(f"{path}.push.data", "at most 20 data entries"))
        for key, source in sorted(push.data.items()):
            key_path = quote_path(f"{path}.push.data", key)
            bad_key = check_code(key, key_path, "data key")
            if bad_key:
                found.append(bad_key)
            found += _template(source, key_path, 4000, False, True, limits)
    return found


def _webhook_url(url: str, field: str) -> list[FieldViolation]:
    """An http(s) URL with a host and no user information (where it resolves is checked
    when it is called: an address can change after the campaign is saved)."""
    if not url:
        return [FieldViolation(field, "a URL is required")]
    if len(url) > 2000 or any(not c.isprintable() or c.isspace() for c in url):
        return [FieldViolation(field, "must be a URL of at most 2,000 characters without spaces")]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [FieldViolation(field, "must be an http:// or https:// URL with a host")]
    if parts.username is not None or parts.password is not None:
        return [FieldViolation(field, "must carry no user name or password")]
    try:
        parts.port  # noqa: B018 - a bad port raises
    except ValueError:
        return [FieldViolation(field, "has a bad port")]
    return []


def _frequency_cap(cap: campaigns_pb2.FrequencyCap, field: str) -> list[FieldViolation]:
    return _frequency_limit(cap.max_sends, cap.period, field, "period")


def check_campaign(
    campaign: campaigns_pb2.Campaign,
    field: str,
    paths: set[str] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> list[FieldViolation]:
    """Violations of the campaign fields named in ``paths`` (all when None), under ``field``."""

    def wanted(name: str) -> bool:
        return paths is None or name in paths

    found: list[FieldViolation] = []
    if wanted("display_name"):
        if not 1 <= len(campaign.display_name) <= MAX_DISPLAY_NAME:
            found.append(
                FieldViolation(f"{field}.display_name", f"1 to {MAX_DISPLAY_NAME} characters are required")
            )
        elif "\x00" in campaign.display_name:
            found.append(FieldViolation(f"{field}.display_name", "must not contain NUL characters"))
    if wanted("trigger"):
        found += _trigger(campaign.trigger, f"{field}.trigger")
    journey = len(campaign.steps) > 0
    if wanted("actions") or wanted("steps"):
        if not journey:
            found += _actions(list(campaign.actions), f"{field}.actions", limits)
        else:
            if campaign.actions:
                found.append(FieldViolation(f"{field}.actions", "must be empty when steps are set"))
            found += check_steps(
                list(campaign.steps), f"{field}.steps", lambda action, path: _action(action, path, limits)
            )
    if (
        journey
        and (wanted("trigger") or wanted("steps"))
        and campaign.trigger.WhichOneof("kind") == "system_event"
    ):
        found.append(FieldViolation(f"{field}.trigger", "a journey (steps) is entered by a customer event"))
    found += check_journey_fields(campaign, field, wanted)
    if wanted("frequency_cap") and campaign.HasField("frequency_cap"):
        found += _frequency_cap(campaign.frequency_cap, f"{field}.frequency_cap")
    return found


def check_preview(request: campaigns_pb2.PreviewMessageRequest) -> list[FieldViolation]:
    found = [v for v in (check_customer_id(request.customer_id, "customer_id"),) if v]
    if request.step_id and (bad := check_step_id(request.step_id, "step_id")):
        found.append(bad)
    found += encode_values(request.context, "context").violations
    return found


def _frequency_limit(
    max_sends: int, period: duration_pb2.Duration, field: str, period_field: str
) -> list[FieldViolation]:
    """``max_sends`` of a cap (at least 1) and its period (1 second to 366 days)."""
    found: list[FieldViolation] = []
    if max_sends < 1:
        found.append(FieldViolation(f"{field}.max_sends", "must be at least 1"))
    bad = check_duration(period, f"{field}.{period_field}", minimum=MIN_PERIOD, maximum=MAX_PERIOD)
    if bad:
        found.append(bad)
    return found


def check_address(
    channel: ChannelNumber, address: str, field: str, channels: tuple[ChannelNumber, ...] = SUPPRESSIBLE
) -> list[FieldViolation]:
    """An address on one of ``channels``: e-mail (one ``@``), SMS (digits) or a push token."""
    if channel not in channels:
        words = {EMAIL: "CHANNEL_EMAIL", SMS: "CHANNEL_SMS", PUSH: "CHANNEL_PUSH"}
        named = [words[c] for c in channels]
        either = ", ".join(named[:-1]) + f" or {named[-1]}"
        return [FieldViolation(field.removesuffix("address") + "channel", f"must be {either}")]
    if not address.strip():
        return [FieldViolation(field, "an address is required")]
    limit = MAX_PUSH_TOKEN if channel == PUSH else 320
    if len(address) > limit or any(c.isspace() or not c.isprintable() for c in address):
        return [FieldViolation(field, f"{quote(address)} is not an address")]
    if channel == EMAIL and address.count("@") != 1:
        return [FieldViolation(field, f"{quote(address)} is not an e-mail address")]
    if channel == SMS and not _PHONE.fullmatch(address):
        return [FieldViolation(field, f"{quote(address)} is not a phone number")]
    return []


def check_channel_caps(
    caps: list[campaigns_pb2.ChannelCap], field: str
) -> tuple[list[ChannelCap], list[FieldViolation]]:
    """The caps of a SetChannelCaps request (``max_sends`` 0 removes one), and what is wrong with them."""
    found: list[FieldViolation] = []
    if not caps:
        found.append(FieldViolation(field, "at least one cap is required"))
    checked: list[ChannelCap] = []
    seen: set[int] = set()
    for i, cap in enumerate(caps):
        at = f"{field}[{i}]"
        if cap.channel not in CAPPABLE:
            found.append(
                FieldViolation(f"{at}.channel", "must be CHANNEL_EMAIL, CHANNEL_SMS or CHANNEL_PUSH")
            )
            continue
        if cap.channel in seen:
            found.append(FieldViolation(f"{at}.channel", "at most one cap per channel"))
            continue
        seen.add(cap.channel)
        if cap.max_sends == 0:
            checked.append(ChannelCap(cap.channel, 0, 0.0))
            continue
        problems = _frequency_limit(cap.max_sends, cap.window, at, "window")
        if cap.max_sends > MAX_CHANNEL_CAP:
            problems.append(FieldViolation(f"{at}.max_sends", f"must be at most {MAX_CHANNEL_CAP:,}"))
        found += problems
        if not problems:
            checked.append(ChannelCap(cap.channel, cap.max_sends, cap.window.ToTimedelta().total_seconds()))
    return checked, found


def check_test_send(request: campaigns_pb2.SendTestMessageRequest) -> list[FieldViolation]:
    """What can be checked of a SendTestMessage request before its campaign is read."""
    found = [
        v
        for v in (
            check_campaign_id(request.campaign_id, "campaign_id"),
            check_customer_id(request.sample_customer_id, "sample_customer_id"),
        )
        if v
    ]
    if request.step_id and (bad := check_step_id(request.step_id, "step_id")):
        found.append(bad)
    if request.channel not in (campaigns_pb2.CHANNEL_UNSPECIFIED, *CAPPABLE):
        found.append(
            FieldViolation("channel", "must be CHANNEL_EMAIL, CHANNEL_SMS, CHANNEL_PUSH or unspecified")
        )
    if not request.address.strip():
        found.append(FieldViolation("address", "an address is required"))
    found += encode_values(request.context, "context").violations
    return found
