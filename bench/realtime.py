"""Real-time segments benchmark (issue 13): backfill against count, stored size, how long an event
takes to become a ``segment_entered`` on the stream and a SegmentTrigger's e-mail, timer
lateness, and what 50 real-time segments cost ingestion.

Part backfill reuses bench/segments.py's data (its database, generated when missing: 10,000
customers / 500,000 events with --quick, 100,000 / 10,000,000 otherwise), with segmentation in
this process on a ManualClock standing at the moment the data was generated (its filters' periods
are relative to that instant), driving its backfill and scheduler in burst mode:

* ``backfill_s``: marking shape 1 of bench/segments.py ("E05 at least 3 times in the last 30
  days") real-time until its backfill ends (membership stored; the forecasts of the customers
  with a recent E05 event left to a forecast sweep), next to ``count_ms``, CountCustomers of
  the same filter in the same run; ``backfill_forecasts_s``: the scheduler walking that sweep
  (each customer's forecast, 500 a page, each getting its timer).
* ``size_p50_ms`` / ``size_p99_ms``: GetSegmentSize of that segment through gRPC (stored size),
  300 calls one after another from a client process of its own, as an application would ask.

The other parts run on a database of their own (2,000 customers with an e-mail address with
--quick, 100,000 otherwise, and 100,000 whenever the lateness part runs; bench/triggers.py's) with ingestion, segmentation and campaigns as
their own processes (``python -m eventline_<service>``, bench/triggers.py's ``Services``), on the
system clock, e-mail to bench/triggers.py's SMTP receiver in this process:

* ``transition_p50_ms`` / ``transition_p99_ms`` (part transition, first, before the 50 segments
  exist): TrackCustomerEvent called → its ``segment_entered`` read from the stream, one new
  customer at a time, for a segment "bench_probe at least once" alone; split at the event's own
  entry on the stream: ``transition_to_stream_*`` (call → event appended: ingestion's commit and
  relay); ``transition_accepted_*``: from the call's answer (the event accepted: committed, the
  issue's starting point) → ``segment_entered`` read, the same probes and ``transition_in_segmentation_*`` (event appended → ``segment_entered`` appended: the
  consumer, the evaluation transaction, the notification and the relay's second hop), from the
  entries' ids (Redis's wall clock, whole milliseconds).
* then 50 real-time segments (``variants``: the five shapes of bench/segments.py, ten variants
  each) are created on customers without events (a backfill over existing events leaves each
  moving customer's forecast to the scheduler: minutes of work for 50 segments on this machine,
  which every later figure would carry).
* ``segment_trigger_p50_ms`` / ``segment_trigger_p99_ms``: TrackCustomerEvent called → the
  e-mail received by the SMTP receiver, through a campaign with a SegmentTrigger (entered
  "bench_probe at least once"), 200 customers one every 50 ms (the p99 is then not the worst
  probe or two alone), while events of the 50 segments' names (for the first 2,000 customers
  with --quick) arrive at 1,000/s, the issue's rate, with either option; ``paced_events_per_s``
  is the rate achieved, ``paced_transition_p50_ms`` / ``p99`` the call → ``segment_entered`` on the stream of
  the same probes. A message missing, repeated or arriving before its call stops the run.
  ``segment_trigger_settled_p50_ms`` / ``p99``: the same of the probes sent once the paced events
  had run a second (``segment_trigger_settled_probes`` of them; the first ones meet the
  deployment's start under the load). ``segment_trigger_legs_p50_ms`` / ``p99``, each leg's own
  percentiles over the probes, on the wall clock in whole milliseconds (the entries' ids):
  ``to_stream`` (call → the event's entry: ingestion's commit and relay), ``segmentation``
  (→ its ``segment_entered`` entry: the consumer, its transaction, the relay again) and
  ``campaigns`` (→ the e-mail received: campaigns' consumer, delivery and SMTP).
* ``batch_events_per_s_with_50`` / ``batch_events_per_s_without`` / ``batch_cost_pct``: TrackEvents
  in calls of 500, 4 in flight, until the last reply, on this deployment (the 50 segments, and the
  trigger part's segment and campaign when it ran) and on a second one of its own without
  real-time segments (same customers, same processes), in alternating rounds (two warm-up
  rounds each, then W N N W …, 6 pairs with --quick, 8 without, ``--batch-pairs``: the machine's
  load and the databases' growth fall on both alike); the rates are medians of the rounds
  (``batch_rounds``), ``batch_cost_pct`` the median of each back-to-back pair's cost
  (``batch_cost_pct_pairs``), so that one round the shared machine slowed does not decide it. A
  round ends when the deployment's consumers have handled its events (``batch_consumed_s``, from
  the first call; ``batch_consumed_after_calls_s``, from the last reply; the service processes'
  CPU until the last reply alone: ``batch_cpu_us_per_event_in_calls``): ``batch_cpu_us_per_event`` is each service process's and the database's
  PostgreSQL backends' CPU (user + system, from the kernel) per event over those rounds. A
  negative cost (more work, faster) is noise: printed as null. ``batch_events_per_s_import`` /
  ``batch_cost_pct_import``: the same with the 50 segments, the calls hinted as a bulk import
  (``TrackEventsRequest.bulk_import``: the real-time consumer defers its reading until they
  end), in rounds of their own, each run next to a round without segments (rounds W N I, I N W,
  …); ``batch_consumed_s_import``: the median time from the last reply of a hinted round until
  its events were handled (the catch-up the hint defers work to).
* ``timer_lateness_p50_ms`` / ``timer_lateness_p99_ms`` / ``timer_lateness_max_ms`` (the 50
  segments deleted): ``timer_transitions`` customers (100,000, the issue's figure, with either
  option) each leave "bench_timer in the last hour" at an instant of their own, all within
  ``timer_spread_s`` (60 s); lateness is each ``segment_exited``'s received_at (the system
  clock's now when the transition was recorded) minus its occurred_at (its exact instant). Their
  events are sent first, each customer entering the segment, within a lead of 240 s (600 s
  without --quick, where the other parts' backlog may come first; ``timer_events_handled_s``: how
  long they took). ``timer_transitions_per_s``: the exits over the time from the first due
  instant to the last recorded; ``timer_cpu_us_per_transition``: each service process's and the
  database's PostgreSQL backends' CPU (the bench's own connection left out) from when every
  customer had entered until every exit was recorded, per exit; ``timer_load``: the load
  average then and at the end. The run refuses (exits) unless every customer entered within
  the lead and exited once within 120 s of the last due instant, and no exit is recorded before
  its instant.

Usage: python bench/realtime.py [--quick] [--parts backfill,transition,trigger,batch,lateness]
[--service-path PATHS] [--batch-pairs N]. ``--service-path`` (PYTHONPATH entries, ":"-joined) runs
the services of the parts other than backfill from another checkout (its migrations make the
databases), measured by this checkout's bench. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import ingest
import triggers
from common import REDIS_URL, backend_cpu_used, consumed, database_backend_cpu, drop_database
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc
from ingest import Event
from segments import NAMES, SHAPE1, SHAPE2, SHAPE5, A, B, ev, last_days, pct, prepare, timed

from eventline_cli import demo_campaigns
from eventline_segmentation.service import running as running_segmentation
from eventline_segmentation.settings import Settings as SegmentationSettings
from eventline_shared import values
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream

PROBE = pb.Filter(event=pb.EventCondition(name="bench_probe"))
"""The probes' segment: "bench_probe at least once" (a new customer's first probe enters it)."""


PARTS = ("backfill", "transition", "trigger", "batch", "lateness")
SETTLED_S = 1.0
"""The trigger part's ``settled`` figures leave out the probes sent before the paced events had
run this long: the deployment's start under the load (each connection's first plan of each large
evaluation statement), docs/performance.md."""
TIMERS = 100_000
"""Exits due within one minute in the lateness part (the issue's figure)."""
WARM_UP_ROUNDS = 2
"""Unmeasured batch rounds of each deployment before the measured pairs."""


def realtime_segment(segment_id: str, display_name: str, filter_: pb.Filter) -> pb.CreateSegmentRequest:
    return pb.CreateSegmentRequest(
        segment_id=segment_id, segment=pb.Segment(display_name=display_name, filter=filter_, realtime=True)
    )


def services_env(url: str, stream_key: str) -> dict[str, str]:
    """The in-process segmentation's settings: the database, Redis and stream, any free port."""
    return {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": stream_key,
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
    async with (
        running_segmentation(SegmentationSettings.from_env(env), clock=clock, background=False) as seg,
        grpc.aio.insecure_channel(f"127.0.0.1:{seg.port}") as segmentation_channel,
    ):
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
        # As a service is served (``serve_main``): what was built to start, here the backfill's and
        # the sweep's leftovers too, is out of the collector's generations.
        gc.collect()
        gc.freeze()
        sizes, size, stored = await sizes_from_a_client(f"127.0.0.1:{seg.port}", shape, 300)
        if not stored or size != counted.count:
            raise SystemExit(f"stored size {size} (stored: {stored}), count {counted.count}")
        result["size_p50_ms"] = round(pct(sizes, 50), 2)
        result["size_p99_ms"] = round(pct(sizes, 99), 2)
        result["segment_size"] = size
        print(
            f"backfill {result['backfill_s']} s for {size:,} members (forecasts after it: "
            f"{result['backfill_forecasts_s']} s); CountCustomers {count_ms:.0f} ms; "
            f"size p50 {result['size_p50_ms']} ms p99 {result['size_p99_ms']} ms",
            flush=True,
        )

        # The data is reused by every run: leave no real-time segment (nor its timers) behind.
        await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=shape))
    return result


