"""Errors of the Eventline API as Python exceptions, with the server's details decoded.

Every failed call raises an :class:`EventlineError` subclass chosen by its gRPC status
code. Bad input (``INVALID_ARGUMENT``) and limits (``RESOURCE_EXHAUSTED``) carry the
server's ``google.rpc.BadRequest`` detail as :attr:`EventlineError.violations`: one
:class:`FieldViolation` per offending field, named by its path in the request
(``context["item-id"]``, ``events[3].customer_event.name``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailing metadata key holding the serialized ``google.rpc.Status`` of an error."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what is wrong with it."""

    field: str
    description: str


class EventlineError(Exception):
    """A call to Eventline failed; ``code`` says how (a ``grpc.StatusCode``)."""

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    retryable: ClassVar[bool] = False
    """Whether the same call may succeed later (safe to repeat: event ids make it idempotent)."""

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        details: Sequence[any_pb2.Any] = (),
        code: grpc.StatusCode | None = None,
    ) -> None:
        self.code: grpc.StatusCode = code or self.default_code
        self.message = message
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.details: tuple[any_pb2.Any, ...] = tuple(details)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        text = message or self.code.name
        super().__init__(f"{text} ({summary})" if summary and summary not in text else text)

    @property
    def fields(self) -> dict[str, str]:
        """The violations as ``{field path: description}``."""
        return {v.field: v.description for v in self.violations}


class InvalidArgumentError(EventlineError):
    """The request is malformed; ``violations`` names each bad field."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhaustedError(EventlineError):
    """A size limit was passed (too many events, too many bytes); ``violations`` says which."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFoundError(EventlineError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(EventlineError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(EventlineError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class UnauthenticatedError(EventlineError):
    """No API key, or one that is unknown or revoked."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(EventlineError):
    """The API key lacks the scope the call needs (``ingest``, ``read`` or ``admin``)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class UnavailableError(EventlineError):
    """The server or one of its dependencies cannot be reached now."""

    default_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DeadlineExceededError(EventlineError):
    """No answer within the deadline; the call may or may not have taken effect."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


_BY_CODE: dict[grpc.StatusCode, type[EventlineError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgumentError,
        ResourceExhaustedError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        DeadlineExceededError,
    )
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def violations_of(details: Sequence[any_pb2.Any]) -> list[FieldViolation]:
    """The field violations of every ``BadRequest`` (and ``QuotaFailure``) among ``details``."""
    found: list[FieldViolation] = []
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            found += [FieldViolation(v.subject, v.description) for v in quota.violations]
    return found


def from_status(status: status_pb2.Status) -> EventlineError:
    """The exception for a ``google.rpc.Status`` (a batch item's error, or a call's)."""
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, EventlineError)
    details = list(status.details)
    return cls(status.message, violations_of(details), details, code=code)


def from_rpc_error(error: grpc.RpcError) -> EventlineError:
    """The exception for a failed gRPC call (sync or asyncio), its status details decoded."""
    if isinstance(error, grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
        trailing: Iterable[tuple[str, str | bytes]] = error.trailing_metadata() or ()
    elif isinstance(error, grpc.Call):
        code, message = error.code(), error.details() or ""
        trailing = [(item[0], item[1]) for item in error.trailing_metadata() or ()]
    else:
        code, message, trailing = grpc.StatusCode.UNKNOWN, str(error), ()
    details: list[any_pb2.Any] = []
    for key, value in trailing:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code == code.value[0]:
                details = list(status.details)
    cls = _BY_CODE.get(code, EventlineError)
    return cls(message, violations_of(details), details, code=code)
