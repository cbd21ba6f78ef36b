"""Small helpers for tests: building requests and reading error details."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def value(v: Any) -> common_pb2.Value:
    if isinstance(v, bool):
        return common_pb2.Value(boolean_value=v)
    if isinstance(v, int):
        return common_pb2.Value(integer_value=v)
    if isinstance(v, str):
        return common_pb2.Value(string_value=v)
    if isinstance(v, dt.datetime):
        out = common_pb2.Value()
        out.timestamp_value.FromDatetime(v)
        return out
    raise TypeError(v)


def customer_event(
    customer_id: str, name: str, event_id: str | None = None, **context: Any
) -> ingestion_pb2.TrackCustomerEventRequest:
    return ingestion_pb2.TrackCustomerEventRequest(
        event_id=event_id or uuid.uuid4().hex,
        customer_id=customer_id,
        name=name,
        context={k: value(v) for k, v in context.items()},
    )


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, by field path."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def wait_for_entries(redis_client, stream_key: str, count: int, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    """Wait until the relay has published ``count`` entries to the stream."""
    deadline = time.monotonic() + timeout_s
    while await redis_client.xlen(stream_key) < count:
        assert time.monotonic() < deadline, "the relay did not publish in time"
        await asyncio.sleep(0.01)
