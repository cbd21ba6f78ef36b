"""The one error hierarchy of Eventline.

Domain code raises these; the handler wrapper in ``grpc_server`` turns them
into ``google.rpc.Status`` replies. Handlers never set status codes themselves.

A status travels in the reply's trailers (``grpc-message`` and, with the
message again, ``grpc-status-details-bin``), which clients refuse past 8 KiB
("received metadata size exceeds hard limit" from 16 KiB). So a bad value is
quoted by ``quote`` (a short prefix), and a status is bounded whatever the
request: at most ``MAX_MESSAGE_BYTES`` of message and ``MAX_DETAILS_BYTES`` of
field violations, the rest counted ("and 3 more").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

QUOTED_CHARS = 40
"""The most characters of a bad value an error message quotes."""
MAX_MESSAGE_BYTES = 512
"""The longest status message (UTF-8): it is sent twice, and percent-encoded once."""
MAX_DETAILS_BYTES = 2500
"""The most bytes of ``BadRequest`` field violations one status carries."""
MAX_FIELD_BYTES = 200
MAX_DESCRIPTION_BYTES = 300


def quote(value: str, limit: int = QUOTED_CHARS) -> str:
    """``value`` quoted for an error message (Python ``repr`` style), cut to ``limit`` characters.

    Every message that repeats a client's value goes through here: a value of
    any length stays a short, printable, unambiguous quote.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (ending in "…" when cut)."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode(errors="ignore") + "…"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (``events[3].context["a-b"]``) and why."""

    field: str
    description: str

    def under(self, prefix: str) -> FieldViolation:
        """The same violation with its path nested below ``prefix``."""
        return FieldViolation(f"{prefix}.{self.field}" if self.field else prefix, self.description)


class EventlineError(Exception):
    """Base of every error a client may see; ``code`` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=self.details())

    def grpc_status(self) -> grpc.Status:
        """What a handler aborts with (``context.abort_with_status``): the ``google.rpc.Status``
        in the trailers, its code and message in gRPC's own."""
        return rpc_status.to_status(self.to_status())


class BadRequestError(EventlineError):
    """Bad input, listing every offending field path in a ``BadRequest`` detail."""

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = list(violations)
        self._reported = _bounded(self.violations)
        left = len(self.violations) - len(self._reported.field_violations)
        if message is None:
            shown = [f"{v.field}: {v.description}" for v in self._reported.field_violations]
            more = f" (and {left:,} more)" if left else ""
            # The whole summary when it fits, else the first violation and the count of the rest.
            message = f"invalid request: {'; '.join(shown)}{more}"
            if len(message.encode()) > MAX_MESSAGE_BYTES and len(shown) > 1:
                message = f"invalid request: {shown[0]} (and {len(self.violations) - 1:,} more)"
        super().__init__(message)

    def details(self) -> list[any_pb2.Any]:
        packed = any_pb2.Any()
        packed.Pack(self._reported)
        return [packed]


def _bounded(violations: Sequence[FieldViolation]) -> error_details_pb2.BadRequest:
    """The first violations, each clipped, that fit in ``MAX_DETAILS_BYTES``."""
    bad_request = error_details_pb2.BadRequest()
    size = 0
    for v in violations:
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=clip(v.field, MAX_FIELD_BYTES), description=clip(v.description, MAX_DESCRIPTION_BYTES)
        )
        size += entry.ByteSize() + 3  # the tag and length of the entry
        if size > MAX_DETAILS_BYTES:
            break
        bad_request.field_violations.append(entry)
    return bad_request


class InvalidArgument(BadRequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(BadRequestError):
    """A size limit was passed; the violations say which field and which limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ReplyTooLarge(EventlineError):
    """A reply would be larger than a client accepts; nothing was changed (see ``paging``)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(EventlineError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(EventlineError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(EventlineError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(EventlineError):
    """The call carries no valid credentials (no API key, or one unknown or revoked)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(EventlineError):
    """The call's credentials are valid but do not allow this RPC (an API key without its scope)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(EventlineError):
    """A dependency (PostgreSQL, Redis, another service) cannot be reached; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(EventlineError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(EventlineError):
    """The call was ended by the server before it completed; the client may resume or retry it."""

    code = grpc.StatusCode.ABORTED


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for the common case of a single bad field."""
    return InvalidArgument([FieldViolation(field, description)])


def raise_if_any(violations: Iterable[FieldViolation]) -> None:
    """Raise ``InvalidArgument`` listing ``violations`` when there are any."""
    found = list(violations)
    if found:
        raise InvalidArgument(found)


OK_CODE = code_pb2.OK