_SIZES = """
import json, sys, time
import grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb, segmentation_pb2_grpc
target, segment_id, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
with grpc.insecure_channel(target) as channel:
    size = segmentation_pb2_grpc.SegmentationServiceStub(channel).GetSegmentSize
    request = pb.GetSegmentSizeRequest(segment_id=segment_id)
    reply = size(request)  # connected first, as a client's channel is once it has called
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        reply = size(request)
        times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"ms": times, "size": reply.size, "stored": reply.stored}))
"""


async def sizes_from_a_client(target: str, segment_id: str, calls: int) -> tuple[list[float], int, bool]:
    """``calls`` GetSegmentSize of ``segment_id`` one after another from a client process of its own
    (gRPC's blocking stub), as an application asks: milliseconds each, the last size, stored."""
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SIZES, target, segment_id, str(calls), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await client.communicate()
    if client.returncode != 0:
        raise SystemExit(f"the GetSegmentSize client failed ({client.returncode})")
    reply = json.loads(out)
    return reply["ms"], reply["size"], reply["stored"]


# --- With 50 real-time segments running (a database of its own) -------------------------


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


async def batch_rate(ingestion: Any, events: list[Event], bulk_import: bool = False) -> float:
    """Events per second accepted by TrackEvents in calls of 500, 4 in flight (bench/ingest.py's
    batch phase), until the last reply (each reply: committed). Not until they are on the stream:
    with real-time segments running, transitions are appended to it too. ``bulk_import``: the calls
    say they are a bulk import (``TrackEventsRequest.bulk_import``)."""
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
                    ],
                    bulk_import=bulk_import,
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


