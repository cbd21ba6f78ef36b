"""W3C trace context: one event's journey from the ingesting RPC to its deliveries.

A client may send a ``traceparent`` header (gRPC metadata). Ingestion
continues that trace (or starts one), records it in every stream entry it
publishes, and the campaign worker continues it while it handles the entry.
Every log line written meanwhile carries ``trace_id`` and ``span_id``, so
``grep <trace_id>`` over the services' logs follows one event end to end.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

_HEADER = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def header(self) -> str:
        """The ``traceparent`` value that makes this span the parent of the next."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def parse(cls, header: str | None) -> TraceContext | None:
        match = _HEADER.fullmatch(header.strip().lower()) if header else None
        if not match or match.group(1) == _INVALID_TRACE or match.group(2) == _INVALID_SPAN:
            return None
        return cls(match.group(1), match.group(2), match.group(3))

    def child(self) -> TraceContext:
        """A new span of the same trace."""
        return TraceContext(self.trace_id, os.urandom(8).hex(), self.flags)

    @classmethod
    def root(cls) -> TraceContext:
        ids = os.urandom(24).hex()  # one system call for both ids: a call without a traceparent makes one
        return cls(ids[:32], ids[32:])


current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar("trace", default=None)


def continue_from(header: str | None) -> TraceContext:
    """Start this process's span under ``header`` (a new trace when absent or malformed)."""
    parent = TraceContext.parse(header)
    trace = parent.child() if parent else TraceContext.root()
    current.set(trace)
    return trace


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> TraceContext:
    """Continue the trace of an incoming call (its ``traceparent`` metadata)."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return continue_from(value)
    return continue_from(None)
