"""Real-time segments benchmark (issue 13): backfill against count, stored size, how long an event
takes to become a ``segment_entered`` on the stream and a SegmentTrigger's e-mail, timer
lateness, and what 50 real-time segments cost ingestion.

Reuses bench/segments.py's data (its database, generated when missing: 10,000 customers /
500,000 events with --quick, 100,000 / 10,000,000 otherwise). Ingestion and segmentation run
in this process, on one ManualClock standing at the moment the data was generated, with their
background work on (relay, consumer group, timers, backfills).

* ``backfill_s``: marking shape 1 of bench/segments.py ("E05 at least 3 times in the last 30
  days") real-time until its backfill ends (membership stored; the forecasts of the customers
  with a recent E05 event left to a forecast sweep), next to ``count_ms``, CountCustomers of
  the same filter in the same run; ``backfill_forecasts_s``: the scheduler walking that sweep
  (each customer's forecast, 500 a page, each getting its timer).
* ``size_p50_ms`` / ``size_p99_ms``: GetSegmentSize of that segment through gRPC (stored size).
* ``transition_p50_ms`` / ``transition_p99_ms``: TrackCustomerEvent accepted → its
  ``segment_entered`` read from the stream, one new customer at a time, for a segment
  "bench_probe at least once".

Then, on a database of its own (2,000 customers with an e-mail address with --quick,
100,000 otherwise; bench/triggers.py's), ingestion, segmentation (in the background, as in
production) and campaigns in this process on one ``RunningClock`` (business time running with
real time), e-mail to bench/triggers.py's SMTP receiver in this process:

* ``timer_lateness_p50_ms`` / ``timer_lateness_p99_ms``: ``timer_transitions`` customers (2,000
  with --quick, 100,000 otherwise) each leave "bench_timer in the last hour" at an instant of
  their own, all within ``timer_spread_s`` (10 s with --quick, 60 s otherwise); lateness is each
  ``segment_exited``'s received_at (the clock's now when the transition was recorded) minus its
  occurred_at (its exact instant), on that one clock. The run refuses (exits) unless every
  customer entered and exited once, and no exit is recorded before its instant.
* first 50 real-time segments (``variants``: the five shapes of bench/segments.py, ten variants
  each) are created on customers without events (a backfill over existing events leaves each
  moving customer's forecast to the scheduler: minutes of work for 50 segments on this machine,
  which every later figure would carry).
* ``segment_trigger_p50_ms`` / ``segment_trigger_p99_ms``: TrackCustomerEvent called → the
  e-mail received by the SMTP receiver, through a campaign with a SegmentTrigger (entered
  "bench_probe at least once"), 100 customers one every 50 ms, while events of the 50
  segments' names arrive at 1,000/s (20/s with --quick: on the shared 2-core machine the
  segmentation consumer, re-evaluating up to 30 segments per event, fell behind at 200/s in a
  first run, where 50 backfills' forecasts ran too, and even at 20/s the figure is mostly its
  backlog); ``paced_events_per_s`` is the rate achieved. A message
  missing, repeated or arriving before its call stops the run.
* ``batch_events_per_s_with_50`` / ``batch_events_per_s_without`` / ``batch_cost_pct``: TrackEvents
  in calls of 500, 4 in flight, until the last reply, with the 50 segments' consumer and timers
  working meanwhile (in this same process: their CPU is taken from ingestion too), then after
  deleting them. A negative cost (more work, faster) is noise: printed as null.
* timer lateness (above) last, with its own segment.

Usage: python bench/realtime.py [--quick] [--parts backfill,trigger,batch,lateness]. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import tempfile
import time
import uuid
from typing import Any

import grpc
import ingest
import triggers
from common import REDIS_URL, drop_database
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc
from ingest import Event
from segments import NAMES, SHAPE1, SHAPE2, SHAPE5, A, B, ev, last_days, pct, prepare, timed

from eventline_campaigns.service import running as running_campaigns
from eventline_campaigns.settings import Settings as CampaignsSettings
from eventline_cli import demo_campaigns
from eventline_ingestion.service import running as running_ingestion
from eventline_ingestion.settings import Settings as IngestionSettings
from eventline_segmentation.service import running as running_segmentation
from eventline_segmentation.settings import Settings as SegmentationSettings
from eventline_shared import values
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream

PROBE = pb.Filter(event=pb.EventCondition(name="bench_probe"))
"""The probes' segment: "bench_probe at least once" (a new customer's first probe enters it)."""


PARTS = ("backfill", "trigger", "batch", "lateness")


def realtime_segment(segment_id: str, display_name: str, filter_: pb.Filter) -> pb.CreateSegmentRequest:
    return pb.CreateSegmentRequest(
        segment_id=segment_id, segment=pb.Segment(display_name=display_name, filter=filter_, realtime=True)
    )


def services_env(url: str, stream_key: str) -> dict[str, str]:
    """The in-process services' settings: the database, Redis and stream, any free port."""
    return {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": stream_key,
        "EVENTLINE_INGESTION_PORT": "0",
        "EVENTLINE_SEGMENTATION_PORT": "0",
        "EVENTLINE_LOG_LEVEL": "WARNING",
    }