@dataclass
class Deployment:
    """The three services as processes (bench/triggers.py's ``Services``) on a database and stream
    of their own, with clients of each."""

    url: str
    stream_key: str
    services: triggers.Services
    ingestion: Any
    segmentation: Any
    campaigns: Any


@contextlib.asynccontextmanager
async def deployment(
    database: str, customers: int, receiver: triggers.SmtpReceiver, python_path: str | None = None
) -> AsyncIterator[Deployment]:
    """bench/triggers.py's customers in database ``database`` and its services started on it
    (``python_path``: another checkout's code, its migrations too); all stopped and dropped (the
    stream too) afterwards."""
    url = await triggers.database_with_customers(database, customers, python_path)
    stream_key = f"eventline:bench:{database}"
    services = triggers.Services(
        url, stream_key, receiver.port, tempfile.mkdtemp(prefix="eventline-bench-realtime-"), python_path
    )
    try:
        await services.ready()
        address = f"127.0.0.1:{services.ports['segmentation']}"
        async with services.stubs() as (ingestion, campaigns), grpc.aio.insecure_channel(address) as channel:
            yield Deployment(
                url,
                stream_key,
                services,
                ingestion,
                segmentation_pb2_grpc.SegmentationServiceStub(channel),
                campaigns,
            )
    finally:
        services.stop()
        client = stream.connect(REDIS_URL)
        try:
            await client.delete(
                stream_key, stream.dead_letter_key(stream_key), stream.import_mark_key(stream_key)
            )
        finally:
            await client.aclose()
        await drop_database(database)


async def live(
    quick: bool, parts: set[str], python_path: str | None = None, batch_pairs: int | None = None
) -> dict[str, Any]:
    customers = 2_000 if quick else 100_000
    # The 100,000 transitions due within one minute, with either option; the lead (the
    # timers' events handled before the first is due) is longer where the backlog of a full run
    # may come first.
    due = (TIMERS, 60.0, 240.0 if quick else 600.0)  # timers, spread (s), lead (s)
    # The timers' customers exist (the other parts use the first ``customers`` of them).
    populated = max(customers, TIMERS) if "lateness" in parts else customers
    run = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {}
    with triggers.SmtpReceiver() as receiver:
        async with deployment(f"eventline_bench_realtime_{run}", populated, receiver, python_path) as with_50:
            if "transition" in parts:
                result |= await transitions_alone(with_50, run, 200)
            # The 50 segments first, on customers without events (a backfill of segments over
            # existing events leaves each moving customer's forecast to the scheduler: minutes of
            # work for 50 segments here, which would be measured too).
            shapes = []
            for shape_id, filter_ in variants() if parts & {"trigger", "batch"} else []:
                shapes.append(f"{shape_id}-{run}")
                await with_50.segmentation.CreateSegment(realtime_segment(shapes[-1], shape_id, filter_))
            await wait_backfilled(with_50.segmentation, shapes)
            if "trigger" in parts:
                result |= await segment_trigger(with_50, receiver, run, customers, 1_000, 200)
            if "batch" in parts:
                async with deployment(
                    f"eventline_bench_realtime_{run}_without", customers, receiver, python_path
                ) as without:
                    pairs = batch_pairs or (6 if quick else 8)
                    result |= await batch_rounds(
                        with_50, without, run, customers, 5_000 if quick else 25_000, pairs
                    )
            for segment_id in shapes:  # the timers' figure without them, as in a full run
                await with_50.segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
            if "lateness" in parts:
                result |= await lateness(with_50, run, *due)
    return result


