"""Event names and stream entries that Eventline writes itself, never a client.

Segmentation records every transition of a real-time segment as the customer
event ``SEGMENT_ENTERED`` or ``SEGMENT_EXITED`` (context ``segment_id``,
``segment_name``); ingestion refuses both names from clients, so a campaign
triggered by them (a ``SegmentTrigger``) acts on real transitions only.

``PROFILE_CHANGED`` names a *notice*, not an event: a stream entry ingestion
publishes after UpsertCustomer while real-time segments exist, so segmentation
re-evaluates the customer's profile conditions at once. Its payload is an
``Event`` of kind ``EVENT_KIND_UNSPECIFIED`` with only its id, customer and
name: consumers that act on customer or system events pass over it, and no
client event can carry the name (event names start with a letter or "_").
"""

from __future__ import annotations

import uuid

from eventline.common.v1 import common_pb2

from eventline_shared.streams import stream

SEGMENT_ENTERED = "segment_entered"
SEGMENT_EXITED = "segment_exited"
RESERVED_EVENT_NAMES = frozenset({SEGMENT_ENTERED, SEGMENT_EXITED})
"""Customer event names clients may not send (INVALID_ARGUMENT)."""

PROFILE_CHANGED = "$profile_changed"


def profile_notice(customer_id: str) -> bytes:
    """The packed stream entry (``stream.pack_entry``) telling consumers a customer's profile
    changed; its id is unique, so no consumer mistakes it for a repeat."""
    event_id = f"profile.{uuid.uuid4().hex}"
    notice = common_pb2.Event(event_id=event_id, customer_id=customer_id, name=PROFILE_CHANGED)
    return stream.pack_entry(customer_id, event_id, PROFILE_CHANGED, notice.SerializeToString(), "")
