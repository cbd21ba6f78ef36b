"""Real-time segments benchmark (issue 13), a first cut: backfill against count, stored size, and
how long an event takes to become a ``segment_entered`` on the stream.

Reuses bench/segments.py's data (its database, generated when missing: 10,000 customers /
500,000 events with --quick, 100,000 / 10,000,000 otherwise). Ingestion and segmentation run
in this process, on one ManualClock standing at the moment the data was generated, with their
background work on (relay, consumer group, timers, backfills).

* ``backfill_s``: marking shape 1 of bench/segments.py ("E05 at least 3 times in the last 30
  days") real-time until its backfill ends (membership stored; every customer with an E05
  event has a timer due at once), next to ``count_ms``, CountCustomers of the same filter in
  the same run; ``backfill_forecasts_s``: the scheduler firing those timers (each customer's
  forecast, one evaluation each, 4 at a time).
* ``size_p50_ms`` / ``size_p99_ms``: GetSegmentSize of that segment through gRPC (stored size).
* ``transition_p50_ms`` / ``transition_p99_ms``: TrackCustomerEvent accepted → its
  ``segment_entered`` read from the stream, one new customer at a time, for a segment
  "bench_probe at least once". Not measured yet: 50 segments at 1,000 events/s, the
  SegmentTrigger path, timer lateness with 100,000 due at once, ingestion's cost.

Usage: python bench/realtime.py [--quick]. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import grpc
from common import REDIS_URL
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc
from segments import SHAPE1, pct, prepare, timed

from eventline_ingestion.service import running as running_ingestion
from eventline_ingestion.settings import Settings as IngestionSettings
from eventline_segmentation.service import running as running_segmentation
from eventline_segmentation.settings import Settings as SegmentationSettings
from eventline_shared import values
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream


async def main(quick: bool) -> dict[str, Any]:
    customers, events = (10_000, 500_000) if quick else (100_000, 10_000_000)
    name = "eventline_bench_segments_quick" if quick else "eventline_bench_segments"
    url, generated_at = await prepare(name, customers, events, False)
    clock = ManualClock(generated_at)
    stream_key = f"eventline:bench:realtime:{uuid.uuid4().hex[:8]}"
    env = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": stream_key,
        "EVENTLINE_INGESTION_PORT": "0",
        "EVENTLINE_SEGMENTATION_PORT": "0",
        "EVENTLINE_LOG_LEVEL": "WARNING",
    }
    result: dict[str, Any] = {"customers": customers, "events": events}
    client = stream.connect(REDIS_URL)
    async with (
        running_ingestion(IngestionSettings.from_env(env), clock=clock) as ingestion_server,
        running_segmentation(SegmentationSettings.from_env(env), clock=clock, background=False) as seg,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as ingestion_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{seg.port}") as segmentation_channel,
    ):
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel)
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
        run_id = uuid.uuid4().hex[:8]
        now = values.datetime_to_timestamp(generated_at)
        count_ms, counted = await timed(
            lambda: segmentation.CountCustomers(pb.CountCustomersRequest(filter=SHAPE1, now=now))
        )
        shape = f"shape1-{run_id}"
        started = time.perf_counter()
        await segmentation.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id=shape, segment=pb.Segment(display_name="Shape 1", filter=SHAPE1, realtime=True)
            )
        )
        await seg.realtime.backfill(shape)
        result["backfill_s"] = round(time.perf_counter() - started, 2)
        result["count_ms"] = round(count_ms, 1)
        # The backfill leaves each moving customer's forecast to the scheduler (a timer due now).
        started = time.perf_counter()
        while await seg.realtime.fire_due():
            pass
        result["backfill_forecasts_s"] = round(time.perf_counter() - started, 2)
        sizes = []
        for _ in range(300):
            ms, reply = await timed(
                lambda: segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id=shape))
            )
            sizes.append(ms)
        if not reply.stored or reply.size != counted.count:
            raise SystemExit(f"stored size {reply.size} (stored: {reply.stored}), count {counted.count}")
        result["size_p50_ms"] = round(pct(sizes, 50), 2)
        result["size_p99_ms"] = round(pct(sizes, 99), 2)
        result["segment_size"] = reply.size
        print(
            f"backfill {result['backfill_s']} s for {reply.size:,} members (forecasts after it: "
            f"{result['backfill_forecasts_s']} s); CountCustomers {count_ms:.0f} ms; "
            f"size p50 {result['size_p50_ms']} ms p99 {result['size_p99_ms']} ms",
            flush=True,
        )

        probe = f"probe-{run_id}"
        await segmentation.CreateSegment(
            pb.CreateSegmentRequest(
                segment_id=probe,
                segment=pb.Segment(
                    display_name="Probe",
                    filter=pb.Filter(event=pb.EventCondition(name="bench_probe")),
                    realtime=True,
                ),
            )
        )
        await seg.realtime.backfill(probe)
        consuming = asyncio.create_task(seg.consumer.run())
        latencies = []
        last_id = "$"
        try:
            for i in range(30 if quick else 200):
                customer = f"probe-{run_id}-{i}"
                started = time.perf_counter()
                await ingestion.TrackCustomerEvent(
                    ingestion_pb2.TrackCustomerEventRequest(
                        event_id=f"p{i}", customer_id=customer, name="bench_probe"
                    )
                )
                found = False
                while not found:
                    reply_any: Any = await client.xread({stream_key: last_id}, block=5000)
                    for _, entries in reply_any or []:
                        for entry_id, fields in entries:
                            last_id = entry_id
                            if (
                                fields.get(b"name") == b"segment_entered"
                                and fields.get(b"customer_id") == customer.encode()
                            ):
                                found = True
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            seg.consumer.shutdown()
            await consuming
            await client.aclose()
        # The data is reused by every run: leave no real-time segment (nor its timers) behind.
        for segment_id in (shape, probe):
            await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
        result["transition_p50_ms"] = round(pct(latencies, 50), 1)
        result["transition_p99_ms"] = round(pct(latencies, 99), 1)
        print(
            f"transition p50 {result['transition_p50_ms']} ms, p99 {result['transition_p99_ms']} ms",
            flush=True,
        )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10,000 customers / 500,000 events")
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.quick))))
