"""The segmentation domain: evaluating a filter or a saved segment over customers, and saved segments.

Nothing here knows gRPC: the servicer checks a request's own fields, calls
``Segments`` and maps the answer to the reply. A filter given in a request
and a saved segment are evaluated alike (``Target``), so CountCustomers and
GetSegmentSize, or ListCustomers of a filter and of a segment, are one
evaluation. Violations name the field path in the request, as the checks of
``filters`` do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from google.protobuf import timestamp_pb2

from eventline_predicates import filters, periods
from eventline_predicates.evaluation import Explanation
from eventline_segmentation import compiler, evaluation
from eventline_segmentation.membership import MembershipRepository
from eventline_segmentation.repository import SegmentationRepository, StoredSegment
from eventline_shared import errors, values
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.errors import FieldViolation, InvalidArgument, invalid, quote, raise_if_any
from eventline_shared.paging import MAX_REPLY_BYTES

SEGMENT_FIELDS = ("display_name", "description", "filter", "realtime", "time_zone")
"""The fields of a segment a client writes (UpdateSegment's mask names them)."""
DEFAULT_UPDATE_FIELDS = ("display_name", "description", "filter")
"""What UpdateSegment changes when its mask is empty (as before segments could be real-time)."""
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2000
STREAM_PAGE = 10_000
"""Ids a stream reads per query (its chunks are cut from these pages)."""
NOW_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW_MAX = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
NOW_BOUNDS = "between 1970 and 9000"
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


@dataclass(frozen=True)
class Target:
    """What is evaluated: a request's filter or a saved segment, with the context it is evaluated in."""

    filter: pb.Filter | None
    """The filter given in the request; None for a saved segment."""
    segment_id: str | None
    """The saved segment to evaluate; None for a filter given in the request."""
    bindings: Mapping[str, common_pb2.Value]
    time_zone: str
    now: timestamp_pb2.Timestamp | None
    """The instant the request pins; None: the clock's (or a page token's)."""

    @classmethod
    def of(cls, request: EvaluationRequest) -> Target:
        which = request.WhichOneof("target")
        return cls(
            request.filter if which == "filter" else None,
            request.segment_id if which == "segment_id" else None,
            request.bindings,
            request.time_zone,
            request.now if request.HasField("now") else None,
        )

    @classmethod
    def segment(cls, request: pb.GetSegmentSizeRequest) -> Target:
        return cls(
            None,
            request.segment_id,
            request.bindings,
            request.time_zone,
            request.now if request.HasField("now") else None,
        )


@dataclass(frozen=True)
class Resolved:
    """A target with its filter at hand (a saved segment's loaded)."""

    target: Target
    filter: pb.Filter
    path: str
    """Where the filter's violations point: ``filter`` or ``segment.filter``."""
    key: str
    """A digest of what is evaluated (the filter, or the segment and its stored filter, the
    bindings and the time zone): a page token is bound to it, so a token of a segment whose
    filter changed since is refused."""


@dataclass(frozen=True)
class Prepared:
    """A checked target, ready to compile."""

    root: filters.Node
    clock: periods.Clock
    key: str
    """``Resolved.key``."""


@dataclass(frozen=True)
class Counted:
    count: int
    now: dt.datetime


@dataclass(frozen=True)
class Matched:
    """One customer's answer and how each node of the filter came to it (pre-order)."""

    matched: bool
    now: dt.datetime
    explanations: list[Explanation]


@dataclass(frozen=True)
class FilterReport:
    """What ValidateFilter says of a filter."""

    violations: list[FieldViolation]
    references: list[str]
    unresolved: list[str]


def _digest(target: bytes, bindings: Mapping[str, common_pb2.Value], zone: str) -> str:
    h = hashlib.sha256(target)
    for code in sorted(bindings):
        h.update(code.encode() + b"\0" + bindings[code].SerializeToString(deterministic=True))
    h.update(b"\0" + zone.encode())
    return h.hexdigest()[:24]


def check_segment_id(value: str, field: str) -> FieldViolation | None:
    return values.check_event_id(value, field, "segment id")


def check_segment(
    segment: pb.Segment, paths: Collection[str], prefix: str = "segment"
) -> list[FieldViolation]:
    """The violations of the fields ``paths`` of a segment to store."""
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
        checked = filters.check(segment.filter, f"{prefix}.filter", None, present=segment.HasField("filter"))
        found += checked.violations
    if "time_zone" in paths:
        try:
            periods.time_zone(segment.time_zone, f"{prefix}.time_zone")
        except InvalidArgument as exc:
            found += exc.violations
    return found


def fits_a_reply(segment: pb.Segment, field: str = "segment.filter") -> None:
    """Refuse, before storing, a segment whose every later reply would be too large."""
    filter_bytes = segment.filter.ByteSize()
    if filter_bytes + _SEGMENT_FIELDS_BYTES > MAX_REPLY_BYTES:
        raise errors.ResourceExhausted(
            [
                FieldViolation(
                    field,
                    f"the filter takes {filter_bytes:,} bytes; a saved segment must fit in a reply "
                    f"of {MAX_REPLY_BYTES:,} bytes",
                )
            ]
        )


def check_filter(flt: pb.Filter, present: bool, bindings: Mapping[str, common_pb2.Value]) -> FilterReport:
    """A filter's problems and references; the bindings given are checked, without making a
    missing one a violation."""
    checked = filters.check(flt, "filter", None, present=present)
    violations = list(checked.violations)
    for code in sorted(checked.references):
        if code in bindings:
            _, bad = filters.operand_of(bindings[code], values.quote_path("bindings", code))
            if bad:
                violations.append(bad)
    return FilterReport(
        violations,
        sorted(checked.references),
        sorted(code for code in checked.references if code not in bindings),
    )


class Segments:
    """Evaluates targets over the customers and keeps the saved segments."""

    def __init__(
        self,
        repository: SegmentationRepository,
        clock: Clock = SYSTEM_CLOCK,
        members: MembershipRepository | None = None,
    ) -> None:
        self.repository = repository
        self.clock = clock
        """The "now" a target without one is evaluated at."""
        self.members = members
        """Real-time segments' stored membership; None: segments cannot be made real-time."""

    # Evaluation ----------------------------------------------------------------------

    async def resolve(self, target: Target) -> Resolved:
        """The target's filter: its own, or its saved segment's (NOT_FOUND when there is none)."""
        if target.filter is not None:
            raw = b"f" + target.filter.SerializeToString(deterministic=True)
            flt, path = target.filter, "filter"
        elif target.segment_id is not None:
            raise_if_any(values.present([check_segment_id(target.segment_id, "segment_id")]))
            stored = await self.repository.get_segment(target.segment_id)
            flt, path = pb.Filter.FromString(stored.filter), "segment.filter"
            raw = b"s" + target.segment_id.encode() + b"\0" + stored.filter
        else:
            raise invalid("filter", "one of filter or segment_id is required")
        return Resolved(target, flt, path, _digest(raw, target.bindings, target.time_zone))

    def prepare(self, resolved: Resolved, now: dt.datetime | None = None) -> Prepared:
        """Check the filter against the bindings, and the time zone and instant it is evaluated in.

        ``now`` (a page token's) wins over the target's; without either, the clock's.
        """
        target = resolved.target
        violations: list[FieldViolation] = []
        zone: dt.tzinfo = dt.UTC
        try:
            zone = periods.time_zone(target.time_zone)
        except InvalidArgument as exc:
            violations += exc.violations
        if now is None:
            if target.now is not None:
                bad = values.check_timestamp(
                    target.now, "now", earliest=NOW_MIN, latest=NOW_MAX, bounds=NOW_BOUNDS
                )
                if bad:
                    violations.append(bad)
                else:
                    now = values.timestamp_to_datetime(target.now)
            else:
                now = self.clock.now()
        checked = filters.check(resolved.filter, resolved.path, target.bindings)
        violations += checked.violations
        raise_if_any(violations)
        assert checked.root is not None and now is not None
        return Prepared(checked.root, periods.Clock(now, zone), resolved.key)

    async def prepared(self, target: Target) -> Prepared:
        return self.prepare(await self.resolve(target))

    async def count(self, target: Target, timeout: float | None) -> Counted:
        """How many customers the target holds (CountCustomers, GetSegmentSize)."""
        prepared = await self.prepared(target)
        query = compiler.count_query(prepared.root, prepared.clock)
        return Counted(await self.repository.count(query, timeout), prepared.clock.now)

    async def customer_ids(
        self, prepared: Prepared, after: str, limit: int, timeout: float | None
    ) -> list[str]:
        """The first ``limit`` ids of the customers held, after ``after`` in byte order."""
        query = compiler.ids_query(prepared.root, prepared.clock, after, limit)
        return await self.repository.ids(query, timeout)

    async def customer_id_pages(
        self, prepared: Prepared, after: str, timeout: Callable[[], float | None]
    ) -> AsyncGenerator[list[str]]:
        """Every id of the customers held after ``after``, a page at a time.

        Keyset pages, each its own short query: nothing of the database is
        held while the caller waits between pages.
        """
        while True:
            query = compiler.ids_query(prepared.root, prepared.clock, after, STREAM_PAGE)
            ids = await self.repository.stream_page(query, timeout)
            if ids:
                after = ids[-1]
                yield ids
            if len(ids) < STREAM_PAGE:
                return

    async def match(
        self, target: Target, customer_id: str, required_event_ids: list[str], timeout: float | None
    ) -> Matched:
        """Whether one customer is held, and why; NOT_FOUND for a customer that does not exist."""
        prepared = await self.prepared(target)
        query = compiler.match_query(prepared.root, prepared.clock, customer_id)
        row = await self.repository.match(query, customer_id, required_event_ids, timeout)
        if row is None:
            raise errors.NotFound(f"customer {quote(customer_id)} does not exist")
        matched, explanations = evaluation.explain(query, row, prepared.clock)
        return Matched(matched, prepared.clock.now, explanations)

    # Saved segments (checked by ``check_segment`` and ``fits_a_reply`` first) --------

    async def create(self, segment_id: str, segment: pb.Segment) -> StoredSegment:
        """Store a new segment; an empty ``segment_id`` gets a generated one."""
        return await self.repository.create_segment(
            segment_id or uuid.uuid4().hex,
            segment.display_name,
            segment.description,
            segment.filter.SerializeToString(deterministic=True),
            segment.realtime,
            segment.time_zone,
            self._changed,
        )

    async def get(self, segment_id: str) -> StoredSegment:
        return await self.repository.get_segment(segment_id)

    async def list_after(self, after: str, limit: int, max_bytes: int) -> list[StoredSegment]:
        """The first ``limit`` segments after ``after`` (by id), up to about ``max_bytes``."""
        return await self.repository.list_segments(after, limit, max_bytes)

    async def update(self, segment: pb.Segment, paths: Collection[str]) -> StoredSegment:
        """Change the fields ``paths`` of the saved segment ``segment.segment_id``."""
        changes: dict[str, Any] = {}
        for path in paths:
            if path == "filter":
                changes[path] = segment.filter.SerializeToString(deterministic=True)
            else:
                changes[path] = getattr(segment, path)
        return await self.repository.update_segment(segment.segment_id, changes, self._changed)

    async def delete(self, segment_id: str) -> None:
        await self.repository.delete_segment(segment_id)

    # Real-time segments (issue 13) ---------------------------------------------------

    async def _changed(self, connection: Any, before: StoredSegment | None, after: StoredSegment) -> None:
        """In the transaction that saved a segment: start, restart or stop keeping its membership."""
        was = before is not None and before.realtime
        if not (was or after.realtime):
            return
        if self.members is None:
            raise errors.FailedPrecondition("this server does not keep real-time segments")
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

    async def stored_size(self, target: Target) -> Counted | None:
        """A real-time segment's stored size, when the target asks for it as it is now (no
        ``now``, bindings or time zone of its own); None: count it."""
        if self.members is None or target.segment_id is None or target.now is not None:
            return None
        if target.bindings or target.time_zone:
            return None
        raise_if_any(values.present([check_segment_id(target.segment_id, "segment_id")]))
        size = await self.members.size(target.segment_id)
        return None if size is None else Counted(size, self.clock.now())

    async def realtime(self, segment_id: str) -> MembershipRepository:
        """The membership of ``segment_id``: NOT_FOUND without the segment, FAILED_PRECONDITION
        when it is not real-time."""
        raise_if_any(values.present([check_segment_id(segment_id, "segment_id")]))
        stored = await self.repository.get_segment(segment_id)  # NOT_FOUND first
        if self.members is None or not stored.realtime:
            raise errors.FailedPrecondition(f"segment {quote(segment_id)} is not a real-time segment")
        return self.members
