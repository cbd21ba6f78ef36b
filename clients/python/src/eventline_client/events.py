"""The events a client sends and what became of each."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_client.errors import EventlineError, FieldViolation
from eventline_client.values import ContextValue, to_context, to_timestamp


def new_event_id() -> str:
    """A fresh event id (a random UUID, 32 hex digits): unique without coordination."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class CustomerEvent:
    """Something one customer did. ``event_id`` is generated when not given; give your own
    (an order number, say) to make repeats across restarts of your process safe too."""

    customer_id: str
    name: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    occurred_at: dt.datetime | None = None
    event_id: str | None = None

    def request(self, event_id: str) -> ingestion_pb2.TrackCustomerEventRequest:
        return ingestion_pb2.TrackCustomerEventRequest(
            event_id=event_id,
            customer_id=self.customer_id,
            name=self.name,
            context=to_context(self.context),
            occurred_at=to_timestamp(self.occurred_at) if self.occurred_at is not None else None,
        )

    def item(self, event_id: str) -> ingestion_pb2.TrackEventsItem:
        return ingestion_pb2.TrackEventsItem(customer_event=self.request(event_id))


@dataclass(frozen=True)
class SystemEvent:
    """Something that concerns every customer ("item X is back in stock")."""

    name: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    occurred_at: dt.datetime | None = None
    event_id: str | None = None

    def request(self, event_id: str) -> ingestion_pb2.TrackSystemEventRequest:
        return ingestion_pb2.TrackSystemEventRequest(
            event_id=event_id,
            name=self.name,
            context=to_context(self.context),
            occurred_at=to_timestamp(self.occurred_at) if self.occurred_at is not None else None,
        )

    def item(self, event_id: str) -> ingestion_pb2.TrackEventsItem:
        return ingestion_pb2.TrackEventsItem(system_event=self.request(event_id))


Event = CustomerEvent | SystemEvent


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