def entry_ms(entry_id: bytes) -> int:
    """When Redis appended a stream entry: the milliseconds of its id (Redis's wall clock)."""
    return int(entry_id.split(b"-")[0])


async def transitions_alone(live: Deployment, run: str, count: int) -> dict[str, Any]:
    """TrackCustomerEvent called -> its ``segment_entered`` on the stream, one new customer at a
    time, for a segment "bench_probe at least once" alone; split at the event's own entry on the
    stream (the calls and the entries are compared on the wall clock, in whole milliseconds)."""
    segment_id = f"transition-{run}"
    await live.segmentation.CreateSegment(realtime_segment(segment_id, "Transition", PROBE))
    await wait_backfilled(live.segmentation, [segment_id])
    client = stream.connect(REDIS_URL)
    latencies, from_accepted, to_stream, in_segmentation = [], [], [], []
    before = live.services.cpu_seconds()
    try:
        newest: Any = await client.xrevrange(live.stream_key, count=1)
        last_id = newest[0][0] if newest else "0-0"
        for i in range(count):
            customer = f"probe-{run}-{i}"
            started, called_ms = time.perf_counter(), time.time_ns() / 1e6
            await live.ingestion.TrackCustomerEvent(
                ingestion_pb2.TrackCustomerEventRequest(
                    event_id=f"p{i}", customer_id=customer, name="bench_probe"
                )
            )
            accepted = time.perf_counter()  # answered: the event is committed
            event_ms, entered_ms = 0, 0
            while not entered_ms:
                reply: Any = await client.xread({live.stream_key: last_id}, block=5000)
                if not reply:
                    raise SystemExit(f"no segment_entered for {customer} within 5 s")
                for _, entries in reply:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        if fields.get(b"customer_id") != customer.encode():
                            continue
                        if fields.get(b"name") == b"bench_probe":
                            event_ms = entry_ms(entry_id)
                        elif fields.get(b"name") == b"segment_entered":
                            entered_ms = entry_ms(entry_id)
            read = time.perf_counter()
            latencies.append((read - started) * 1000)
            from_accepted.append((read - accepted) * 1000)
            to_stream.append(event_ms - called_ms)
            in_segmentation.append(entered_ms - event_ms)
    finally:
        await client.aclose()
    used = {name: seconds - before[name] for name, seconds in live.services.cpu_seconds().items()}
    await live.segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
    figures: dict[str, Any] = {
        "transition_p50_ms": round(pct(latencies, 50), 1),
        "transition_p99_ms": round(pct(latencies, 99), 1),
        "transition_accepted_p50_ms": round(pct(from_accepted, 50), 1),
        "transition_accepted_p99_ms": round(pct(from_accepted, 99), 1),
        "transition_to_stream_p50_ms": round(pct(to_stream, 50), 1),
        "transition_to_stream_p99_ms": round(pct(to_stream, 99), 1),
        "transition_in_segmentation_p50_ms": round(pct(in_segmentation, 50), 1),
        "transition_in_segmentation_p99_ms": round(pct(in_segmentation, 99), 1),
        "transition_cpu_ms_per_event": {
            name: round(seconds / count * 1000, 2) for name, seconds in used.items()
        },
    }
    print(
        f"transition p50 {figures['transition_p50_ms']} ms, p99 {figures['transition_p99_ms']} ms (from the "
        f"call's answer p50 {figures['transition_accepted_p50_ms']}, p99 {figures['transition_accepted_p99_ms']}; call -> "
        f"event on the stream p50 {figures['transition_to_stream_p50_ms']}, p99 "
        f"{figures['transition_to_stream_p99_ms']}; event -> segment_entered on the stream p50 "
        f"{figures['transition_in_segmentation_p50_ms']}, p99 {figures['transition_in_segmentation_p99_ms']}); "
        f"CPU ms per probe {figures['transition_cpu_ms_per_event']} (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return figures


async def caught_up(client: stream.Client, key: str, groups: Sequence[str], timeout_s: float = 600.0) -> None:
    """Return once every group of ``groups`` has read and acknowledged everything on ``key``."""
    deadline = time.monotonic() + timeout_s
    for group in groups:
        while not await consumed(client, [key], group):
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {group} still behind on {key} after {timeout_s} s")
            await asyncio.sleep(0.02)


async def batch_rounds(
    with_50: Deployment, without: Deployment, run: str, customers: int, events: int, pairs: int
) -> dict[str, Any]:
    """Ingestion's batch rate with the 50 segments (and the probe's, and its campaign, when the
    trigger part ran), the same with the calls hinted as a bulk import (I), and without any
    segment (N), in rounds W N I, I N W, … after two warm-up rounds of W and N each (every W and
    every I next to an N); CPU per event of each service process and of the database's
    PostgreSQL backends, each round counted until the deployment's consumers have handled its
    events."""
    set_ups = {"with_50": with_50, "without": without, "with_50_import": with_50}
    # Without real-time segments segmentation may read no stream at all: wait for campaigns only.
    groups = {
        "with_50": ("segmentation", "campaigns"),
        "without": ("campaigns",),
        "with_50_import": ("segmentation", "campaigns"),
    }
    triple = ("with_50", "without", "with_50_import")
    order = [label for i in range(pairs) for label in (triple if i % 2 == 0 else triple[::-1])]
    rates: dict[str, list[float]] = {label: [] for label in set_ups}
    caught: dict[str, list[float]] = {label: [] for label in set_ups}
    after_calls: dict[str, list[float]] = {label: [] for label in set_ups}
    cpu: dict[str, dict[str, float]] = {label: {} for label in set_ups}
    cpu_in_calls: dict[str, dict[str, float]] = {label: {} for label in set_ups}
    client = stream.connect(REDIS_URL)
    try:
        # Two warm-up rounds each: the first rounds of a deployment ran at a fraction of the later
        # ones' rates (connections opened and statements prepared in ingestion's pool of 16; 2,464 →
        # 16,247 events/s over the rounds of one run with the segments, 5,035 → 23,663 without).
        warm_up = ["with_50", "without"] * WARM_UP_ROUNDS
        for number, label in enumerate([*warm_up, *order]):
            set_up = set_ups[label]
            batch = paced_events(f"{run}-b{number}", customers, events, dt.datetime.now(dt.UTC))
            before = set_up.services.cpu_seconds()
            backends = await database_backend_cpu(set_up.url)
            started = time.perf_counter()
            rate = await batch_rate(set_up.ingestion, batch, bulk_import=label == "with_50_import")
            replied = time.perf_counter()
            in_calls = {
                name: seconds - before[name] for name, seconds in set_up.services.cpu_seconds().items()
            }
            await caught_up(client, set_up.stream_key, groups[label])
            elapsed = time.perf_counter() - started
            used = {name: seconds - before[name] for name, seconds in set_up.services.cpu_seconds().items()}
            used["postgres"] = backend_cpu_used(backends, await database_backend_cpu(set_up.url))
            print(
                f"{'warm-up ' if number < len(warm_up) else ''}round {label}: {rate:.0f} events/s, consumed after "
                f"{elapsed:.1f} s, CPU µs per event "
                + ", ".join(f"{name} {seconds / events * 1e6:.0f}" for name, seconds in used.items())
                + f"; segmentation's until the last reply {in_calls['segmentation'] / events * 1e6:.0f}"
                + f" (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            if number < len(warm_up):
                continue
            rates[label].append(rate)
            caught[label].append(elapsed)
            after_calls[label].append(time.perf_counter() - replied)
            for name, seconds in used.items():
                cpu[label][name] = cpu[label].get(name, 0.0) + seconds
            for name, seconds in in_calls.items():
                cpu_in_calls[label][name] = cpu_in_calls[label].get(name, 0.0) + seconds
    finally:
        await client.aclose()
    medians = {label: statistics.median(found) for label, found in rates.items()}
    # Each pair of rounds (W N, then N W, …) ran back to back: its cost compares the two deployments
    # under about the same load, and the median of the pairs' costs leaves a round that the shared
    # machine slowed out of the figure instead of letting it decide it.
    costs = [
        100 * (1 - with_50 / without)
        for with_50, without in zip(rates["with_50"], rates["without"], strict=True)
    ]
    cost = statistics.median(costs)
    # The hinted rounds against the N round of their triple (run next to it).
    import_costs = [
        100 * (1 - hinted / without)
        for hinted, without in zip(rates["with_50_import"], rates["without"], strict=True)
    ]
    import_cost = statistics.median(import_costs)
    figures: dict[str, Any] = {
        "batch_events_per_s_without": round(medians["without"]),
        "batch_events_per_s_with_50": round(medians["with_50"]),
        # Work added cannot make ingestion faster: a negative cost is the machine's noise.
        "batch_cost_pct": round(cost, 1) if cost >= 0 else None,
        "batch_cost_pct_pairs": [round(c, 1) for c in costs],
        "batch_events_per_s_import": round(medians["with_50_import"]),
        "batch_cost_pct_import": round(import_cost, 1) if import_cost >= 0 else None,
        "batch_cost_pct_import_pairs": [round(c, 1) for c in import_costs],
        "batch_rounds": {label: [round(r) for r in found] for label, found in rates.items()},
        "batch_consumed_s": {label: [round(s, 2) for s in found] for label, found in caught.items()},
        # From the last reply until the consumers had handled the round: the hinted rounds' catch-up.
        "batch_consumed_after_calls_s": {
            label: [round(s, 2) for s in found] for label, found in after_calls.items()
        },
        "batch_consumed_s_import": round(statistics.median(after_calls["with_50_import"]), 2),
        "batch_cpu_us_per_event": {
            label: {name: round(seconds / (events * pairs) * 1e6, 1) for name, seconds in used_by.items()}
            for label, used_by in cpu.items()
        },
        # The service processes' CPU from the first call to the last reply only (what competes
        # with the calls for the cores; PostgreSQL's is not read in between).
        "batch_cpu_us_per_event_in_calls": {
            label: {name: round(seconds / (events * pairs) * 1e6, 1) for name, seconds in used_by.items()}
            for label, used_by in cpu_in_calls.items()
        },
    }
    print(
        f"ingestion batch {figures['batch_events_per_s_without']} events/s without real-time segments, "
        f"{figures['batch_events_per_s_with_50']} with 50 (medians of {pairs} rounds each); cost "
        f"{'within noise' if cost < 0 else f'{cost:.1f} %'} (median of the pairs' "
        f"{figures['batch_cost_pct_pairs']}); hinted as a bulk import {figures['batch_events_per_s_import']}"
        f" events/s, cost {figures['batch_cost_pct_import']} % (pairs {figures['batch_cost_pct_import_pairs']}),"
        f" consumed {figures['batch_consumed_s_import']} s after the last reply (median); CPU µs per event "
        f"{figures['batch_cpu_us_per_event']}",
        flush=True,
    )
    return figures


async def transitions_recorded(
    database: asyncpg.Connection, segment_id: str, entered: bool, count: int, deadline: float
) -> int:
    """How many transitions of the segment that enter (or exit) are recorded, once ``count`` are or
    at ``deadline`` (a count of the log every 0.2 s: cheap beside the work measured)."""
    while True:
        found = int(
            await database.fetchval(
                "SELECT count(*) FROM segment_transitions WHERE segment_id = $1 AND entered = $2",
                segment_id,
                entered,
            )
        )
        if found >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def lateness(live: Deployment, run: str, count: int, spread_s: float, lead_s: float) -> dict[str, Any]:
    """``count`` customers each leave "bench_timer in the last hour" at an instant of their own, all
    within ``spread_s`` seconds starting ``lead_s`` from now; lateness: each ``segment_exited``'s
    received_at (the clock's now when the transition was recorded) minus its occurred_at (its due
    instant), both on the services' one clock. CPU per exit: each service process's and the
    database's PostgreSQL backends' (the bench's own connection left out), from the moment every
    customer has entered until every exit is recorded."""
    segment_id = f"timer-{run}"
    segmentation, ingestion = live.segmentation, live.ingestion
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
    started = time.monotonic()
    first_due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead_s)
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
    database = await asyncpg.connect(live.url)
    try:
        own = await database.fetchval("SELECT pg_backend_pid()")
        entered = await transitions_recorded(database, segment_id, True, count, started + lead_s)
        handled_s = time.monotonic() - started
        if entered != count:
            raise SystemExit(
                f"timer lateness: {entered} of {count} customers entered within the {lead_s:g} s lead "
                "(the lead is too short for this machine)"
            )
        print(f"timer lateness: {count:,} customers entered after {handled_s:.1f} s", flush=True)
        cpu_before = live.services.cpu_seconds()
        backends = await database_backend_cpu(live.url)
        load = [os.getloadavg()[0]]
        deadline = started + lead_s + spread_s + 120
        exited = await transitions_recorded(database, segment_id, False, count, deadline)
        cpu = {name: s - cpu_before[name] for name, s in live.services.cpu_seconds().items()}
        after = await database_backend_cpu(live.url)
        cpu["postgres"] = backend_cpu_used(backends, {pid: s for pid, s in after.items() if pid != own})
        load.append(os.getloadavg()[0])
        rows = await database.fetch(
            "SELECT e.occurred_at, e.received_at FROM customer_events e JOIN segment_transitions t "
            "ON t.customer_id = e.customer_id AND t.occurred_at = e.occurred_at AND NOT t.entered "
            "WHERE e.name = 'segment_exited' AND t.segment_id = $1",
            segment_id,
        )
        entered = int(
            await database.fetchval(
                "SELECT count(*) FROM segment_transitions WHERE segment_id = $1 AND entered", segment_id
            )
        )
    finally:
        await database.close()
    if entered != count or exited != count or len(rows) != count:
        raise SystemExit(
            f"timer lateness: {entered} of {count} customers entered, {exited} exits recorded and "
            f"{len(rows)} segment_exited events stored"
        )
    late = sorted((r[1] - r[0]).total_seconds() * 1000 for r in rows)
    if late[0] < 0 or any(not first_due <= r[0] <= last_due + dt.timedelta(seconds=1) for r in rows):
        raise SystemExit("timer lateness: a transition recorded before its instant, or at another one")
    await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id=segment_id))
    firing_s = (max(r[1] for r in rows) - first_due).total_seconds()
    figures = {
        "timer_transitions": count,
        "timer_spread_s": spread_s,
        "timer_lateness_p50_ms": round(pct(late, 50), 1),
        "timer_lateness_p99_ms": round(pct(late, 99), 1),
        "timer_lateness_max_ms": round(late[-1], 1),
        "timer_transitions_per_s": round(count / firing_s),
        "timer_events_handled_s": round(handled_s, 1),
        "timer_cpu_us_per_transition": {name: round(s / count * 1e6, 1) for name, s in cpu.items()},
        "timer_load": [round(v, 1) for v in load],
    }
    print(
        f"timer lateness over {count:,} exits due within {spread_s:g} s: p50 {figures['timer_lateness_p50_ms']} ms, "
        f"p99 {figures['timer_lateness_p99_ms']} ms, max {figures['timer_lateness_max_ms']} ms; "
        f"{figures['timer_transitions_per_s']} transitions/s (first due -> last recorded); CPU µs per "
        f"transition {figures['timer_cpu_us_per_transition']} (load {load[0]:.1f} -> {load[1]:.1f})",
        flush=True,
    )
    return figures