async def main(quick: bool) -> dict[str, Any]:
    customers, events = (10_000, 500_000) if quick else (100_000, 10_000_000)
    name = "eventline_bench_segments_quick" if quick else "eventline_bench_segments"
    url, generated_at = await prepare(name, customers, events, False)
    clock = ManualClock(generated_at)
    stream_key = f"eventline:bench:realtime:{uuid.uuid4().hex[:8]}"
    env = services_env(url, stream_key)
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
        # The backfill leaves each moving customer's forecast to the scheduler (a forecast sweep).
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
        await segmentation.CreateSegment(realtime_segment(probe, "Probe", PROBE))
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


# --- With 50 real-time segments running (a database of its own) -------------------------


class RunningClock:
    """Business time that runs with real time from ``start``: the services and the lateness
    figure read this one clock (time.monotonic underneath: no NTP step moves it)."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.started = time.monotonic()

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.started)


def variants() -> list[tuple[str, pb.Filter]]:
    """50 filters: bench/segments.py's five shapes, each in ten variants (thresholds and periods)."""
    found = []
    for v in range(10):
        days, least = 7 + 7 * (v % 4), 1 + v % 3
        found += [
            (f"s1v{v}", ev(A, count=pb.CountTest(period=last_days(days), at_least=least))),
            (
                f"s2v{v}",
                ev(A, SHAPE2.event.predicates[0], count=pb.CountTest(period=last_days(days), at_least=least)),
            ),
            (
                f"s3v{v}",
                ev(B, days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_GREATER, days=7 + v)),
            ),
            (
                f"s4v{v}",
                pb.Filter(
                    all_of=pb.FilterList(
                        filters=[
                            SHAPE1,
                            ev(
                                B,
                                days_since_last=pb.DaysSinceTest(
                                    comparison=pb.COMPARISON_GREATER, days=7 + v
                                ),
                            ),
                        ]
                    )
                ),
            ),
            (f"s5v{v}", SHAPE5),
        ]
    return found


def paced_events(run: str, customers: int, count: int, now: dt.datetime) -> list[Event]:
    """``count`` events of the shapes' names for the first ``customers`` customers (bench/ingest.py's form)."""
    rng = random.Random(run)
    return [
        (
            f"cust{rng.randrange(customers):06d}",
            f"{run}-{i}",
            rng.choice(NAMES),
            now - dt.timedelta(seconds=rng.randrange(40 * 86400)),
            rng.randrange(20),
            str(rng.randrange(1000)),
        )
        for i in range(count)
    ]


async def batch_rate(ingestion: Any, events: list[Event]) -> float:
    """Events per second accepted by TrackEvents in calls of 500, 4 in flight (bench/ingest.py's
    batch phase), until the last reply (each reply: committed). Not until they are on the stream:
    with real-time segments running, transitions are appended to it too."""
    queue: asyncio.Queue[list[Event]] = asyncio.Queue()
    for i in range(0, len(events), 500):
        queue.put_nowait(events[i : i + 500])

    async def worker() -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            reply = await ingestion.TrackEvents(
                ingestion_pb2.TrackEventsRequest(
                    events=[
                        ingestion_pb2.TrackEventsItem(customer_event=ingest.customer_request(e))
                        for e in chunk
                    ]
                ),
                timeout=60,
            )
            if any(r.WhichOneof("result") != "event" for r in reply.results):
                raise SystemExit("ingestion refused a benchmark event")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(4)))
    return len(events) / (time.perf_counter() - started)


