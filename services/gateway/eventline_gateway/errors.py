"""Errors over HTTP: a ``google.rpc.Status`` as proto3 JSON, with the HTTP status of its code.

Every failure the gateway answers, its own or a service's, is one body shape::

    {"code": 3, "message": "invalid request: name: …",
     "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                  "fieldViolations": [{"field": "name", "description": "…"}]}]}

``code`` is the gRPC code (``google.rpc.Code``) and the HTTP status is the one AIP-193
(and ``google/rpc/code.proto``) gives it. Problems of HTTP itself keep their own HTTP
status: an unknown path is 404, a known path with another method 405, a body over the
limit 413.
"""

from __future__ import annotations

import grpc
import orjson
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from eventline_shared.errors import MAX_MESSAGE_BYTES, FieldViolation, clip

HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}
"""google.rpc.Code → HTTP status, as AIP-193 maps them."""

_ = error_details_pb2  # imported so that json_format can name the details' types


class HttpError(Exception):
    """A failure to answer with ``status`` (a google.rpc.Status) and ``http_status``."""

    def __init__(
        self, status: status_pb2.Status, http_status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status.message)
        self.status = status
        self.http_status = http_status or HTTP_STATUS.get(status.code, 500)
        self.headers = headers or {}

    def body(self) -> bytes:
        """The status as proto3 JSON: ``code``, ``message`` and ``details`` always there."""
        try:
            found = json_format.MessageToDict(self.status)
        except TypeError:  # a detail of a type this process does not know: dropped
            found = json_format.MessageToDict(
                status_pb2.Status(code=self.status.code, message=self.status.message)
            )
        body = {"code": self.status.code, "message": self.status.message, "details": found.get("details", [])}
        return orjson.dumps(body)


def status(code: int, message: str, violations: list[FieldViolation] | None = None) -> status_pb2.Status:
    """A ``google.rpc.Status``, with a ``BadRequest`` detail when there are field violations."""
    found = status_pb2.Status(code=code, message=clip(message, MAX_MESSAGE_BYTES))
    if violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=clip(v.field, 200), description=clip(v.description, 300)
                    )
                    for v in violations
                ]
            )
        )
        found.details.append(detail)
    return found


def invalid(field: str, description: str) -> HttpError:
    """400 INVALID_ARGUMENT naming one bad field of the HTTP request (``""``: the whole body)."""
    where = f"{field}: " if field else ""
    return HttpError(
        status(
            code_pb2.INVALID_ARGUMENT,
            f"invalid request: {where}{description}",
            [FieldViolation(field, description)],
        )
    )


_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the {backend} service is unavailable, retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {backend} service did not answer before the deadline",
    grpc.StatusCode.CANCELLED: "the call to the {backend} service was cancelled",
    grpc.StatusCode.UNKNOWN: "the {backend} service failed",
    grpc.StatusCode.INTERNAL: "the {backend} service failed",
}


def from_rpc_error(error: grpc.aio.AioRpcError, backend: str) -> HttpError:
    """The HTTP error for a failed call to ``backend``.

    A status the service sent with its details (every error of our services) is passed on
    as it is. Without details it came from gRPC itself (a refused connection, a deadline
    passed on the way) or from the API-key check: the key check's messages are kept, the
    transport's (which name internal addresses) are replaced by one naming the service.
    """
    found = rpc_status.from_call(error)
    if found is None:
        code = error.code()
        template = _TRANSPORT_MESSAGES.get(code)
        message = template.format(backend=backend) if template else (error.details() or code.name)
        found = status_pb2.Status(code=code.value[0], message=clip(message, MAX_MESSAGE_BYTES))
    return HttpError(found)
