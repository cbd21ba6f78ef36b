"""The campaign's view of the segmentation service: match one customer, stream an audience."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from google.protobuf import timestamp_pb2

from eventline_shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable, quote

log = logging.getLogger(__name__)

MATCH_TIMEOUT_S = 5.0
VALIDATE_TIMEOUT_S = 5.0
STREAM_CHUNK_TIMEOUT_S = 60.0


class AudienceUnresolvable(Exception):
    """The audience cannot be evaluated for this trigger (e.g. a reference the event lacks)."""


class SegmentationRefused(FailedPrecondition):
    """Segmentation refused this service's credentials: a configuration mistake, not an outage.

    Calls answer FAILED_PRECONDITION (retrying the same call cannot help); the
    stream consumer keeps the entries and retries them, as during an outage,
    so that deliveries wait for the fix instead of being dead-lettered.
    """


def _refused(exc: grpc.aio.AioRpcError) -> SegmentationRefused:
    error = SegmentationRefused(
        f"the segmentation service refused this service's API key ({exc.code().name}): "
        "EVENTLINE_SERVICE_API_KEY of the campaign service must be a valid key with the read scope"
    )
    log.error("segmentation refused the campaign service's API key", extra={"code": exc.code().name})
    return error


_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() in _REFUSED:
        return _refused(exc)
    if exc.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return AudienceUnresolvable(exc.details() or exc.code().name)
    return Unavailable(f"segmentation: {exc.code().name} {exc.details() or ''}".strip())


def _saving_error(exc: grpc.aio.AioRpcError, field: str, invalid: str) -> Exception:
    """What saving a campaign answers when segmentation refuses a check of its field ``field``."""
    if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return InvalidArgument([FieldViolation(field, exc.details() or invalid)])
    if exc.code() in _REFUSED:
        return _refused(exc)
    return Unavailable(f"segmentation: {exc.code().name}")


class Audience:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)

    async def match(
        self,
        audience: segmentation_pb2.Filter,
        customer_id: str,
        bindings: Mapping[str, common_pb2.Value],
        now: timestamp_pb2.Timestamp,
        trigger_event_id: str,
    ) -> bool:
        """Whether the customer is in the audience; raises ``AudienceUnresolvable`` or ``Unavailable``.

        The answer takes the event ``trigger_event_id`` into account even when segmentation
        reads from a replica that has not replayed it yet (see ``required_event_ids``).
        """
        request = segmentation_pb2.MatchCustomerRequest(
            filter=audience,
            customer_id=customer_id,
            bindings=bindings,
            now=now,
            required_event_ids=[trigger_event_id],
        )
        try:
            reply = await self.stub.MatchCustomer(request, timeout=MATCH_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        return bool(reply.matched)

    async def stream(
        self,
        audience: segmentation_pb2.Filter,
        bindings: Mapping[str, common_pb2.Value],
        now: timestamp_pb2.Timestamp,
        after_customer_id: str,
        chunk_size: int,
    ) -> AsyncIterator[list[str]]:
        """Chunks of customer ids in ascending order, strictly after ``after_customer_id``."""
        request = segmentation_pb2.StreamCustomersRequest(
            filter=audience,
            bindings=bindings,
            now=now,
            after_customer_id=after_customer_id,
            chunk_size=chunk_size,
        )
        call = self.stub.StreamCustomers(request)
        try:
            async for reply in call:
                yield list(reply.customer_ids)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        finally:
            call.cancel()

    async def check_access(self) -> bool:
        """At start: whether segmentation accepts this service's credentials (a refusal is logged as
        an error); an unreachable segmentation is not a refusal."""
        probe = segmentation_pb2.Filter(event=segmentation_pb2.EventCondition(name="access_check"))
        try:
            await self.validate(probe, "filter")
        except SegmentationRefused:
            return False
        except Exception:
            pass
        return True

    async def validate(self, audience: segmentation_pb2.Filter, field: str) -> None:
        """Raise ``InvalidArgument`` with paths under ``field`` when the filter is invalid."""
        try:
            reply = await self.stub.ValidateFilter(
                segmentation_pb2.ValidateFilterRequest(filter=audience), timeout=VALIDATE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise _saving_error(exc, field, "invalid filter") from None
        if not reply.valid:
            raise InvalidArgument(
                [
                    FieldViolation(field + v.field.removeprefix("filter"), v.description)
                    for v in reply.violations
                ]
            )

    async def require_realtime_segment(self, segment_id: str, field: str) -> None:
        """Raise ``InvalidArgument`` at ``field`` unless the saved segment exists and is real-time
        (only a real-time segment's transitions are recorded, so only they can trigger)."""
        try:
            reply = await self.stub.GetSegment(
                segmentation_pb2.GetSegmentRequest(segment_id=segment_id), timeout=VALIDATE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise _saving_error(exc, field, "no such segment") from None
        if not reply.segment.realtime:
            raise InvalidArgument(
                [FieldViolation(field, f"segment {quote(segment_id)} is not a real-time segment")]
            )