async def wait_backfilled(segmentation: Any, segment_ids: list[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    for segment_id in segment_ids:
        while not (await segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id=segment_id))).stored:
            if time.monotonic() > deadline:
                raise RuntimeError(f"segment {segment_id} still backfilling after {timeout_s} s")
            await asyncio.sleep(0.1)


async def live(quick: bool, parts: set[str]) -> dict[str, Any]:
    customers = 2_000 if quick else 100_000
    due = (2_000, 10.0, 30.0) if quick else (100_000, 60.0, 600.0)  # timers, spread (s), lead (s)
    run = uuid.uuid4().hex[:8]
    name = f"eventline_bench_realtime_{run}"
    url = await triggers.database_with_customers(name, customers)
    clock = RunningClock(dt.datetime.now(dt.UTC))
    stream_key = f"eventline:bench:realtime:{run}"
    result: dict[str, Any] = {}
    client = stream.connect(REDIS_URL)
    try:
        with triggers.SmtpReceiver() as receiver:
            env = services_env(url, stream_key) | {
                "EVENTLINE_CAMPAIGNS_PORT": "0",
                "EVENTLINE_SMTP_HOST": "127.0.0.1",
                "EVENTLINE_SMTP_PORT": str(receiver.port),
                "EVENTLINE_SMTP_USERNAME": "",
                "EVENTLINE_SMTP_PASSWORD": "",
                "EVENTLINE_SMTP_STARTTLS": "false",
                "EVENTLINE_SMS_URL": "",
                "EVENTLINE_PUSH_URL": "",
                "EVENTLINE_CAMPAIGNS_SINK_DIR": tempfile.mkdtemp(prefix="eventline-bench-realtime-"),
            }
            async with (
                running_ingestion(IngestionSettings.from_env(env), clock=clock) as ingestion_server,
                running_segmentation(SegmentationSettings.from_env(env), clock=clock) as seg,
            ):
                env["EVENTLINE_SEGMENTATION_ADDR"] = f"127.0.0.1:{seg.port}"
                async with (
                    running_campaigns(CampaignsSettings.from_env(env), clock=clock) as campaigns_server,
                    grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as ingestion_channel,
                    grpc.aio.insecure_channel(f"127.0.0.1:{seg.port}") as segmentation_channel,
                    grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_server.port}") as campaigns_channel,
                ):
                    ingestion = ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel)
                    segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
                    campaigns = campaigns_pb2_grpc.CampaignServiceStub(campaigns_channel)
                    # The 50 segments first, on customers without events (a backfill of segments
                    # over existing events leaves each moving customer's forecast to the
                    # scheduler: minutes of work for 50 segments here, which would be measured too).
                    shapes = []
                    for shape_id, filter_ in variants() if parts & {"trigger", "batch"} else []:
                        shapes.append(f"{shape_id}-{run}")
                        await segmentation.CreateSegment(realtime_segment(shapes[-1], shape_id, filter_))
                    await wait_backfilled(segmentation, shapes)
                    if "trigger" in parts:
                        result |= await segment_trigger(
                            ingestion,
                            segmentation,
                            campaigns,
                            receiver,
                            clock,
                            run,
                            customers,
                            20 if quick else 1_000,
                        )
                    if "batch" in parts:
                        batch = paced_events(f"{run}-b", customers, 11_000 if quick else 51_000, clock.now())
                        await batch_rate(ingestion, batch[:1_000])  # warm-up: connections, plans, caches
                        half = 1_000 + (len(batch) - 1_000) // 2
                        with_50 = await batch_rate(ingestion, batch[1_000:half])
                        for segment_id in shapes:
                            await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
                        without = await batch_rate(ingestion, batch[half:])
                        result["batch_events_per_s_without"] = round(without)
                        result["batch_events_per_s_with_50"] = round(with_50)
                        cost = 100 * (1 - with_50 / without)
                        # Work added cannot make ingestion faster: a negative cost is the machine's noise.
                        result["batch_cost_pct"] = round(cost, 1) if cost >= 0 else None
                        print(
                            f"ingestion batch {result['batch_events_per_s_without']} events/s without real-time "
                            f"segments, {result['batch_events_per_s_with_50']} with 50 (cost "
                            f"{'within noise' if cost < 0 else f'{cost:.1f} %'})",
                            flush=True,
                        )
                    if "batch" not in parts:
                        for segment_id in shapes:  # the timers' figure without them, as in a full run
                            await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
                    if "lateness" in parts:
                        result |= await lateness(ingestion, segmentation, seg.realtime.pool, clock, run, *due)
    finally:
        await client.aclose()
        await drop_database(name)
    return result