async def entered_on_stream(
    key: str, after: str, segment_id: str, found: dict[str, int], probed: dict[str, int], stop: asyncio.Event
) -> None:
    """Until ``stop``: each customer's ``segment_entered`` of ``segment_id`` appended to ``key``
    after entry ``after`` (``found``), and their first "bench_probe" event's own entry
    (``probed``), by the milliseconds of the entries' ids (Redis's wall clock)."""
    client = stream.connect(REDIS_URL)
    try:
        while not stop.is_set():
            reply: Any = await client.xread({key: after}, block=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    after = entry_id
                    if fields.get(b"name") == b"bench_probe":
                        probed.setdefault(fields[b"customer_id"].decode(), entry_ms(entry_id))
                    if fields.get(b"name") != b"segment_entered":
                        continue
                    event = common_pb2.Event.FromString(fields[b"payload"])
                    if event.context["segment_id"].string_value == segment_id:
                        found.setdefault(event.customer_id, entry_ms(entry_id))
    finally:
        await client.aclose()


async def segment_trigger(
    live: Deployment, receiver: triggers.SmtpReceiver, run: str, customers: int, rate: int, probes: int
) -> dict[str, Any]:
    """Event accepted -> e-mail received, through a campaign with a SegmentTrigger (entered), for
    ``probes`` customers one every 50 ms, while events of the 50 segments' names arrive at ``rate``
    per second; and event accepted -> its ``segment_entered`` on the stream meanwhile."""
    ingestion, segmentation, campaigns = live.ingestion, live.segmentation, live.campaigns
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
                batch = paced_events(f"{run}-p{paced}", customers, due - paced, dt.datetime.now(dt.UTC))
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

    client = stream.connect(REDIS_URL)
    try:
        newest: Any = await client.xrevrange(live.stream_key, count=1)
    finally:
        await client.aclose()
    entered: dict[str, int] = {}
    probed: dict[str, int] = {}
    reading = asyncio.create_task(
        entered_on_stream(live.stream_key, newest[0][0] if newest else "0-0", probe, entered, probed, stop)
    )
    pacing = asyncio.create_task(pace())
    sent: dict[str, int] = {}
    sent_wall: dict[str, int] = {}
    paced_started = time.monotonic()
    settled: set[str] = set()  # the probes sent once the paced events had run SETTLED_S
    try:
        for i in range(customers - probes, customers):
            customer = f"cust{i:06d}"
            sent[customer] = time.perf_counter_ns()
            sent_wall[customer] = time.time_ns()
            if time.monotonic() - paced_started >= SETTLED_S:
                settled.add(customer)
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
        await reading
    achieved = paced / (time.monotonic() - paced_started)
    latencies, settled_latencies = [], []
    for customer, at in sent.items():
        arrival = receiver.arrived.get(customer)
        triggers.impossible_unless(arrival is not None, f"no message for {customer}")
        assert arrival is not None
        triggers.impossible_unless(
            arrival.perf_ns > at, f"{customer}'s message arrived before its event was sent"
        )
        latencies.append((arrival.perf_ns - at) / 1e6)
        if customer in settled:
            settled_latencies.append(latencies[-1])
    triggers.impossible_unless(not receiver.repeated, f"messages received twice: {receiver.repeated[:3]}")
    # Entry ids count whole milliseconds: an entry stamped in the call's millisecond reads up to 1 ms early.
    on_stream = []
    legs: dict[str, list[float]] = {"to_stream": [], "segmentation": [], "campaigns": []}
    for customer, wall_ns in sent_wall.items():
        triggers.impossible_unless(customer in entered, f"no segment_entered for {customer} on the stream")
        on_stream.append(entered[customer] - wall_ns / 1e6)
        triggers.impossible_unless(on_stream[-1] > -1, f"{customer} entered before its event was sent")
        triggers.impossible_unless(customer in probed, f"no bench_probe event of {customer} on the stream")
        legs["to_stream"].append(probed[customer] - wall_ns / 1e6)
        legs["segmentation"].append(entered[customer] - probed[customer])
        legs["campaigns"].append(receiver.arrived[customer].wall_ns / 1e6 - entered[customer])
    figures = {
        "paced_transition_p50_ms": round(pct(on_stream, 50), 1),
        "paced_transition_p99_ms": round(pct(on_stream, 99), 1),
        "segment_trigger_p50_ms": round(pct(latencies, 50), 1),
        "segment_trigger_p99_ms": round(pct(latencies, 99), 1),
        "segment_trigger_settled_p50_ms": round(pct(settled_latencies, 50), 1),
        "segment_trigger_settled_p99_ms": round(pct(settled_latencies, 99), 1),
        "segment_trigger_settled_probes": len(settled_latencies),
        "segment_trigger_legs_p50_ms": {leg: round(pct(v, 50), 1) for leg, v in legs.items()},
        "segment_trigger_legs_p99_ms": {leg: round(pct(v, 99), 1) for leg, v in legs.items()},
        "paced_events_per_s": round(achieved),
    }
    print(
        f"segment trigger (event -> e-mail received) p50 {figures['segment_trigger_p50_ms']} ms, "
        f"p99 {figures['segment_trigger_p99_ms']} ms, with 50 real-time segments and "
        f"{figures['paced_events_per_s']} events/s; event -> segment_entered on the stream meanwhile "
        f"p50 {figures['paced_transition_p50_ms']} ms, p99 {figures['paced_transition_p99_ms']} ms; "
        f"settled p50 {figures['segment_trigger_settled_p50_ms']} ms, p99 "
        f"{figures['segment_trigger_settled_p99_ms']} ms; legs p50 {figures['segment_trigger_legs_p50_ms']}, "
        f"p99 {figures['segment_trigger_legs_p99_ms']}",
        flush=True,
    )
    return figures


def pairs_count(text: str) -> int:
    """``--batch-pairs``: a whole number of at least 1 (a median of no pairs is no figure)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10,000 customers / 500,000 events")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default: all): backfill is backfill_s to "
        "size_p99_ms, on bench/segments.py's data; the others run the services as processes",
    )
    parser.add_argument(
        "--service-path",
        help='PYTHONPATH entries (":"-joined) put first for the services of the parts run as processes: '
        "another checkout's code and migrations, measured by this checkout's bench",
    )
    parser.add_argument(
        "--batch-pairs",
        type=pairs_count,
        help="pairs of batch rounds after the warm-ups (default 6 with --quick, 8 without)",
    )
    options = parser.parse_args()
    chosen = set(options.parts.split(","))
    if chosen - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(chosen - set(PARTS)))}")
    figures = asyncio.run(main(options.quick)) if "backfill" in chosen else {}
    if chosen - {"backfill"}:
        figures |= asyncio.run(live(options.quick, chosen, options.service_path, options.batch_pairs))
    print(json.dumps(figures))
