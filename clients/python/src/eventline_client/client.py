"""The asyncio client: events in (one by one or in batches of any size), customers, timelines.

Every write carries an event id, generated when not given, so that a retry can never store
an event twice: calls that fail with ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` are repeated,
with the same ids, after an exponential backoff with jitter. Anything else raises a typed
:class:`~eventline_client.errors.EventlineError` at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from eventline_client.connection import Tls, open_channel
from eventline_client.errors import EventlineError, ResourceExhaustedError, from_rpc_error, from_status
from eventline_client.events import (
    CustomerEvent,
    Event,
    Outcome,
    Refused,
    SystemEvent,
    Tracked,
    new_event_id,
    relative_to_item,
)
from eventline_client.values import ContextValue, to_context, to_timestamp

Q = TypeVar("Q")
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

MAX_BATCH_EVENTS = 1000
"""The most events the server takes in one TrackEvents call (its default)."""

MAX_BATCH_BYTES = 1024 * 1024
"""The client's bound on one TrackEvents request: far below the 4 MiB that default gRPC
clients accept in a reply (which echoes every stored event) and the server's 16 MiB."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call failing with ``UNAVAILABLE`` or
    ``DEADLINE_EXCEEDED`` is repeated: ``attempts`` in all, waiting a random time up to
    ``initial_backoff_s * multiplier**n`` (capped at ``max_backoff_s``) before repeat n."""

    attempts: int = 6
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts is at least 1 (1 means no retries)")

    def backoff_s(self, retry: int) -> float:
        """The wait before repeat ``retry`` (0 for the first repeat): full jitter."""
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry))


class TrackManyError(EventlineError):
    """A batch of ``track_many`` failed for good (after retries, or with an error no retry
    can fix, such as ``UNAUTHENTICATED``). The other batches were still sent.

    ``outcomes`` holds the outcome of every event whose batch got an answer and None for
    the others; ``event_ids`` the id each event was sent with (generated ones included), so
    that :meth:`unsent` gives the events to send again without any risk of doubles.
    """

    def __init__(
        self,
        cause: EventlineError,
        events: Sequence[Event],
        event_ids: list[str],
        outcomes: list[Outcome | None],
    ) -> None:
        super().__init__(cause.message, cause.violations, cause.details, code=cause.code)
        self.cause = cause
        self.events = events
        self.event_ids = event_ids
        self.outcomes = outcomes

    def unsent(self) -> list[Event]:
        """The events without an outcome, with the ids they were sent with."""
        from dataclasses import replace

        return [
            replace(event, event_id=event_id)
            for event, event_id, outcome in zip(self.events, self.event_ids, self.outcomes, strict=True)
            if outcome is None
        ]


def _consent(value: bool | None) -> common_pb2.Consent:
    if value is None:
        return common_pb2.CONSENT_UNSPECIFIED
    return common_pb2.CONSENT_GRANTED if value else common_pb2.CONSENT_DENIED


INGESTION = ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name


def _unary(
    channel: grpc.aio.Channel, service: str, name: str, request: type[M], response: type[R]
) -> grpc.aio.UnaryUnaryMultiCallable[M, R]:
    return channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )


class IngestionMethods:
    """The ingestion RPCs as typed callables (what the generated stub is, with types)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        pb = ingestion_pb2
        self.TrackCustomerEvent = _unary(
            channel,
            INGESTION,
            "TrackCustomerEvent",
            pb.TrackCustomerEventRequest,
            pb.TrackCustomerEventResponse,
        )
        self.TrackSystemEvent = _unary(
            channel, INGESTION, "TrackSystemEvent", pb.TrackSystemEventRequest, pb.TrackSystemEventResponse
        )
        self.TrackEvents = _unary(
            channel, INGESTION, "TrackEvents", pb.TrackEventsRequest, pb.TrackEventsResponse
        )
        self.TrackEventsEncoded: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.TrackEventsResponse] = (
            channel.unary_unary(
                f"/{INGESTION}/TrackEvents",
                request_serializer=None,
                response_deserializer=pb.TrackEventsResponse.FromString,
            )
        )
        """TrackEvents taking its request already serialized: track_many sends the
        concatenation of its items' bytes, each as field 1 of TrackEventsRequest."""
        self.UpsertCustomer = _unary(
            channel, INGESTION, "UpsertCustomer", pb.UpsertCustomerRequest, pb.UpsertCustomerResponse
        )
        self.GetCustomer = _unary(
            channel, INGESTION, "GetCustomer", pb.GetCustomerRequest, pb.GetCustomerResponse
        )
        self.ListTimeline = _unary(
            channel, INGESTION, "ListTimeline", pb.ListTimelineRequest, pb.ListTimelineResponse
        )
        self.EraseCustomer = _unary(
            channel, INGESTION, "EraseCustomer", pb.EraseCustomerRequest, pb.EraseCustomerResponse
        )


