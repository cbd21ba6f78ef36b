"""SegmentationService: validate the request, compile, run, map the answer."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc

from eventline_segmentation import compiler, evaluation, filters, periods
from eventline_segmentation.membership import MembershipRepository
from eventline_segmentation.repository import SegmentationRepository, StoredSegment
from eventline_shared import paging, values
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.errors import (
    EventlineError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    invalid,
    quote,
    raise_if_any,
)
from eventline_shared.grpc_server import Context, database_timeout
from eventline_shared.paging import MAX_REPLY_BYTES, PageTokens

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
DEFAULT_CHUNK = 5000
STREAM_PAGE = MAX_PAGE
"""Ids a stream reads per query (its chunks are cut from these pages)."""
WATCH_PAGE = 1000
"""Transitions WatchSegment reads per query."""
WATCH_POLL_S = 0.1
"""How often a WatchSegment stream that has sent everything looks for new transitions."""
DEFAULT_SEGMENT_PAGE = 50
MAX_SEGMENT_PAGE = 1000
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2000
MAX_LISTED_VIOLATIONS = 100
"""ValidateFilter lists at most this many problems (a huge bad filter must not make a huge reply)."""
MAX_REQUIRED_EVENT_IDS = 100
"""Event ids one MatchCustomer call may require (a campaign passes its one trigger event)."""
_NOW_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NOW_MAX = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
_NOW_BOUNDS = "between 1970 and 9000"
_SEGMENT_FIELDS_BYTES = 16 * 1024
"""The most a segment's fields other than its filter take in a reply (id, names, times)."""


class EvaluationRequest(Protocol):
    """What Count/List/Stream/MatchCustomer requests have in common."""

    filter: pb.Filter
    segment_id: str
    bindings: Any
    now: Any
    time_zone: str

    def WhichOneof(self, name: str) -> str | None: ...
    def HasField(self, name: str) -> bool: ...


@dataclass
class Prepared:
    root: filters.Node
    clock: periods.Clock
    target_key: str
    """A digest of what was evaluated (target, bindings, time zone), for page tokens."""


def _digest(target: bytes, bindings: Any, zone: str) -> str:
    h = hashlib.sha256(target)
    for code in sorted(bindings):
        h.update(code.encode() + b"\0" + bindings[code].SerializeToString(deterministic=True))
    h.update(b"\0" + zone.encode())
    return h.hexdigest()[:24]


def check_segment_id(value: str, field: str) -> FieldViolation | None:
    return values.check_event_id(value, field, "segment id")


def _fits_a_reply(filter_bytes: int, field: str) -> None:
    """Refuse, before storing, a segment whose every later reply would be too large."""
    if filter_bytes + _SEGMENT_FIELDS_BYTES > MAX_REPLY_BYTES:
        raise ResourceExhausted(
            [
                FieldViolation(
                    field,
                    f"the filter takes {filter_bytes:,} bytes; a saved segment must fit in a reply "
                    f"of {MAX_REPLY_BYTES:,} bytes",
                )
            ]
        )


def segment_message(stored: StoredSegment) -> pb.Segment:
    return pb.Segment(
        segment_id=stored.segment_id,
        display_name=stored.display_name,
        description=stored.description,
        filter=pb.Filter.FromString(stored.filter),
        create_time=values.datetime_to_timestamp(stored.created_at),
        update_time=values.datetime_to_timestamp(stored.updated_at),
        realtime=stored.realtime,
        time_zone=stored.time_zone,
    )