async def lateness(
    ingestion: Any,
    segmentation: Any,
    pool: Any,
    clock: RunningClock,
    run: str,
    count: int,
    spread_s: float,
    lead_s: float,
) -> dict[str, Any]:
    """``count`` customers each leave "bench_timer in the last hour" at an instant of their own, all
    within ``spread_s`` seconds starting ``lead_s`` from now; lateness: each ``segment_exited``'s
    received_at (the clock's now when the transition was recorded) minus its occurred_at (its due
    instant), both on the services' one clock."""
    segment_id = f"timer-{run}"
    await segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id=segment_id,
            segment=pb.Segment(
                display_name="Timer",
                filter=pb.Filter(
                    event=pb.EventCondition(
                        name="bench_timer",
                        count=pb.CountTest(
                            period=pb.Period(last=pb.RecentPeriod(amount=1, unit=pb.TIME_UNIT_HOUR))
                        ),
                    )
                ),
                realtime=True,
            ),
        )
    )
    await wait_backfilled(segmentation, [segment_id])
    first_due = clock.now() + dt.timedelta(seconds=lead_s)
    step = dt.timedelta(seconds=spread_s / count)
    for start in range(0, count, 500):
        request = ingestion_pb2.TrackEventsRequest()
        for i in range(start, min(count, start + 500)):
            event = ingestion_pb2.TrackCustomerEventRequest(
                customer_id=f"cust{i:06d}", event_id=f"{run}-t{i}", name="bench_timer"
            )
            event.occurred_at.FromDatetime(first_due - dt.timedelta(hours=1) + i * step)
            request.events.append(ingestion_pb2.TrackEventsItem(customer_event=event))
        await ingestion.TrackEvents(request, timeout=60)
    last_due = first_due + (count - 1) * step
    deadline = time.monotonic() + lead_s + spread_s + 120
    while True:
        rows = await pool.fetch(
            "SELECT e.occurred_at, e.received_at FROM customer_events e JOIN segment_transitions t "
            "ON t.customer_id = e.customer_id AND t.occurred_at = e.occurred_at AND NOT t.entered "
            "WHERE e.name = 'segment_exited' AND t.segment_id = $1",
            segment_id,
        )
        if len(rows) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    entered = await pool.fetchval(
        "SELECT count(*) FROM segment_transitions WHERE segment_id = $1 AND entered", segment_id
    )
    if entered != count or len(rows) != count:
        raise SystemExit(
            f"timer lateness: {entered} of {count} customers entered and {len(rows)} exited: the events "
            f"were not all handled {lead_s} s before their exits (the lead is too short for this machine)"
        )
    late = sorted((r[1] - r[0]).total_seconds() * 1000 for r in rows)
    if late[0] < 0 or any(not first_due <= r[0] <= last_due + dt.timedelta(seconds=1) for r in rows):
        raise SystemExit("timer lateness: a transition recorded before its instant, or at another one")
    await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
    figures = {
        "timer_transitions": count,
        "timer_spread_s": spread_s,
        "timer_lateness_p50_ms": round(pct(late, 50), 1),
        "timer_lateness_p99_ms": round(pct(late, 99), 1),
    }
    print(
        f"timer lateness over {count:,} exits due within {spread_s:g} s: p50 {figures['timer_lateness_p50_ms']} ms, "
        f"p99 {figures['timer_lateness_p99_ms']} ms",
        flush=True,
    )
    return figures


