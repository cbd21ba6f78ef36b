"""Provider status callbacks: what e-mail and SMS providers report about each message.

``POST /v1/callbacks/{provider}`` takes a provider's webhook, checks the provider's own
signature, turns its payload into ``DeliveryEvent`` reports and records them with the
campaign service's ``RecordDeliveryEvents`` (the one implementation of the ledger). Reports
are matched to deliveries by the delivery id, which every message carries: in its SMTP
``Message-ID`` (``<delivery-123@domain>``, which e-mail providers echo back), and in the
``Idempotency-Key`` and body of HTTP provider calls.

Providers (each answers 404 until its secret is set):

* ``eventline`` - our own shape, for any provider or relay an integrator writes: a JSON body
  ``{"events": [{"deliveryId" | "messageId", "event", "bounceType", "occurredAt", "detail",
  "id", "recipient"}]}`` signed like every request Eventline signs (``X-Eventline-Timestamp``,
  ``X-Eventline-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``) with
  ``EVENTLINE_CALLBACK_SECRET``.
* ``mailgun`` - Mailgun's webhooks (JSON; ``signature.signature`` is the hex HMAC-SHA256 of
  ``timestamp`` + ``token`` with the webhook signing key, ``EVENTLINE_MAILGUN_SIGNING_KEY``).
* ``twilio`` - Twilio's SMS status callbacks (form-encoded; ``X-Twilio-Signature`` is the
  base64 HMAC-SHA1 of the URL Twilio called followed by the sorted parameters, keyed with
  the auth token, ``EVENTLINE_TWILIO_AUTH_TOKEN``). The StatusCallback URL names the
  delivery: ``…/v1/callbacks/twilio?deliveryId=123``; the signature covers it.
* ``sendgrid`` - SendGrid's Event Webhook (a JSON array of events; signed with ECDSA P-256:
  ``X-Twilio-Email-Event-Webhook-Signature`` is the base64 DER signature of the
  ``X-Twilio-Email-Event-Webhook-Timestamp`` header followed by the body, checked with the
  webhook's verification key, base64 DER as SendGrid shows it,
  ``EVENTLINE_SENDGRID_VERIFICATION_KEY``). Events are matched by a ``deliveryId`` custom
  argument (the ``X-SMTPAPI`` header's ``unique_args`` every e-mail carries) or by
  ``smtp-id``, our Message-ID; an event with neither counts as unmatched.
* ``postmark`` - Postmark's webhooks (one JSON record per request: ``Bounce``,
  ``SpamComplaint``, ``Delivery``, ``Open``, ``Click``), authenticated with the HTTP basic
  auth set in the webhook's URL (``EVENTLINE_POSTMARK_WEBHOOK_AUTH``, ``user:password``).
  Records are matched by ``Metadata.deliveryId`` (the ``X-PM-Metadata-deliveryId`` header
  every e-mail carries).

Replays: a request whose timestamp is more than ``EVENTLINE_CALLBACK_TOLERANCE_S`` away
from now is refused (401), and its signature (Mailgun: its token) is its key in
``RecordDeliveryEvents``, which refuses a key seen within 24 hours (409) - in PostgreSQL,
so across every gateway replica. Twilio's and Postmark's schemes have no timestamp: there a
replay is refused by the key (Postmark: a digest of the body), and the report's id (Twilio:
message sid and status; Postmark: record type and id) records it once for ever.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2

from eventline_gateway import errors
from eventline_gateway.errors import HttpError
from eventline_shared import signatures
from eventline_shared.observability import logs
from eventline_shared.streams.group_commit import GroupCommit

Kind = campaigns_pb2.DeliveryEventKind
DELIVERED = campaigns_pb2.DELIVERY_EVENT_KIND_DELIVERED
HARD = campaigns_pb2.DELIVERY_EVENT_KIND_BOUNCED_HARD
SOFT = campaigns_pb2.DELIVERY_EVENT_KIND_BOUNCED_SOFT
COMPLAINED = campaigns_pb2.DELIVERY_EVENT_KIND_COMPLAINED
OPENED = campaigns_pb2.DELIVERY_EVENT_KIND_OPENED
CLICKED = campaigns_pb2.DELIVERY_EVENT_KIND_CLICKED

PROVIDERS = ("eventline", "mailgun", "twilio", "sendgrid", "postmark")
"""The ``{provider}`` of ``POST /v1/callbacks/{provider}`` (also in the OpenAPI document)."""
MAX_EVENTS = 1000
_DELIVERY_ID = re.compile(r"[0-9]{1,18}")
_MESSAGE_ID = re.compile(r"<?delivery-([0-9]{1,18})@[^>]*>?")

GENERIC_EVENTS = {
    "delivered": DELIVERED,
    "complained": COMPLAINED,
    "opened": OPENED,
    "clicked": CLICKED,
}
"""Our shape's ``event`` values (``bounced`` takes ``bounceType`` ``hard`` or ``soft``)."""

