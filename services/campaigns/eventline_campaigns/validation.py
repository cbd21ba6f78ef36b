"""Request validation: every problem of a request at once, each with its field path."""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse

from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.journey_model import check_journey_fields, check_steps
from eventline_campaigns.templates import DEFAULT_LIMITS, Limits, TemplateProblem, compile_template
from eventline_predicates.filters import check_trigger_predicates
from eventline_shared.errors import FieldViolation
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
        return [FieldViolation(field, "a trigger (customer_event or system_event) is required")]
    inner = trigger.customer_event if kind == "customer_event" else trigger.system_event
    found: list[FieldViolation] = []
    name = check_code(inner.event_name, f"{field}.{kind}.event_name", "event name")
    if name:
        found.append(name)
    found += check_trigger_predicates(
        inner.context_predicates, f"{field}.{kind}.context_predicates"
    ).violations
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
    found: list[FieldViolation] = []
    if cap.max_sends < 1:
        found.append(FieldViolation(f"{field}.max_sends", "must be at least 1"))
    bad = check_duration(cap.period, f"{field}.period", minimum=MIN_PERIOD, maximum=MAX_PERIOD)
    if bad:
        found.append(bad)
    return found


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
    found += encode_values(request.context, "context").violations
    return found