async def segment_trigger(
    ingestion: Any,
    segmentation: Any,
    campaigns: Any,
    receiver: triggers.SmtpReceiver,
    clock: RunningClock,
    run: str,
    customers: int,
    rate: int,
) -> dict[str, Any]:
    """Event accepted -> e-mail received, through a campaign with a SegmentTrigger (entered), while
    events of the 50 segments' names arrive at ``rate`` per second."""
    probe = f"probe-{run}"
    await segmentation.CreateSegment(realtime_segment(probe, "Probe", PROBE))
    await wait_backfilled(segmentation, [probe])
    await triggers.activate(
        campaigns,
        demo_campaigns.email_campaign(
            campaigns_pb2.Trigger(
                segment=campaigns_pb2.SegmentTrigger(segment_id=probe, on=pb.TRANSITION_KIND_ENTERED)
            ),
            display_name="Entered probe",
            subject="{{ client.customer_id }}",
            text_body="Welcome",
        ),
    )
    # A first probe, until its message arrives: campaigns has seen the campaign (it polls them).
    await ingestion.TrackCustomerEvent(
        ingestion_pb2.TrackCustomerEventRequest(
            event_id=f"{run}-probe-first", customer_id="cust000000", name="bench_probe"
        )
    )
    await triggers.wait_for_messages(receiver, 1, 60)
    stop = asyncio.Event()
    paced = 0

    async def pace() -> None:
        nonlocal paced
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            if due > paced:
                due = min(due, paced + 500)
                batch = paced_events(f"{run}-p{paced}", customers, due - paced, clock.now())
                await ingestion.TrackEvents(
                    ingestion_pb2.TrackEventsRequest(
                        events=[
                            ingestion_pb2.TrackEventsItem(customer_event=ingest.customer_request(e))
                            for e in batch
                        ]
                    ),
                    timeout=60,
                )
                paced = due
            await asyncio.sleep(0.02)

    pacing = asyncio.create_task(pace())
    sent: dict[str, int] = {}
    paced_started = time.monotonic()
    try:
        for i in range(customers - 100, customers):
            customer = f"cust{i:06d}"
            sent[customer] = time.perf_counter_ns()
            await ingestion.TrackCustomerEvent(
                ingestion_pb2.TrackCustomerEventRequest(
                    event_id=f"{run}-probe{i}", customer_id=customer, name="bench_probe"
                )
            )
            await asyncio.sleep(0.05)
        await triggers.wait_for_messages(receiver, 1 + len(sent), 120)
    finally:
        stop.set()
        await pacing
    achieved = paced / (time.monotonic() - paced_started)
    latencies = []
    for customer, at in sent.items():
        arrival = receiver.arrived.get(customer)
        triggers.impossible_unless(arrival is not None, f"no message for {customer}")
        assert arrival is not None
        triggers.impossible_unless(
            arrival.perf_ns > at, f"{customer}'s message arrived before its event was sent"
        )
        latencies.append((arrival.perf_ns - at) / 1e6)
    triggers.impossible_unless(not receiver.repeated, f"messages received twice: {receiver.repeated[:3]}")
    figures = {
        "segment_trigger_p50_ms": round(pct(latencies, 50), 1),
        "segment_trigger_p99_ms": round(pct(latencies, 99), 1),
        "paced_events_per_s": round(achieved),
    }
    print(
        f"segment trigger (event -> e-mail received) p50 {figures['segment_trigger_p50_ms']} ms, "
        f"p99 {figures['segment_trigger_p99_ms']} ms, with 50 real-time segments and "
        f"{figures['paced_events_per_s']} events/s",
        flush=True,
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10,000 customers / 500,000 events")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default: all): backfill is backfill_s to "
        "transition_p99_ms, on bench/segments.py's data; the others are the live figures",
    )
    options = parser.parse_args()
    chosen = set(options.parts.split(","))
    if chosen - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(chosen - set(PARTS)))}")
    figures = asyncio.run(main(options.quick)) if "backfill" in chosen else {}
    if chosen - {"backfill"}:
        figures |= asyncio.run(live(options.quick, chosen))
    print(json.dumps(figures))