class AsyncClient:
    """An Eventline client for asyncio code. Use it as ``async with AsyncClient(...)``, or
    call :meth:`close` when done; one client (one channel) serves a whole process.

    ``target`` is ``host:port`` of the ingestion service, or ``dns:///name:port`` to spread
    calls over every address the name resolves to. ``api_key`` is sent as
    ``authorization: Bearer …``; ``tls`` turns on TLS (mutual with a client certificate).
    Each attempt of a call has ``deadline_s`` seconds.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        deadline_s: float = 10.0,
        retry: RetryPolicy | None = None,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        concurrency: int = 4,
        channel_retries: int = 4,
        channel_options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        if not 1 <= max_batch_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_batch_events is 1 to {MAX_BATCH_EVENTS}")
        if concurrency < 1:
            raise ValueError("concurrency is at least 1")
        self.target = target
        self.deadline_s = deadline_s
        self.retry = retry or RetryPolicy()
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.concurrency = concurrency
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self.channel = open_channel(target, tls, channel_retries, channel_options)
        """The channel, for stubs of the other services (send ``metadata`` with each call)."""
        self.ingestion = IngestionMethods(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    # ------------------------------------------------------------------ calls

    async def call(self, method: grpc.aio.UnaryUnaryMultiCallable[Q, R], request: Q) -> R:
        """Call an RPC with the client's deadline, API key and retries (``call(client.ingestion.
        GetCustomer, request)``, or a method of another service's stub on ``client.channel``)."""
        retry = 0
        while True:
            try:
                return await method(
                    request, timeout=self.deadline_s, metadata=self.metadata, wait_for_ready=retry > 0 or None
                )
            except grpc.aio.AioRpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not error.retryable or retry + 1 >= self.retry.attempts:
                    raise error from None
            await asyncio.sleep(self.retry.backoff_s(retry))
            retry += 1

    # ------------------------------------------------------------------ events

    async def track(
        self,
        customer_id: str,
        name: str,
        context: Mapping[str, ContextValue] | None = None,
        occurred_at: dt.datetime | None = None,
        *,
        event_id: str | None = None,
    ) -> Tracked:
        """Record that customer ``customer_id`` did ``name``; ``occurred_at`` defaults to now
        (as the server receives it). Raises ``InvalidArgumentError`` naming the bad fields."""
        event = CustomerEvent(customer_id, name, context or {}, occurred_at, event_id)
        reply = await self.call(self.ingestion.TrackCustomerEvent, event.request(event_id or new_event_id()))
        return Tracked(reply.event, reply.deduplicated)

    async def track_system(
        self,
        name: str,
        context: Mapping[str, ContextValue] | None = None,
        occurred_at: dt.datetime | None = None,
        *,
        event_id: str | None = None,
    ) -> Tracked:
        """Record a system event (one that concerns every customer)."""
        event = SystemEvent(name, context or {}, occurred_at, event_id)
        reply = await self.call(self.ingestion.TrackSystemEvent, event.request(event_id or new_event_id()))
        return Tracked(reply.event, reply.deduplicated)

    async def track_many(
        self, events: Iterable[Event], *, concurrency: int | None = None, bulk_import: bool = False
    ) -> list[Outcome]:
        """Record any number of events: sent in batches of at most ``max_batch_events``
        events and ``max_batch_bytes`` bytes, ``concurrency`` batches at a time.

        ``bulk_import``: the events are a history being loaded (an import, a backfill), not live
        traffic; real-time segments may then catch up on them after the import, within the
        operator's bound (``TrackEventsRequest.bulk_import``).

        Returns one outcome per event, in input order: :class:`Tracked` (stored) or
        :class:`Refused` (bad input; the other events are stored all the same). A batch that
        fails for good raises :class:`TrackManyError` once the other batches are done.
        """
        events = list(events)
        event_ids = [event.event_id or new_event_id() for event in events]
        # Each item serialized once, as a field of TrackEventsRequest: its size is exact and a
        # batch is the concatenation of its items, with no message copied.
        items = [
            _request_field(event.item(event_id).SerializeToString())
            for event, event_id in zip(events, event_ids, strict=True)
        ]
        hint = _BULK_IMPORT_FIELD if bulk_import else b""
        outcomes: list[Outcome | None] = [None] * len(items)
        pending = list(self._batches(items))
        pending.reverse()
        failures: list[EventlineError] = []

        async def send(start: int, batch: list[bytes]) -> None:
            try:
                reply = await self.call(self.ingestion.TrackEventsEncoded, b"".join(batch) + hint)
            except ResourceExhaustedError:
                if len(batch) == 1:
                    raise
                # The server bounds requests by more than our limits (its reply must fit the
                # client's): halve the batch until it fits.
                half = len(batch) // 2
                await send(start, batch[:half])
                await send(start + half, batch[half:])
                return
            for index, result in enumerate(reply.results, start):
                if result.HasField("error"):
                    outcomes[index] = Refused(event_ids[index], relative_to_item(from_status(result.error)))
                else:
                    outcomes[index] = Tracked(result.event, result.deduplicated)

        async def worker() -> None:
            while not failures and pending:
                start, batch = pending.pop()
                try:
                    await send(start, batch)
                except EventlineError as error:
                    failures.append(error)

        workers = min(concurrency or self.concurrency, len(pending))
        await asyncio.gather(*(worker() for _ in range(workers)))
        if failures:
            raise TrackManyError(failures[0], events, event_ids, outcomes)
        if None in outcomes:
            raise EventlineError(f"the server sent no result for event {outcomes.index(None)}")
        return outcomes  # type: ignore[return-value]  # no None left

    def _batches(self, items: list[bytes]) -> Iterable[tuple[int, list[bytes]]]:
        """Consecutive runs of ``items`` within the count and byte limits, with their start."""
        start, size = 0, 0
        for index, item in enumerate(items):
            if index > start and (
                index - start >= self.max_batch_events or size + len(item) > self.max_batch_bytes
            ):
                yield start, items[start:index]
                start, size = index, 0
            size += len(item)
        if start < len(items):
            yield start, items[start:]

    # ------------------------------------------------------------------ customers

    async def upsert_customer(
        self,
        customer_id: str,
        *,
        email: str | None = None,
        phone: str | None = None,
        push_tokens: Sequence[str] | None = None,
        attributes: Mapping[str, ContextValue] | None = None,
        email_consent: bool | None = None,
        sms_consent: bool | None = None,
        push_consent: bool | None = None,
    ) -> common_pb2.Customer:
        """Create a customer or change the fields given (the others keep their values);
        returns the profile as stored. Consent: True granted, False denied."""
        given = {
            "email": email,
            "phone": phone,
            "push_tokens": push_tokens,
            "attributes": attributes,
            "email_consent": email_consent,
            "sms_consent": sms_consent,
            "push_consent": push_consent,
        }
        customer = common_pb2.Customer(
            customer_id=customer_id,
            email=email or "",
            phone=phone or "",
            push_tokens=list(push_tokens or ()),
            attributes=to_context(attributes),
            email_consent=_consent(email_consent),
            sms_consent=_consent(sms_consent),
            push_consent=_consent(push_consent),
        )
        mask = field_mask_pb2.FieldMask(paths=[path for path, value in given.items() if value is not None])
        if not mask.paths:
            raise ValueError("give at least one field to set (events create unknown customers by themselves)")
        reply = await self.call(
            self.ingestion.UpsertCustomer,
            ingestion_pb2.UpsertCustomerRequest(customer=customer, update_mask=mask),
        )
        return reply.customer

    async def get_customer(self, customer_id: str) -> common_pb2.Customer:
        """A customer's profile; ``NotFoundError`` when there is none."""
        reply = await self.call(
            self.ingestion.GetCustomer, ingestion_pb2.GetCustomerRequest(customer_id=customer_id)
        )
        return reply.customer

    async def timeline(
        self,
        customer_id: str,
        *,
        names: Sequence[str] = (),
        occurred_after: dt.datetime | None = None,
        occurred_before: dt.datetime | None = None,
        page_size: int = 200,
    ) -> AsyncGenerator[common_pb2.Event, None]:
        """A customer's events, newest first, read page by page as you iterate."""
        request = ingestion_pb2.ListTimelineRequest(
            customer_id=customer_id,
            page_size=page_size,
            event_names=list(names),
            occurred_after=to_timestamp(occurred_after) if occurred_after else None,
            occurred_before=to_timestamp(occurred_before) if occurred_before else None,
        )
        while True:
            page = await self.call(self.ingestion.ListTimeline, request)
            for event in page.events:
                yield event
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def erase_customer(self, customer_id: str) -> ingestion_pb2.EraseCustomerResponse:
        """Erase a customer's profile and events (needs an ``admin`` key when auth is on)."""
        return await self.call(
            self.ingestion.EraseCustomer, ingestion_pb2.EraseCustomerRequest(customer_id=customer_id)
        )


_BULK_IMPORT_FIELD = b"\x18\x01"
"""``bulk_import = true`` (field 3 of TrackEventsRequest, a varint), appended to a batch's items."""


def _request_field(item: bytes) -> bytes:
    """``item`` as field 1 (``events``) of TrackEventsRequest: tag, length varint, bytes."""
    length, varint = len(item), bytearray()
    while length > 0x7F:
        varint.append(0x80 | (length & 0x7F))
        length >>= 7
    varint.append(length)
    return b"\x0a" + bytes(varint) + item