TWILIO_HARD_ERRORS = frozenset({"21211", "21610", "21614", "30004", "30005", "30006"})
"""Twilio error codes that say the number will never take a message (invalid, not a mobile,
unsubscribed, blocked, unknown handset, landline); other failures count as soft bounces."""


@dataclass(frozen=True)
class CallbackSettings:
    """The secrets of the providers whose callbacks the gateway takes ("" turns one off)."""

    secret: str = ""
    """EVENTLINE_CALLBACK_SECRET: our own shape."""
    mailgun_signing_key: str = ""
    twilio_auth_token: str = ""
    sendgrid_verification_key: str = ""
    """SendGrid's Event Webhook verification key: the base64 DER public key its settings show."""
    postmark_webhook_auth: str = ""
    """``user:password`` of the basic auth in the URL of Postmark's webhooks."""
    tolerance_s: float = 300.0
    public_url: str = ""
    """The gateway's URL as providers call it (EVENTLINE_GATEWAY_PUBLIC_URL), for Twilio's
    signature over the URL; the request's own scheme and host when empty."""
    service_api_key: str = ""
    """Sent on the gateway's own calls (these have no client key); needs the ``ingest`` scope."""


RECORDING_CALLS = 1
"""RecordDeliveryEvents calls in flight at once; the callbacks that arrive meanwhile go in the next.
One: a burst then shares as few calls as it can. Per callback, each call costs both processes
a gRPC round trip and the campaign service a statement and commit; with 4 in flight a burst of
32 went out in groups of ~8, with 1 in groups of ~30, for about half the CPU per callback in
the campaign service and PostgreSQL (docs/performance.md, "Provider callbacks")."""


@dataclass
class Callbacks:
    """Records the reports of callbacks: those that arrive while a call is in flight share the
    next one (``eventline_shared.streams.group_commit``), each answered with its own outcome, so a
    burst of callbacks costs a few calls and PostgreSQL commits instead of one each."""

    settings: CallbackSettings
    campaigns: campaigns_pb2_grpc.CampaignServiceStub
    group: GroupCommit[tuple[list[campaigns_pb2.DeliveryEvent], str], campaigns_pb2.ProviderRequestOutcome] = (
        field(init=False)
    )

    def __post_init__(self) -> None:
        self.group = GroupCommit(
            self._record, size=lambda request: len(request[0]), max_size=MAX_EVENTS, concurrency=RECORDING_CALLS
        )

    async def record(
        self, reports: list[campaigns_pb2.DeliveryEvent], key: str
    ) -> campaigns_pb2.ProviderRequestOutcome:
        """What recording the reports of one callback did, once they are on the ledger."""
        return await self.group.submit((reports, key[:200]))

    async def _record(
        self, requests: list[tuple[list[campaigns_pb2.DeliveryEvent], str]]
    ) -> Sequence[campaigns_pb2.ProviderRequestOutcome]:
        metadata = [("x-request-id", logs.request_id.get())]
        if self.settings.service_api_key:
            metadata.append(("authorization", f"Bearer {self.settings.service_api_key}"))
        reply: campaigns_pb2.RecordDeliveryEventsResponse = await self.campaigns.RecordDeliveryEvents(
            campaigns_pb2.RecordDeliveryEventsRequest(
                requests=[campaigns_pb2.ProviderRequest(events=events, request_key=key) for events, key in requests]
            ),
            metadata=metadata,
            timeout=30,
        )
        return reply.outcomes


CALLBACKS = web.AppKey("callbacks", Callbacks)


def unauthenticated(message: str) -> HttpError:
    return HttpError(errors.status(code_pb2.UNAUTHENTICATED, message), 401)


