"""Ingestion and segmentation read business time from the clock their wiring is given: a test
moves it (hours, here) instead of sleeping."""

from __future__ import annotations

import datetime as dt

import grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg
from eventline.segmentation.v1 import segmentation_pb2_grpc

from eventline_ingestion.service import running as running_ingestion
from eventline_ingestion.settings import Settings as IngestionSettings
from eventline_segmentation.service import running as running_segmentation
from eventline_segmentation.settings import Settings as SegmentationSettings
from eventline_shared.clock import ManualClock
from eventline_shared.values import timestamp_to_datetime
from tests.conftest import service_env
from tests.support import customer_event


async def test_an_event_is_received_and_a_segment_evaluated_at_the_clock_given(
    db_url: str, stream_key: str
) -> None:
    """An event tracked when the clock says 2031-05-01 12:00 is received then; "visited in the
    last hour" counts it at that instant and no longer once the clock has moved 61 minutes."""
    clock = ManualClock(dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC))
    env = service_env(db_url, stream_key)
    async with (
        running_ingestion(IngestionSettings.from_env(env), relay=False, clock=clock) as ingestion_server,
        running_segmentation(SegmentationSettings.from_env(env), clock=clock) as segmentation_server,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as ingestion_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{segmentation_server.port}") as segmentation_channel,
    ):
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel)
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
        await ingestion.UpsertCustomer(
            ingestion_pb2.UpsertCustomerRequest(customer={"customer_id": "c1", "email": "c1@example.com"})
        )
        tracked = await ingestion.TrackCustomerEvent(customer_event("c1", "Visited"))
        assert timestamp_to_datetime(tracked.event.received_at) == clock.now()
        assert timestamp_to_datetime(tracked.event.occurred_at) == clock.now()

        visited_last_hour = seg.CountCustomersRequest(
            filter=seg.Filter(
                event=seg.EventCondition(
                    name="Visited",
                    last_occurred=seg.Period(last=seg.RecentPeriod(amount=1, unit=seg.TIME_UNIT_HOUR)),
                )
            )
        )
        counted = await segmentation.CountCustomers(visited_last_hour)
        assert (counted.count, timestamp_to_datetime(counted.now)) == (1, clock.now())
        clock.advance(dt.timedelta(minutes=61))
        counted = await segmentation.CountCustomers(visited_last_hour)
        assert (counted.count, timestamp_to_datetime(counted.now)) == (0, clock.now())
