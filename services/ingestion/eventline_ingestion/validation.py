"""Validation of ingestion requests into the domain's terms.

Every rule names the offending field path; nothing here touches storage.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, final

import email_validator
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_shared import field_masks
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.errors import FieldViolation, quote
from eventline_shared.paging import field_bytes
from eventline_shared.streams.reserved import RESERVED_EVENT_NAMES
from eventline_shared.values import (
    CUSTOMER_ID,
    EVENT_ID,
    TIMESTAMP_RANGE,
    check_code,
    check_customer_id,
    check_event_id,
    datetime_to_timestamp,
    encode_values,
    in_timestamp_range,
    present,
    timestamp_bytes,
    timestamp_micros,
    valid_code,
)

MAX_FUTURE = dt.timedelta(hours=24)
_MAX_FUTURE_US: Final = MAX_FUTURE // dt.timedelta(microseconds=1)
MAX_PUSH_TOKENS = 20
MAX_PUSH_TOKEN_CHARS = 4096
_PHONE: Final = re.compile(r"\+[1-9][0-9]{7,14}")
CUSTOMER_FIELDS = (
    "email",
    "phone",
    "push_tokens",
    "attributes",
    "email_consent",
    "sms_consent",
    "push_consent",
)
_CONSENTS = set(common_pb2.Consent.values())


EPOCH_REFUSED: Final = (
    "occurred_at is exactly 1970-01-01T00:00:00Z, what a client sends when it failed to set "
    "the time (an empty Timestamp); leave occurred_at unset to mean the time of arrival"
)

_EVENT_CONTEXT: Final = b"\x3a"
"""The stored event's context: ``eventline.common.v1.Event``'s field 7, length-delimited. Its bytes
are written as the context is validated (``encode_values``' ``map_field``), from what validation
reads of each value anyway (``stored_form`` writes the rest of the stored event)."""


@final
class NewEvent:
    """A valid event, ready to store (hundreds are made per batch: a class with slots, whose
    construction costs less than a ``NamedTuple``'s, compiled or not)."""

    __slots__ = (
        "context",
        "context_json",
        "context_wire",
        "customer_id",
        "event_id",
        "key",
        "kind",
        "name",
        "normalized",
        "occurred_at",
        "occurred_us",
        "traceparent",
    )

    def __init__(
        self,
        kind: common_pb2.EventKind,
        customer_id: str,
        event_id: str,
        name: str,
        occurred_us: int,
        occurred_at: bytes,
        context_json: str,
        context: Mapping[str, common_pb2.Value],
        normalized: Mapping[str, common_pb2.Value],
        context_wire: bytes,
        traceparent: str,
    ) -> None:
        self.key = (customer_id, event_id)
        """(customer_id, event_id): what makes an event unique."""
        self.kind = kind
        self.customer_id = customer_id
        """Empty for a system event."""
        self.event_id = event_id
        self.name = name
        self.occurred_us = occurred_us
        """When it occurred, in microseconds since the epoch (what PostgreSQL keeps of a time: the
        statement turns it into a timestamptz, cheaper than a datetime built and encoded here)."""
        self.occurred_at = occurred_at
        """When it occurred as stored (cut to microseconds): a ``google.protobuf.Timestamp`` serialized."""
        self.context_json = context_json
        self.context = context
        """The context as sent; with ``normalized`` applied, it is the context as stored."""
        self.normalized = normalized
        self.context_wire = context_wire
        """The context as stored, serialized as the stored event's field (``values.Encoded.wire``)."""
        self.traceparent = traceparent
        """The W3C trace context the event's stream entry carries."""


class Arrival(NamedTuple):
    """When a request arrived (in the forms validation needs) and the trace it belongs to."""

    now_us: int
    """Microseconds since the epoch."""
    now_bytes: bytes
    """The same instant as a serialized ``google.protobuf.Timestamp``: the occurred_at of an event
    sent without one."""
    latest_us: int
    """The latest occurred_at accepted, in microseconds since the epoch."""
    traceparent: str

    @classmethod
    def now_under(cls, traceparent: str, clock: Clock = SYSTEM_CLOCK) -> Arrival:
        now = datetime_to_timestamp(clock.now())
        now_us = timestamp_micros(now)
        return cls(now_us, timestamp_bytes(now.seconds, now.nanos), now_us + _MAX_FUTURE_US, traceparent)


def _path(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix else field


def _event(
    kind: common_pb2.EventKind,
    customer_id: str,
    request: ingestion_pb2.TrackCustomerEventRequest | ingestion_pb2.TrackSystemEventRequest,
    arrival: Arrival,
    prefix: str,
    violations: list[FieldViolation],
) -> NewEvent | list[FieldViolation]:
    # Paths are only formatted for a violation: the valid case is the hot path.
    event_id = request.event_id
    if not EVENT_ID.fullmatch(event_id):
        violations += present([check_event_id(event_id, _path(prefix, "event_id"))])
    name = request.name
    if not valid_code(name):
        violations += present([check_code(name, _path(prefix, "name"), "event name")])
    elif name in RESERVED_EVENT_NAMES:
        violations.append(
            FieldViolation(
                _path(prefix, "name"),
                f"event name {quote(name)} is reserved: Eventline records it when a customer "
                "enters or exits a real-time segment",
            )
        )
    occurred_us, occurred_at = arrival.now_us, arrival.now_bytes
    if request.HasField("occurred_at"):
        sent = request.occurred_at
        seconds, nanos = sent.seconds, sent.nanos  # each read of a field is a call: once each
        if not in_timestamp_range(seconds, nanos):  # check_timestamp's rule
            violations.append(FieldViolation(_path(prefix, "occurred_at"), TIMESTAMP_RANGE))
        elif seconds == 0 and nanos == 0:
            violations.append(FieldViolation(_path(prefix, "occurred_at"), EPOCH_REFUSED))
        else:
            occurred_us = seconds * 1_000_000 + nanos // 1000  # timestamp_micros
            if occurred_us > arrival.latest_us:
                violations.append(
                    FieldViolation(
                        _path(prefix, "occurred_at"), "occurred_at is more than 24 hours in the future"
                    )
                )
            elif occurred_us < 0:
                violations.append(FieldViolation(_path(prefix, "occurred_at"), "occurred_at is before 1970"))
            else:
                occurred_at = timestamp_bytes(seconds, nanos - nanos % 1000)
    sent_context = request.context  # each read of a map builds its wrapper: once
    context = encode_values(sent_context, _path(prefix, "context"), map_field=_EVENT_CONTEXT)
    if context.violations:
        violations += context.violations
    if violations:
        return violations
    return NewEvent(
        kind,
        customer_id,
        event_id,
        name,
        occurred_us,
        occurred_at,
        context.json,
        sent_context,
        context.normalized,
        context.wire,
        arrival.traceparent,
    )


def customer_event(
    request: ingestion_pb2.TrackCustomerEventRequest, arrival: Arrival, prefix: str = ""
) -> NewEvent | list[FieldViolation]:
    """The event to store, or every violation found in the request."""
    customer_id = request.customer_id
    violations = []
    if not CUSTOMER_ID.fullmatch(customer_id):
        violations = present([check_customer_id(customer_id, _path(prefix, "customer_id"))])
    return _event(common_pb2.EVENT_KIND_CUSTOMER, customer_id, request, arrival, prefix, violations)


def system_event(
    request: ingestion_pb2.TrackSystemEventRequest, arrival: Arrival, prefix: str = ""
) -> NewEvent | list[FieldViolation]:
    return _event(common_pb2.EVENT_KIND_SYSTEM, "", request, arrival, prefix, [])


REPLY_OVERHEAD_BYTES: Final = 64
"""The most an item's result adds to the item as sent: the event's kind, received_at and
occurred_at (when the client left it unset), and the result's length prefixes."""


def reply_bytes(
    request: ingestion_pb2.TrackEventsRequest,
    checked: Sequence[NewEvent | list[FieldViolation]],
    errors: Mapping[int, int],
) -> int:
    """An upper bound of the TrackEventsResponse to ``request``, known before anything is stored.

    Each good item is answered with the event as stored (the item as sent,
    its decimals in plain notation, plus the output fields); a repeated event
    id with the first item of that id; a bad item with its error, whose
    encoded size ``errors`` gives by index. Only an event id stored by an
    earlier call can be answered with more than this (the servicer handles
    that case).
    """
    total = request.ByteSize() + REPLY_OVERHEAD_BYTES * len(checked)
    first: dict[tuple[str, str], tuple[int, int]] = {}
    for i, event in enumerate(checked):
        if not isinstance(event, NewEvent):  # answered with its error instead of itself
            total += errors[i] - field_bytes(request.events[i].ByteSize())
            continue
        growth = sum(
            value.ByteSize() - event.context[code].ByteSize() + 2 for code, value in event.normalized.items()
        )
        total += growth
        if event.key in first:  # answered with the first item of this event id
            index, first_growth = first[event.key]
            total += request.events[index].ByteSize() + first_growth + REPLY_OVERHEAD_BYTES
        else:
            first[event.key] = (i, growth)
    return total


def compact_reply_bytes(checked: Sequence[NewEvent | list[FieldViolation]], errors: Mapping[int, int]) -> int:
    """An upper bound of the TrackEventsResponse to a request with ``omit_stored_events``: a
    stored item's result is empty (or only ``deduplicated``), a bad item's is its error, whose
    encoded size ``errors`` gives by index."""
    return REPLY_OVERHEAD_BYTES * len(checked) + sum(errors.values())


def batch_item(
    item: ingestion_pb2.TrackEventsItem, index: int, arrival: Arrival
) -> NewEvent | list[FieldViolation]:
    # Validated without the item's path, which is put before the paths of violations only: the
    # valid item, the hot path of a batch, formats no path at all.
    # HasField is a cheaper call than WhichOneof (which makes a text of the member's name).
    if item.HasField("customer_event"):
        which = "customer_event"
        checked = customer_event(item.customer_event, arrival)
    elif item.HasField("system_event"):
        which = "system_event"
        checked = system_event(item.system_event, arrival)
    else:
        return [FieldViolation(f"events[{index}]", "one of customer_event or system_event is required")]
    if isinstance(checked, NewEvent):
        return checked
    return [violation.under(f"events[{index}].{which}") for violation in checked]


def batch_items(
    items: Sequence[ingestion_pb2.TrackEventsItem], arrival: Arrival
) -> list[NewEvent | list[FieldViolation]]:
    """``batch_item`` of each item of a request, in a compiled loop (interpreted in the servicer,
    the loop was ~2 % of the service's samples per batch event)."""
    return [batch_item(item, i, arrival) for i, item in enumerate(items)]


@dataclass(frozen=True, slots=True)
class CustomerChange:
    """A valid profile upsert: the new values and which of them to apply."""

    customer_id: str
    email: str
    phone: str
    push_tokens: list[str]
    attributes_json: str
    email_consent: int
    sms_consent: int
    push_consent: int
    fields: frozenset[str]


def customer_change(request: ingestion_pb2.UpsertCustomerRequest) -> CustomerChange | list[FieldViolation]:
    customer = request.customer
    violations = present([check_customer_id(customer.customer_id, "customer.customer_id")])
    # An empty mask replaces every field (UpsertCustomerRequest.update_mask).
    mask = field_masks.read(request.update_mask, CUSTOMER_FIELDS, when_empty=CUSTOMER_FIELDS)
    violations += mask.violations
    if customer.email:
        bad_email = check_email(customer.email, "customer.email")
        if bad_email:
            violations.append(bad_email)
    if customer.phone and not _PHONE.fullmatch(customer.phone):
        violations.append(
            FieldViolation("customer.phone", "phone must be in E.164 form, e.g. +4915112345678")
        )
    if len(customer.push_tokens) > MAX_PUSH_TOKENS:
        violations.append(FieldViolation("customer.push_tokens", f"at most {MAX_PUSH_TOKENS} push tokens"))
    for i, token in enumerate(customer.push_tokens):
        if not token or len(token) > MAX_PUSH_TOKEN_CHARS or "\x00" in token:
            violations.append(
                FieldViolation(
                    f"customer.push_tokens[{i}]",
                    f"push token must be 1 to {MAX_PUSH_TOKEN_CHARS} characters without NUL",
                )
            )
    for field in ("email_consent", "sms_consent", "push_consent"):
        if getattr(customer, field) not in _CONSENTS:
            violations.append(FieldViolation(f"customer.{field}", "unknown consent value"))
    attributes = encode_values(customer.attributes, "customer.attributes", "attribute code")
    violations.extend(attributes.violations)
    if violations:
        return violations
    return CustomerChange(
        customer_id=customer.customer_id,
        email=customer.email,
        phone=customer.phone,
        push_tokens=list(dict.fromkeys(customer.push_tokens)),
        attributes_json=attributes.json,
        email_consent=customer.email_consent,
        sms_consent=customer.sms_consent,
        push_consent=customer.push_consent,
        fields=mask.paths,
    )


def check_email(address: str, field: str) -> FieldViolation | None:
    """An address messages can be sent to, and safe in an SMTP header.

    email-validator checks the addr-spec of RFC 5321/5322 (dot-atom local
    part, a domain of valid labels with a dot, length limits, IDNA), without
    quoted local parts, IP literals, display names or special-use domains
    (.local, .test, .invalid...), and without DNS look-ups: nothing a
    header could be injected through (``<``, ``>``, ``,``, ``;``, CR, LF)
    passes. The address is stored as sent.
    """
    try:
        email_validator.validate_email(
            address, check_deliverability=False, allow_quoted_local=False, allow_domain_literal=False
        )
    except email_validator.EmailNotValidError as exc:
        return FieldViolation(field, f"{quote(address)} is not an e-mail address: {exc}")
    return None


def check_names(names: Sequence[str], field: str) -> list[FieldViolation]:
    return present(check_code(name, f"{field}[{i}]", "event name") for i, name in enumerate(names))