def not_configured(provider: str) -> HttpError:
    return HttpError(errors.status(code_pb2.NOT_FOUND, f"callbacks from {provider} are not configured"), 404)


def delivery_id(value: Any, field: str) -> str:
    """A delivery id from an id or a Message-ID (``<delivery-123@domain>``)."""
    text = str(value or "").strip()
    if _DELIVERY_ID.fullmatch(text):
        return text
    found = _MESSAGE_ID.fullmatch(text)
    if found is None:
        raise errors.invalid(field, "must be a delivery id or an Eventline Message-ID")
    return found.group(1)


@functools.lru_cache(maxsize=8)
def _keyed_sha256(key: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``key`` and fed nothing: copied per request, it skips deriving
    the inner and outer pads from the key each time (half the cost of ``hmac.new``)."""
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.invalid("", f"the body is not JSON: {exc}") from None


# --- our own shape ---


def generic_reports(
    settings: CallbackSettings, headers: Mapping[str, str], body: bytes
) -> tuple[list[campaigns_pb2.DeliveryEvent], str]:
    """The reports of a callback in our shape, and its request key; refused unless signed and fresh."""
    if not settings.secret:
        raise not_configured("eventline")
    timestamp = headers.get(signatures.TIMESTAMP_HEADER, "")
    signature = headers.get(signatures.SIGNATURE_HEADER, "")
    if not signatures.valid(settings.secret, timestamp, body, signature):
        raise unauthenticated("the signature does not match the body and timestamp")
    if not signatures.fresh(timestamp, settings.tolerance_s):
        raise unauthenticated(f"the timestamp is more than {settings.tolerance_s:g} s away from now")
    document = _json(body)
    items = document.get("events") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise errors.invalid("events", "a list of 1 to 1,000 reports is required")
    if len(items) > MAX_EVENTS:
        raise errors.invalid("events", "at most 1,000 reports per request")
    reports = []
    for i, item in enumerate(items):
        field = f"events[{i}]"
        if not isinstance(item, dict):
            raise errors.invalid(field, "must be an object")
        if "deliveryId" in item:
            found = delivery_id(item["deliveryId"], f"{field}.deliveryId")
        else:
            found = delivery_id(item.get("messageId"), f"{field}.messageId")
        event = item.get("event")
        if event == "bounced":
            bounce = item.get("bounceType")
            if bounce not in ("hard", "soft"):
                raise errors.invalid(f"{field}.bounceType", "must be 'hard' or 'soft'")
            kind = HARD if bounce == "hard" else SOFT
        elif event in GENERIC_EVENTS:
            kind = GENERIC_EVENTS[event]
        else:
            raise errors.invalid(
                f"{field}.event", "must be delivered, bounced, complained, opened or clicked"
            )
        report = campaigns_pb2.DeliveryEvent(
            delivery_id=found,
            kind=kind,
            detail=str(item.get("detail", ""))[:1000],
            provider_event_id=str(item.get("id", ""))[:200],
            recipient=str(item.get("recipient", ""))[:320],
        )
        occurred = item.get("occurredAt")
        if occurred is not None:
            try:
                report.occur_time.FromJsonString(str(occurred))
            except ValueError:
                raise errors.invalid(f"{field}.occurredAt", "must be an RFC 3339 time") from None
        reports.append(report)
    return reports, "eventline:" + signature


# --- Mailgun ---

MAILGUN_EVENTS = {"delivered": DELIVERED, "complained": COMPLAINED, "opened": OPENED, "clicked": CLICKED}


def mailgun_reports(settings: CallbackSettings, body: bytes) -> tuple[list[campaigns_pb2.DeliveryEvent], str]:
    """A Mailgun webhook's report (none for events that say nothing of delivery, such as
    ``accepted``), and its request key (the webhook's one-time token)."""
    if not settings.mailgun_signing_key:
        raise not_configured("mailgun")
    document = _json(body)
    if not isinstance(document, dict):
        raise errors.invalid("", "must be a Mailgun webhook")
    signed = document.get("signature")
    if not isinstance(signed, dict):
        raise unauthenticated("the webhook carries no signature")
    timestamp, token = str(signed.get("timestamp", "")), str(signed.get("token", ""))
    mac = _keyed_sha256(settings.mailgun_signing_key).copy()
    mac.update((timestamp + token).encode())
    expected = mac.hexdigest()
    if not token or not hmac.compare_digest(expected.encode(), str(signed.get("signature", "")).encode()):
        raise unauthenticated("the signature does not match the timestamp and token")
    if not signatures.fresh(timestamp, settings.tolerance_s):
        raise unauthenticated(f"the timestamp is more than {settings.tolerance_s:g} s away from now")
    data = document.get("event-data")
    if not isinstance(data, dict):
        raise errors.invalid("event-data", "is required")
    event = data.get("event")
    if event == "failed":
        kind = HARD if data.get("severity") == "permanent" else SOFT
    elif event in MAILGUN_EVENTS:
        kind = MAILGUN_EVENTS[event]
    else:
        return [], "mailgun:" + token
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = headers.get("message-id") if isinstance(headers, dict) else None
    status = data.get("delivery-status")
    detail = data.get("url", "") if kind == CLICKED else ""
    if isinstance(status, dict):
        detail = " ".join(str(status.get(k) or "") for k in ("code", "message", "description")).strip()
    report = campaigns_pb2.DeliveryEvent(
        delivery_id=delivery_id(message_id, "event-data.message.headers.message-id"),
        kind=kind,
        detail=str(detail)[:1000],
        provider_event_id=str(data.get("id", ""))[:200],
        recipient=str(data.get("recipient", ""))[:320],
    )
    if isinstance(data.get("timestamp"), int | float):
        report.occur_time.CopyFrom(_timestamp(float(data["timestamp"])))
    return [report], "mailgun:" + token


# --- Twilio ---


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Twilio's X-Twilio-Signature of a request: base64 HMAC-SHA1 of the URL and the sorted
    parameters, each name followed by its value."""
    text = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), text.encode(), hashlib.sha1).digest()).decode()


def twilio_reports(
    settings: CallbackSettings, url: str, params: Mapping[str, str], signature: str, query: Mapping[str, str]
) -> tuple[list[campaigns_pb2.DeliveryEvent], str]:
    """A Twilio status callback's report (none for interim statuses such as ``sent``)."""
    if not settings.twilio_auth_token:
        raise not_configured("twilio")
    expected = twilio_signature(settings.twilio_auth_token, url, params)
    if not signature or not hmac.compare_digest(expected.encode(), signature.encode()):
        raise unauthenticated("the X-Twilio-Signature does not match the URL and parameters")
    status = params.get("MessageStatus", "")
    key = "twilio:" + signature
    if status == "delivered":
        kind = DELIVERED
    elif status in ("undelivered", "failed"):
        kind = HARD if params.get("ErrorCode", "") in TWILIO_HARD_ERRORS else SOFT
    elif status == "read":
        kind = OPENED
    else:
        return [], key
    error = params.get("ErrorCode", "")
    return [
        campaigns_pb2.DeliveryEvent(
            delivery_id=delivery_id(query.get("deliveryId"), "deliveryId"),
            kind=kind,
            detail=f"{status} {error}".strip()[:1000],
            provider_event_id=f"{params.get('MessageSid', '')}:{status}"[:200]
            if params.get("MessageSid")
            else "",
            recipient=params.get("To", "")[:320],
        )
    ], key


# --- SendGrid ---

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
SENDGRID_EVENTS = {"delivered": DELIVERED, "open": OPENED, "click": CLICKED, "spamreport": COMPLAINED}
SENDGRID_DROPS = {"Bounced Address": HARD, "Invalid": HARD, "Spam Reporting Address": COMPLAINED}
"""Reasons of a ``dropped`` event that say what a bounce or complaint would: SendGrid keeps
the address on its own suppression list (other drops, such as an unsubscribed address or
spam content, say nothing about the address)."""


@functools.lru_cache(maxsize=4)
def sendgrid_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid's settings show it: base64 DER (SubjectPublicKeyInfo)
    of a P-256 key, with or without PEM armour; ValueError when it is not one."""
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    try:
        key = serialization.load_der_public_key(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not a base64 DER public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def sendgrid_signed(key: ec.EllipticCurvePublicKey, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64 DER ECDSA-SHA256) is SendGrid's over ``timestamp`` + body."""
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _sendgrid_kind(item: Mapping[str, Any]) -> Kind | None:
    event = item.get("event")
    if event == "bounce":
        # ``type`` is ``bounce`` (the server refused the address) or ``blocked`` (it refused
        # the message for now: reputation, content, rate), which may pass another time.
        return SOFT if item.get("type") == "blocked" else HARD
    if event == "dropped":
        return SENDGRID_DROPS.get(str(item.get("reason", "")))
    return SENDGRID_EVENTS.get(str(event))


def sendgrid_reports(
    settings: CallbackSettings, headers: Mapping[str, str], body: bytes
) -> tuple[list[campaigns_pb2.DeliveryEvent], str, int]:
    """The reports of a SendGrid Event Webhook request, its request key, and how many of its
    events name no delivery (none for events that say nothing of delivery, such as
    ``processed`` or ``deferred``)."""
    if not settings.sendgrid_verification_key:
        raise not_configured("sendgrid")
    timestamp = headers.get(SENDGRID_TIMESTAMP_HEADER, "")
    signature = headers.get(SENDGRID_SIGNATURE_HEADER, "")
    key = sendgrid_public_key(settings.sendgrid_verification_key)
    if not signature or not sendgrid_signed(key, timestamp, body, signature):
        raise unauthenticated(f"the {SENDGRID_SIGNATURE_HEADER} does not match the body and timestamp")
    if not signatures.fresh(timestamp, settings.tolerance_s):
        raise unauthenticated(f"the timestamp is more than {settings.tolerance_s:g} s away from now")
    items = _json(body)
    if not isinstance(items, list):
        raise errors.invalid("", "must be a JSON array of SendGrid events")
    if len(items) > MAX_EVENTS:
        raise errors.invalid("", "at most 1,000 events per request")
    reports, unmatched = [], 0
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise errors.invalid(f"[{i}]", "must be an object")
        kind = _sendgrid_kind(item)
        if kind is None:
            continue
        if item.get("deliveryId") is not None:
            found = delivery_id(item["deliveryId"], f"[{i}].deliveryId")
        elif item.get("smtp-id") is not None and _MESSAGE_ID.fullmatch(str(item["smtp-id"]).strip()):
            found = delivery_id(item["smtp-id"], f"[{i}].smtp-id")
        else:
            unmatched += 1  # sent by another system, or without our arguments
            continue
        if kind == CLICKED:
            detail = str(item.get("url", ""))
        else:
            detail = " ".join(str(item.get(k) or "") for k in ("status", "reason", "response")).strip()
        report = campaigns_pb2.DeliveryEvent(
            delivery_id=found,
            kind=kind,
            detail=detail[:1000],
            provider_event_id=str(item.get("sg_event_id", ""))[:200],
            recipient=str(item.get("email", ""))[:320],
        )
        if isinstance(item.get("timestamp"), int | float):
            report.occur_time.CopyFrom(_timestamp(float(item["timestamp"])))
        reports.append(report)
    return reports, "sendgrid:" + signature, unmatched


# --- Postmark ---

POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
POSTMARK_COMPLAINTS = frozenset({"SpamComplaint", "SpamNotification"})
POSTMARK_NOT_BOUNCES = frozenset(
    {"AutoResponder", "Subscribe", "Unsubscribe", "AddressChange", "OpenRelayTest", "ChallengeVerification"}
)
"""Bounce types that say nothing of whether the address takes mail (an out-of-office reply, a
list request); the other failures (Transient, SoftBounce, DnsError, Blocked, …) are soft."""
POSTMARK_TIMES = {"Bounce": "BouncedAt", "SpamComplaint": "BouncedAt", "Delivery": "DeliveredAt"}


def _postmark_kind(record: Mapping[str, Any]) -> Kind | None:
    record_type = record.get("RecordType")
    if record_type == "Delivery":
        return DELIVERED
    if record_type == "Open":
        return OPENED
    if record_type == "Click":
        return CLICKED
    if record_type == "SpamComplaint":
        return COMPLAINED
    if record_type == "Bounce":
        bounce = str(record.get("Type", ""))
        if bounce in POSTMARK_HARD:
            return HARD
        if bounce in POSTMARK_COMPLAINTS:
            return COMPLAINED
        return None if bounce in POSTMARK_NOT_BOUNCES else SOFT
    return None  # SubscriptionChange and any record type to come


def postmark_reports(
    settings: CallbackSettings, authorization: str, body: bytes
) -> tuple[list[campaigns_pb2.DeliveryEvent], str, int]:
    """The report of a Postmark webhook, its request key (a digest of the body: Postmark signs
    nothing), and 1 when it names no delivery."""
    if not settings.postmark_webhook_auth:
        raise not_configured("postmark")
    expected = "Basic " + base64.b64encode(settings.postmark_webhook_auth.encode()).decode()
    if not hmac.compare_digest(expected.encode(), authorization.encode()):
        raise unauthenticated("the basic auth of the webhook's URL does not match")
    record = _json(body)
    if not isinstance(record, dict):
        raise errors.invalid("", "must be a Postmark webhook record")
    key = "postmark:" + hashlib.sha256(body).hexdigest()
    kind = _postmark_kind(record)
    if kind is None:
        return [], key, 0
    metadata = record.get("Metadata")
    found = metadata.get("deliveryId") if isinstance(metadata, dict) else None
    if found is None:
        return [], key, 1
    recipient = record.get("Email") if record.get("RecordType") in ("Bounce", "SpamComplaint") else None
    if kind == CLICKED:
        detail = str(record.get("OriginalLink", ""))
    else:
        detail = " ".join(str(record.get(k) or "") for k in ("Type", "Details")).strip()
    # Bounces and complaints have an id of their own; deliveries and opens are one per message
    # (Postmark posts every opening unless told the first only), clicks one per link.
    if record.get("ID") is not None:
        event_id = f"{record['RecordType']}:{record['ID']}"
    else:
        event_id = f"{record['RecordType']}:{record.get('MessageID', '')}" + (f":{detail}" if kind == CLICKED else "")
    report = campaigns_pb2.DeliveryEvent(
        delivery_id=delivery_id(found, "Metadata.deliveryId"),
        kind=kind,
        detail=detail[:1000],
        provider_event_id=event_id[:200],
        recipient=str(recipient or record.get("Recipient", ""))[:320],
    )
    when = record.get(POSTMARK_TIMES.get(str(record.get("RecordType")), "ReceivedAt"))
    if isinstance(when, str) and when:
        try:
            report.occur_time.FromJsonString(when)  # ISO 8601 with an offset and up to 9 digits
        except ValueError:
            pass  # a time we cannot read: the ledger's own time stands
    return [report], key, 0


# --- the route ---


async def callback(request: web.Request) -> web.Response:
    """``POST /v1/callbacks/{provider}``: verify, translate, record; 200 with the counts."""
    state = request.app[CALLBACKS]
    settings = state.settings
    provider = request.match_info["provider"]
    body = await request.read()
    unmatched = 0
    if provider == "eventline":
        reports, key = generic_reports(settings, request.headers, body)
    elif provider == "mailgun":
        reports, key = mailgun_reports(settings, body)
    elif provider == "twilio":
        form = {name: str(value) for name, value in (await request.post()).items()}
        base = settings.public_url.rstrip("/") or f"{request.scheme}://{request.host}"
        reports, key = twilio_reports(
            settings,
            base + request.rel_url.raw_path_qs,
            form,
            request.headers.get("X-Twilio-Signature", ""),
            request.rel_url.query,
        )
    elif provider == "sendgrid":
        reports, key, unmatched = sendgrid_reports(settings, request.headers, body)
    elif provider == "postmark":
        reports, key, unmatched = postmark_reports(settings, request.headers.get("Authorization", ""), body)
    else:
        raise HttpError(errors.status(code_pb2.NOT_FOUND, f"no callbacks from {provider!r}"), 404)
    if not reports:
        answer = {"recorded": 0, "unmatched": unmatched, "duplicates": 0}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
    try:
        reply = await state.record(reports, key)
    except grpc.aio.AioRpcError as error:
        raise errors.from_rpc_error(error, "campaigns") from None
    if reply.replayed:
        raise HttpError(
            errors.status(code_pb2.ALREADY_EXISTS, "this request was handled before (a replay); nothing was recorded"),
            409,
        )
    answer = {"recorded": reply.recorded, "unmatched": reply.unmatched + unmatched, "duplicates": reply.duplicates}
    return web.Response(body=orjson.dumps(answer), content_type="application/json")
