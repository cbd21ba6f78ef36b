"""The one error hierarchy of Eventline.

Domain code raises these; the server interceptor in ``grpc_server`` turns them
into ``google.rpc.Status`` replies. Handlers never set status codes themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


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
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=self.details())


class BadRequestError(EventlineError):
    """Bad input, listing every offending field path in a ``BadRequest`` detail."""

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}")

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [packed]


class InvalidArgument(BadRequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(BadRequestError):
    """A size limit was passed; the violations say which field and which limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(EventlineError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(EventlineError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(EventlineError):
    code = grpc.StatusCode.FAILED_PRECONDITION


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
