"""The events a client sends and what became of each."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_client.errors import EventlineError, FieldViolation
from eventline_client.values import ContextValue, set_context, set_timestamp


def new_event_id() -> str:
    """A fresh event id: 128 random bits as 32 hex digits, unique without coordination."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class CustomerEvent:
    """Something one customer did. ``event_id`` is generated when not given; give your own
    (an order number, say) to make repeats across restarts of your process safe too."""

    customer_id: str
    name: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    occurred_at: dt.datetime | None = None
    event_id: str | None = None

    def fill(self, request: ingestion_pb2.TrackCustomerEventRequest, event_id: str) -> None:
        """Set the fields of ``request`` (fields set in place: no message is copied)."""
        request.event_id = event_id
        request.customer_id = self.customer_id
        request.name = self.name
        set_context(request.context, self.context)
        if self.occurred_at is not None:
            set_timestamp(request.occurred_at, self.occurred_at)

    def request(self, event_id: str) -> ingestion_pb2.TrackCustomerEventRequest:
        request = ingestion_pb2.TrackCustomerEventRequest()
        self.fill(request, event_id)
        return request

    def item(self, event_id: str) -> ingestion_pb2.TrackEventsItem:
        item = ingestion_pb2.TrackEventsItem()
        self.fill(item.customer_event, event_id)
        return item


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """Something that concerns every customer ("item X is back in stock")."""

    name: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    occurred_at: dt.datetime | None = None
    event_id: str | None = None

    def fill(self, request: ingestion_pb2.TrackSystemEventRequest, event_id: str) -> None:
        """Set the fields of ``request`` (fields set in place: no message is copied)."""
        request.event_id = event_id
        request.name = self.name
        set_context(request.context, self.context)
        if self.occurred_at is not None:
            set_timestamp(request.occurred_at, self.occurred_at)

    def request(self, event_id: str) -> ingestion_pb2.TrackSystemEventRequest:
        request = ingestion_pb2.TrackSystemEventRequest()
        self.fill(request, event_id)
        return request

    def item(self, event_id: str) -> ingestion_pb2.TrackEventsItem:
        item = ingestion_pb2.TrackEventsItem()
        self.fill(item.system_event, event_id)
        return item


Event = CustomerEvent | SystemEvent


@dataclass(frozen=True, slots=True)
class Tracked:
    """An event that is stored: the stored event, and whether its id had been seen before.

    ``deduplicated`` is also true for an event that an earlier attempt of the same call
    stored before a connection broke: the retry found it stored.
    """

    event: common_pb2.Event
    deduplicated: bool

    ok = True

    @property
    def event_id(self) -> str:
        return self.event.event_id


_ITEM_PREFIX = re.compile(r"^events\[\d+\]\.(?:customer_event|system_event)(?:\.|$)")


@dataclass(frozen=True, slots=True)
class Refused:
    """An event of a batch that the server refused (nothing of it is stored); ``error`` is
    the typed error, whose violations name fields relative to the event (``name``,
    ``context["item-id"]``), not to the batch."""

    event_id: str
    error: EventlineError

    ok = False

    @property
    def violations(self) -> tuple[FieldViolation, ...]:
        return self.error.violations


def relative_to_item(error: EventlineError) -> EventlineError:
    """``error`` with its field paths made relative to the batch item they are about."""
    violations = [FieldViolation(_ITEM_PREFIX.sub("", v.field), v.description) for v in error.violations]
    return type(error)(error.message, violations, error.details, code=error.code)


Outcome = Tracked | Refused