class TooManyStreams(EventlineError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StreamSlots:
    """At most ``size`` streams at once in this replica; one more is refused at once, not queued."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.open = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.open >= self.size:
            raise TooManyStreams(
                f"{self.size} StreamCustomers calls are already being served by this replica; retry later"
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        repository: SegmentationRepository,
        max_query_s: float,
        max_streams: int,
        tokens: PageTokens,
        clock: Clock = SYSTEM_CLOCK,
        members: MembershipRepository | None = None,
    ) -> None:
        self.members = members
        """Real-time segments' stored membership; None: segments cannot be made real-time."""
        self.watches = StreamSlots(max_streams)
        """WatchSegment streams (long-lived) have their own places: they never take StreamCustomers'."""
        self.clock = clock
        """The "now" a request without one is evaluated at."""
        self.repository = repository
        self.max_query_s = max_query_s
        self.streams = StreamSlots(max_streams)
        self.tokens = tokens

    # Evaluation ----------------------------------------------------------------------

    async def _prepare(self, request: EvaluationRequest, now: dt.datetime | None = None) -> Prepared:
        target = request.WhichOneof("target")
        if target == "filter":
            flt, path, raw = (
                request.filter,
                "filter",
                b"f" + request.filter.SerializeToString(deterministic=True),
            )
        elif target == "segment_id":
            raise_if_any(values.present([check_segment_id(request.segment_id, "segment_id")]))
            stored = await self.repository.get_segment(request.segment_id)
            flt, path = pb.Filter.FromString(stored.filter), "segment.filter"
            raw = b"s" + request.segment_id.encode() + b"\0" + stored.filter
        else:
            raise invalid("filter", "one of filter or segment_id is required")
        violations: list[FieldViolation] = []
        zone: dt.tzinfo = dt.UTC
        try:
            zone = periods.time_zone(request.time_zone)
        except InvalidArgument as exc:
            violations += exc.violations
        if now is None:
            if request.HasField("now"):
                bad = values.check_timestamp(
                    request.now, "now", earliest=_NOW_MIN, latest=_NOW_MAX, bounds=_NOW_BOUNDS
                )
                if bad:
                    violations.append(bad)
                else:
                    now = values.timestamp_to_datetime(request.now)
            else:
                now = self.clock.now()
        checked = filters.check(flt, path, request.bindings)
        violations += checked.violations
        raise_if_any(violations)
        assert checked.root is not None and now is not None
        return Prepared(
            checked.root, periods.Clock(now, zone), _digest(raw, request.bindings, request.time_zone)
        )

    async def CountCustomers(
        self, request: pb.CountCustomersRequest, context: Context
    ) -> pb.CountCustomersResponse:
        prepared = await self._prepare(request)
        query = compiler.count_query(prepared.root, prepared.clock)
        count = await self.repository.count(query, database_timeout(context, self.max_query_s))
        return pb.CountCustomersResponse(count=count, now=values.datetime_to_timestamp(prepared.clock.now))

    async def ListCustomers(
        self, request: pb.ListCustomersRequest, context: Context
    ) -> pb.ListCustomersResponse:
        size = paging.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        after, now, key = "", None, ""
        if request.page_token:
            # The token's key is checked once the target is known (a segment's filter may change).
            position = self.tokens.read(request.page_token, "ListCustomers", "", (str, dt.datetime, str))
            after, now, key = position.text(0), position.instant(1), position.text(2)
            if not _NOW_MIN <= now < _NOW_MAX:
                raise invalid("page_token", f"the page token's now must be {_NOW_BOUNDS}")
        prepared = await self._prepare(request, now)
        if request.page_token and key != prepared.target_key:
            raise invalid("page_token", "the page token belongs to another filter, bindings or time zone")
        query = compiler.ids_query(prepared.root, prepared.clock, after, size + 1)
        ids = await self.repository.ids(query, database_timeout(context, self.max_query_s))
        page = paging.fill(ids, size, paging.string_bytes)
        next_token = ""
        if len(page) < len(ids):
            next_token = self.tokens.issue(
                "ListCustomers", "", (page[-1], prepared.clock.now, prepared.target_key)
            )
        return pb.ListCustomersResponse(
            customer_ids=page,
            next_page_token=next_token,
            now=values.datetime_to_timestamp(prepared.clock.now),
        )

    async def StreamCustomers(
        self, request: pb.StreamCustomersRequest, context: Context
    ) -> AsyncIterator[pb.StreamCustomersResponse]:
        # A chunk of 10,000 ids of at most 128 bytes is far below a reply's 4 MB.
        chunk = paging.page_size(request.chunk_size, DEFAULT_CHUNK, MAX_PAGE, "chunk_size")
        after = request.after_customer_id
        if after:
            raise_if_any(values.present([values.check_customer_id(after, "after_customer_id")]))
        with self.streams.slot():  # first: refusing a stream must cost next to nothing
            prepared = await self._prepare(request)
            # Keyset pages, each its own short query: nothing of the database is held
            # while the client reads (or does not).
            while True:
                query = compiler.ids_query(prepared.root, prepared.clock, after, STREAM_PAGE)
                ids = await self.repository.stream_page(
                    query, lambda: database_timeout(context, self.max_query_s)
                )
                last_page = len(ids) < STREAM_PAGE
                after = ids[-1] if ids else after
                # The page is held as its replies (compact protobuf), not as Python strings:
                # a stream waiting for its client holds a few hundred KB at most.
                replies = collections.deque(
                    pb.StreamCustomersResponse(customer_ids=ids[start : start + chunk])
                    for start in range(0, len(ids), chunk)
                )
                del ids
                while replies:
                    yield replies.popleft()
                if last_page:
                    return

    async def MatchCustomer(
        self, request: pb.MatchCustomerRequest, context: Context
    ) -> pb.MatchCustomerResponse:
        bad = values.present(
            [
                values.check_customer_id(request.customer_id, "customer_id"),
                *(
                    values.check_event_id(event_id, f"required_event_ids[{i}]")
                    for i, event_id in enumerate(request.required_event_ids)
                ),
            ]
        )
        if len(request.required_event_ids) > MAX_REQUIRED_EVENT_IDS:
            bad.append(FieldViolation("required_event_ids", f"at most {MAX_REQUIRED_EVENT_IDS} event ids"))
        if bad:
            raise InvalidArgument(bad[:MAX_LISTED_VIOLATIONS])
        prepared = await self._prepare(request)
        query = compiler.match_query(prepared.root, prepared.clock, request.customer_id)
        row = await self.repository.match(
            query,
            request.customer_id,
            request.required_event_ids,
            database_timeout(context, self.max_query_s),
        )
        if row is None:
            raise NotFound(f"customer {quote(request.customer_id)} does not exist")
        matched, explanations = evaluation.explain(query, row, prepared.clock)
        response = pb.MatchCustomerResponse(
            matched=matched, now=values.datetime_to_timestamp(prepared.clock.now)
        )
        for e in explanations:
            node = response.nodes.add(path=e.path, held=e.held, count=e.count)
            if e.last is not None:
                node.last_occurred_at.CopyFrom(values.datetime_to_timestamp(e.last))
            if e.first is not None:
                node.first_occurred_at.CopyFrom(values.datetime_to_timestamp(e.first))
            if e.days_since_last is not None:
                node.days_since_last = e.days_since_last
            if e.value is not None:
                node.value.CopyFrom(e.value)
        return response

    async def ValidateFilter(
        self, request: pb.ValidateFilterRequest, context: Context
    ) -> pb.ValidateFilterResponse:
        checked = filters.check(request.filter, "filter", None, present=request.HasField("filter"))
        # Check the references against the bindings given, without making them violations.
        unresolved = sorted(code for code in checked.references if code not in request.bindings)
        violations = list(checked.violations)
        for code in sorted(checked.references):
            if code in request.bindings:
                _, bad = filters.operand_of(request.bindings[code], values.quote_path("bindings", code))
                if bad:
                    violations.append(bad)
        return pb.ValidateFilterResponse(
            valid=not violations,
            violations=[
                pb.FilterViolation(field=v.field, description=v.description)
                for v in violations[:MAX_LISTED_VIOLATIONS]
            ],
            references=sorted(checked.references),
            unresolved_references=unresolved,
        )

    # Saved segments ------------------------------------------------------------------

    def _check_segment(
        self, segment: pb.Segment, paths: set[str], prefix: str = "segment"
    ) -> list[FieldViolation]:
        found: list[FieldViolation] = []
        if "display_name" in paths:
            name = segment.display_name
            if not name.strip():
                found.append(FieldViolation(f"{prefix}.display_name", "display name is required"))
            elif len(name) > MAX_DISPLAY_NAME or "\x00" in name:
                found.append(
                    FieldViolation(
                        f"{prefix}.display_name",
                        f"display name is at most {MAX_DISPLAY_NAME} characters, no NUL",
                    )
                )
        if "description" in paths and (
            len(segment.description) > MAX_DESCRIPTION or "\x00" in segment.description
        ):
            found.append(
                FieldViolation(
                    f"{prefix}.description", f"description is at most {MAX_DESCRIPTION} characters, no NUL"
                )
            )
        if "filter" in paths:
            checked = filters.check(
                segment.filter, f"{prefix}.filter", None, present=segment.HasField("filter")
            )
            found += checked.violations
        if "time_zone" in paths:
            try:
                periods.time_zone(segment.time_zone, f"{prefix}.time_zone")
            except InvalidArgument as exc:
                found += exc.violations
        return found

    async def CreateSegment(
        self, request: pb.CreateSegmentRequest, context: Context
    ) -> pb.CreateSegmentResponse:
        violations = self._check_segment(
            request.segment, {"display_name", "description", "filter", "time_zone"}
        )
        segment_id = request.segment_id
        if segment_id:
            violations += values.present([check_segment_id(segment_id, "segment_id")])
        else:
            segment_id = uuid.uuid4().hex
        raise_if_any(violations)
        _fits_a_reply(request.segment.filter.ByteSize(), "segment.filter")
        stored = await self.repository.create_segment(
            segment_id,
            request.segment.display_name,
            request.segment.description,
            request.segment.filter.SerializeToString(deterministic=True),
            request.segment.realtime,
            request.segment.time_zone,
            self._segment_changed,
        )
        return pb.CreateSegmentResponse(segment=segment_message(stored))

    async def GetSegment(self, request: pb.GetSegmentRequest, context: Context) -> pb.GetSegmentResponse:
        raise_if_any(values.present([check_segment_id(request.segment_id, "segment_id")]))
        return pb.GetSegmentResponse(
            segment=segment_message(await self.repository.get_segment(request.segment_id))
        )

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: Context
    ) -> pb.ListSegmentsResponse:
        size = paging.page_size(request.page_size, DEFAULT_SEGMENT_PAGE, MAX_SEGMENT_PAGE)
        bound_to = paging.scope(request)
        after = ""
        if request.page_token:
            after = self.tokens.read(request.page_token, "ListSegments", bound_to, (str,)).text(0)
        stored = await self.repository.list_segments(after, size + 1, paging.READ_BYTES)
        segments = [segment_message(s) for s in stored]
        page = paging.fill(segments, size, paging.message_bytes)
        next_token = ""
        if len(page) < len(segments):
            next_token = self.tokens.issue("ListSegments", bound_to, (page[-1].segment_id,))
        return pb.ListSegmentsResponse(segments=page, next_page_token=next_token)

    async def UpdateSegment(
        self, request: pb.UpdateSegmentRequest, context: Context
    ) -> pb.UpdateSegmentResponse:
        allowed = {"display_name", "description", "filter", "realtime", "time_zone"}
        paths = set(request.update_mask.paths) or {"display_name", "description", "filter"}
        unknown = sorted(paths - allowed)
        violations = [
            FieldViolation(
                "update_mask",
                f"unknown field {quote(p)}; use display_name, description, filter, realtime or time_zone",
            )
            for p in unknown
        ]
        violations += values.present([check_segment_id(request.segment.segment_id, "segment.segment_id")])
        violations += self._check_segment(request.segment, paths & allowed)
        raise_if_any(violations)
        if "filter" in paths:
            _fits_a_reply(request.segment.filter.ByteSize(), "segment.filter")
        changes: dict[str, Any] = {}
        for p in paths:
            if p == "filter":
                changes[p] = request.segment.filter.SerializeToString(deterministic=True)
            else:
                changes[p] = getattr(request.segment, p)
        stored = await self.repository.update_segment(
            request.segment.segment_id, changes, self._segment_changed
        )
        return pb.UpdateSegmentResponse(segment=segment_message(stored))

    async def DeleteSegment(
        self, request: pb.DeleteSegmentRequest, context: Context
    ) -> pb.DeleteSegmentResponse:
        raise_if_any(values.present([check_segment_id(request.segment_id, "segment_id")]))
        await self.repository.delete_segment(request.segment_id)
        return pb.DeleteSegmentResponse()

    async def GetSegmentSize(
        self, request: pb.GetSegmentSizeRequest, context: Context
    ) -> pb.GetSegmentSizeResponse:
        stored_size = await self._stored_size(request)
        if stored_size is not None:
            return pb.GetSegmentSizeResponse(
                size=stored_size, now=values.datetime_to_timestamp(self.clock.now()), stored=True
            )
        count_request = pb.CountCustomersRequest(
            segment_id=request.segment_id, bindings=request.bindings, time_zone=request.time_zone
        )
        if request.HasField("now"):
            count_request.now.CopyFrom(request.now)
        counted = await self.CountCustomers(count_request, context)
        return pb.GetSegmentSizeResponse(size=counted.count, now=counted.now)

    # Real-time segments (issue 13) ---------------------------------------------------

    async def _segment_changed(
        self, connection: Any, before: StoredSegment | None, after: StoredSegment
    ) -> None:
        """In the transaction that saved a segment: start, restart or stop keeping its membership."""
        was = before is not None and before.realtime
        if not (was or after.realtime):
            return
        if self.members is None:
            raise FailedPrecondition("this server does not keep real-time segments")
        if after.realtime:
            checked = filters.check(pb.Filter.FromString(after.filter), "segment.filter", {})
            raise_if_any(
                [
                    FieldViolation(v.field, f"{v.description} (a real-time segment's filter has no bindings)")
                    for v in checked.violations
                ]
            )
        restart = after.realtime and (
            not was or before is None or (before.filter, before.time_zone) != (after.filter, after.time_zone)
        )
        await self.members.configure(connection, after.segment_id, after.realtime, restart)

    async def _stored_size(self, request: pb.GetSegmentSizeRequest) -> int | None:
        if self.members is None or request.HasField("now") or request.bindings or request.time_zone:
            return None
        raise_if_any(values.present([check_segment_id(request.segment_id, "segment_id")]))
        return await self.members.size(request.segment_id)

    async def _realtime_segment(self, segment_id: str) -> MembershipRepository:
        raise_if_any(values.present([check_segment_id(segment_id, "segment_id")]))
        stored = await self.repository.get_segment(segment_id)  # NOT_FOUND first
        if self.members is None or not stored.realtime:
            raise FailedPrecondition(f"segment {quote(segment_id)} is not a real-time segment")
        return self.members

    async def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: Context
    ) -> pb.ListSegmentMembersResponse:
        members = await self._realtime_segment(request.segment_id)
        size = paging.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        bound_to = paging.scope(request)
        after = ""
        if request.page_token:
            after = self.tokens.read(request.page_token, "ListSegmentMembers", bound_to, (str,)).text(0)
        definition = await members.definition(members.pool, request.segment_id)
        rows = await members.members(request.segment_id, after, size + 1)
        found = [
            pb.SegmentMember(customer_id=customer_id, entered_at=values.datetime_to_timestamp(entered_at))
            for customer_id, entered_at in rows
        ]
        page = paging.fill(found, size, paging.message_bytes)
        next_token = ""
        if len(page) < len(found):
            next_token = self.tokens.issue("ListSegmentMembers", bound_to, (page[-1].customer_id,))
        return pb.ListSegmentMembersResponse(
            members=page, next_page_token=next_token, backfilling=definition.backfill_after is not None
        )

    async def WatchSegment(
        self, request: pb.WatchSegmentRequest, context: Context
    ) -> AsyncIterator[pb.WatchSegmentResponse]:
        if request.after_cursor < 0:
            raise invalid("after_cursor", "a cursor is 0 or more")
        with self.watches.slot():
            members = await self._realtime_segment(request.segment_id)
            after = request.after_cursor
            while True:
                found = await members.transitions(request.segment_id, after, WATCH_PAGE)
                for t in found:
                    yield pb.WatchSegmentResponse(
                        cursor=t.cursor,
                        customer_id=t.customer_id,
                        kind=pb.TRANSITION_KIND_ENTERED if t.entered else pb.TRANSITION_KIND_EXITED,
                        occur_time=values.datetime_to_timestamp(t.occurred_at),
                    )
                    after = t.cursor
                if len(found) < WATCH_PAGE:
                    # Transitions commit in cursor order (membership.py), so polling from the
                    # last cursor sent misses none. A segment no longer real-time ends the stream.
                    await asyncio.sleep(WATCH_POLL_S)
                    await members.definition(members.pool, request.segment_id)
