"""JSON-lines logging with the request id of the RPC being served and the trace being followed."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import sys
from typing import Any

import grpc

from eventline_shared.observability import tracing

# Attributes every LogRecord has; anything else was passed with extra= and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
"""The id of the HTTP request being served (the gateway sets it); RPCs are found by ``current_call``."""

current_call: contextvars.ContextVar[grpc.aio.ServicerContext[Any, Any] | None] = contextvars.ContextVar(
    "current_call", default=None
)
"""The RPC being served (grpc_server sets it for each call), read only when something is logged."""


def current_request_id() -> str:
    """The id of the RPC being served, for logs: the client's x-request-id, else one of our own.

    Computed only when something is logged, so serving a call costs nothing.
    """
    context = current_call.get()
    if context is None:
        return ""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return f"{os.getpid():x}-{id(context):x}"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        current = request_id.get() or current_request_id()
        if current:
            entry["request_id"] = current
        trace = tracing.current.get()
        if trace is not None:
            entry["trace_id"] = trace.trace_id
            entry["span_id"] = trace.span_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _ReplyAfterCallEnded(logging.Filter):
    """grpc.aio logs an ERROR with a traceback when a handler's reply cannot be sent because
    the call had already ended (the client's deadline passed, or it cancelled, just as the
    handler finished): an ordinary event under load, so a one-line warning naming the method."""

    PREFIX = "ExecuteBatchError raised in core by servicer method ["

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = (
                "reply not sent: the call had already ended (client deadline or cancel)",
                (),
            )
            record.method = message[len(self.PREFIX) :].rstrip("]")
            record.exc_info, record.exc_text = None, None
        return True


def configure(service: str, level: str = "INFO") -> None:
    """Send the root logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ReplyAfterCallEnded) for f in grpc_core.filters):
        grpc_core.addFilter(_ReplyAfterCallEnded())
