"""Journey benchmark: durable timers firing on time, steps per second, waits for events resumed.

Runs the campaign service in this process (``eventline_campaigns.service.running``) on a
database of its own, with the development file sink as the e-mail channel, and a clock that
follows the wall clock at an offset the benchmark moves (business time; durations are
measured with the wall clock). The service's journey runner and its stream consumer run on
that one clock object. Measured:

* ``timer_lateness_p99_ms``: instances of "wait 1 h → send e-mail" entered so that their
  waits end spread over one minute; the clock is set just before the first end and then
  runs in real time while the runner (the service's own loop) fires them. Lateness of
  one timer = the business instant its wait step ran minus the instant it was due
  (``journey_steps``);
* ``steps_per_s``: instances of a second journey whose waits all end at the same instant;
  the clock jumps past it and the runner drains them: (wait steps + send steps) / wall
  time from the jump until the last send is recorded (render, ledger, file sink); with
  ``campaigns_cpu_us_per_step`` (this process's CPU over the burst, the service runs in it)
  and ``postgres_cpu_us_per_step`` (the CPU of this database's backends);
* ``wait_for_event_match_p50_ms`` / ``_p99_ms``: instances waiting for ``order_placed`` with
  ``cart_id = $cart_id``; matching events go the real way: TrackCustomerEvent to the
  ingestion service (its own process, started by the dev/test harness), its outbox relay,
  the Redis stream, the campaign service's consumer group (running in this process, the
  journey runner beside it, polling every 20 ms as in the timer phases). Sent open loop at a
  steady ``--match-rate`` (100/s by default), one call per event, after a warm-up of 20
  events that are not counted; every matched instance, and no other, must have moved on.

  Method: one event's figure = the instant its instance moved on minus the instant ingestion
  accepted the event, both read from what the services recorded, not from a poll of this
  process (the poll only waits for the end of the run). The start is the event's
  ``received_at``, stamped by ingestion when the call arrived (before it stored and
  committed the event: the figure includes the commit and the reply). The end is the
  ``finished_at`` of the step after the wait (an exit): the runner stamps it with the
  service's clock when it starts that step, right after the statement recording the arrival
  committed (the instance has moved on). Both clocks read CLOCK_REALTIME of this host
  (ingestion's system clock; the service's is the wall clock plus the offset this benchmark
  set, constant over the phase and subtracted exactly), to the microsecond: the figure is
  not quantised by any poll, and it cannot be negative unless the method is wrong (then the
  benchmark says so and exits with status 2 instead of printing figures).

  Where the time goes (``wait_for_event_stage_*``, p50 and p99 of each): accepted → reply
  (this process's wall clock at the reply), accepted → stream entry appended (the entry id,
  Redis's wall clock in ms, +-0.5 ms), entry → handler (the wait step's ``finished_at``:
  the service's clock read when the consumer's handler began on the event), handler →
  resumed. Also the CPU per event of the ingestion process and of this process (the
  campaign service and the load generator).

Data: 100,000 instances of each timer journey (``--quick`` too: the issue's "100,000
instances whose waits end within the same minute"; ``--instances N`` for other sizes), and
2,000 instances waiting for an event (``--quick``; 10,000 for the full run), 1,000 of them
matched (full run: 3,000). The load generator shares the machine's cores with the services
and PostgreSQL: figures are comparable only between runs on a quiet machine of the same
size; the load average is printed.

Usage: python bench/journeys.py [--quick] [--instances N] [--match-rate N]. The last line
printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import common
import grpc
import redis.asyncio as redis
from common import REDIS_URL, drop_database, figures_or_exit, fresh_database, impossible_unless
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg
from google.protobuf import duration_pb2

from eventline_campaigns.model import CUSTOMER_TRIGGER, Trigger
from eventline_campaigns.service import RunningCampaigns, running
from eventline_campaigns.settings import Settings
from eventline_cli.demo_campaigns import on_customer_event
from eventline_shared.values import datetime_to_timestamp, timestamp_to_datetime

DATABASE = f"eventline_bench_journeys_{uuid.uuid4().hex[:8]}"
"""A database of this run's own: runs from other checkouts on the same server must not drop each other's."""
BENCH = "bench-journeys"
"""The application name of the benchmark's own connections (not counted as the service's)."""
HOUR = dt.timedelta(hours=1)


class OffsetClock:
    """The wall clock moved by an offset the benchmark sets (business time)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def set(self, instant: dt.datetime) -> None:
        self.offset = instant - dt.datetime.now(dt.UTC)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def journey(name: str, event_name: str, wait: dt.timedelta) -> campaigns_pb2.Campaign:
    action = campaigns_pb2.Action(
        email=campaigns_pb2.EmailAction(subject="Hello {{ client.customer_id }}", text_body="Hi")
    )
    waited = duration_pb2.Duration()
    waited.FromTimedelta(wait)
    return campaigns_pb2.Campaign(
        display_name=name,
        trigger=on_customer_event(event_name),
        steps=[
            campaigns_pb2.Step(
                step_id="pause", wait=campaigns_pb2.WaitStep(duration=waited, next_step_id="hello")
            ),
            campaigns_pb2.Step(step_id="hello", send=campaigns_pb2.SendStep(action=action, next_step_id="")),
        ],
    )


def cart_journey() -> campaigns_pb2.Campaign:
    predicate = seg.Predicate(
        field="cart_id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$cart_id")
    )
    return campaigns_pb2.Campaign(
        display_name="Carts",
        trigger=on_customer_event("cart_updated"),
        steps=[
            campaigns_pb2.Step(
                step_id="wait_order",
                wait_for_event=campaigns_pb2.WaitForEventStep(
                    event=campaigns_pb2.EventMatch(event_name="order_placed", context_predicates=[predicate]),
                    timeout=duration_pb2.Duration(seconds=86400),
                    arrived_step_id="bought",
                ),
            ),
            campaigns_pb2.Step(step_id="bought", exit=campaigns_pb2.ExitStep()),
        ],
    )


def event(customer_id: str, name: str, at: dt.datetime, **context: str) -> common_pb2.Event:
    out = common_pb2.Event(
        event_id=uuid.uuid4().hex,
        customer_id=customer_id,
        name=name,
        kind=common_pb2.EVENT_KIND_CUSTOMER,
        context={k: common_pb2.Value(string_value=v) for k, v in context.items()},
    )
    out.occurred_at.CopyFrom(datetime_to_timestamp(at))
    out.received_at.CopyFrom(datetime_to_timestamp(dt.datetime.now(dt.UTC)))
    return out


async def enter(
    served: RunningCampaigns, trigger: str, events: list[common_pb2.Event], batch: int = 1000
) -> None:
    [campaign] = served.cache.for_trigger(CUSTOMER_TRIGGER, trigger)
    for start in range(0, len(events), batch):
        await served.journeys.enter([(campaign, Trigger.of(e)) for e in events[start : start + batch]])


async def wait_for(pool: asyncpg.Pool, campaign_id: str, timeout_s: float) -> None:
    """Until no instance of the campaign is active (its last step, the send, is recorded)."""
    deadline = time.monotonic() + timeout_s
    # One connection for all the polls: a pool's reset after each would cost the database
    # (measured with the service's backends) a statement per poll. The poll probes the
    # (campaign, status) index for one active instance: counting the recorded steps instead
    # read every step row of the campaign 50 times a second, as much work for the database
    # as the steps themselves.
    async with pool.acquire() as connection:
        while await connection.fetchval(
            "SELECT EXISTS (SELECT FROM journey_instances WHERE campaign_id = $1 AND status = 1)", campaign_id
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{campaign_id} not done within {timeout_s} s")
            await asyncio.sleep(0.02)


async def backend_cpu_s(pool: asyncpg.Pool) -> dict[int, float]:
    """CPU seconds of this benchmark database's PostgreSQL backends (same host), by pid, but
    the benchmark's own (its polls)."""
    pids = [
        r[0]
        for r in await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2", DATABASE, BENCH
        )
    ]
    return common.backend_cpu(pids)


WARM_UP = 20
"""Matching events sent (one at a time) before the measured ones: connections, prepared
statements and the consumer group's start are not counted."""


def wall(business: dt.datetime, clock: OffsetClock) -> dt.datetime:
    """The wall-clock instant of an instant the service stamped with ``clock``."""
    return business - clock.offset


def ms(later: dt.datetime, earlier: dt.datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def percentiles(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_p50_ms": round(statistics.median(values), 2), f"{name}_p99_ms": round(p99(values), 2)}


@dataclass(frozen=True)
class MatchStamps:
    """One matching event's stamps, all on this host's wall clock (UTC)."""

    customer_id: str
    accepted: dt.datetime
    """Ingestion's ``received_at``: the call arrived (before the event was stored)."""
    replied: dt.datetime
    """This process, on the call's reply."""
    appended: dt.datetime
    """The stream entry's id (Redis, in ms) + 0.5 ms: the append was within +-0.5 ms of it."""
    handled: dt.datetime
    """The wait step's ``finished_at``: the consumer's handler began on the event."""
    resumed: dt.datetime
    """The next step's ``finished_at``: the arrival was committed, the instance moved on."""


def match_figures(stamps: Sequence[MatchStamps]) -> dict[str, float]:
    """p50 and p99 of accepted -> resumed and of its stages; ``ImpossibleFigure`` when the
    stamps contradict each other (one clock, so anything out of order is the method's fault)."""
    impossible_unless(bool(stamps), "no event was measured")
    total, to_reply, to_stream, in_consumer, in_handler = [], [], [], [], []
    for each in stamps:
        # The event was stamped on arrival, before anything read it; the handler began before the
        # instance moved on; the entry (+-0.5 ms) lies between the two stamps.
        impossible_unless(
            each.accepted <= each.handled <= each.resumed
            and ms(each.appended, each.accepted) > -0.5
            and ms(each.handled, each.appended) > -0.5
            and each.replied >= each.accepted,
            f"{each.customer_id}: stamps out of order (did the wall clock step during the run?)",
        )
        total.append(ms(each.resumed, each.accepted))
        to_reply.append(ms(each.replied, each.accepted))
        to_stream.append(ms(each.appended, each.accepted))
        in_consumer.append(ms(each.handled, each.appended))
        in_handler.append(ms(each.resumed, each.handled))
    return {
        **percentiles("wait_for_event_match", total),
        "wait_for_event_match_max_ms": round(max(total), 2),
        **percentiles("wait_for_event_stage_accepted_to_reply", to_reply),
        **percentiles("wait_for_event_stage_accepted_to_stream", to_stream),
        **percentiles("wait_for_event_stage_stream_to_handler", in_consumer),
        **percentiles("wait_for_event_stage_handler_to_resumed", in_handler),
    }


async def until_ended(pool: asyncpg.Pool, campaign_id: str, count: int, timeout_s: float) -> None:
    """Until ``count`` instances of the campaign have ended (only paces the run: the figures
    are read from the services' stamps afterwards)."""
    deadline = time.monotonic() + timeout_s
    async with pool.acquire() as connection:
        while (
            ended := await connection.fetchval(
                "SELECT count(*) FROM journey_instances WHERE campaign_id = $1 AND status <> 1", campaign_id
            )
        ) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{ended} of {count} instances of {campaign_id} ended within {timeout_s} s"
                )
            await asyncio.sleep(0.05)


async def stream_appends(keys: list[str]) -> dict[str, dt.datetime]:
    """Event id -> the instant its stream entry was appended (the entry id's milliseconds, +0.5 ms)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        appended = {}
        for key in keys:
            for entry_id, fields in await client.xrange(key):
                millis = int(entry_id.split(b"-")[0])
                appended[fields[b"event_id"].decode()] = dt.datetime.fromtimestamp(
                    (millis + 0.5) / 1000, dt.UTC
                )
        return appended
    finally:
        await client.aclose()


async def match_events(
    served: RunningCampaigns,
    pool: asyncpg.Pool,
    clock: OffsetClock,
    env: dict[str, str],
    stream_keys: list[str],
    carts: list[str],
    matched: int,
    rate: float,
) -> dict[str, Any]:
    """Matching ``order_placed`` events through ingestion, the stream and the consumer group:
    their figures (see the module's docstring)."""
    port = common.free_port()
    ingestion = common.start_service(
        "ingestion",
        {**env, "EVENTLINE_INGESTION_PORT": str(port), "EVENTLINE_LOG_LEVEL": "WARNING"},
    )
    consumer = asyncio.create_task(served.consumer.run())
    accepted: dict[str, dt.datetime] = {}
    replied: dict[str, dt.datetime] = {}
    try:
        await common.serving(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)

            async def track(customer_id: str) -> None:
                request = ingestion_pb2.TrackCustomerEventRequest(
                    event_id=f"order-{customer_id}",
                    customer_id=customer_id,
                    name="order_placed",
                    # Business time: after the cart's trigger (an earlier event does not match).
                    occurred_at=datetime_to_timestamp(clock.now()),
                    context={"cart_id": common_pb2.Value(string_value=f"cart-{customer_id}")},
                )
                reply = await stub.TrackCustomerEvent(request, timeout=30)
                replied[customer_id] = dt.datetime.now(dt.UTC)
                accepted[customer_id] = timestamp_to_datetime(reply.event.received_at)

            for number, customer_id in enumerate(carts[:WARM_UP], start=1):
                await track(customer_id)
                await until_ended(pool, "carts", number, 60)
            offset = clock.offset
            measured = carts[WARM_UP : WARM_UP + matched]
            cpu_before = time.process_time()
            ingestion_before = common.cpu_seconds(ingestion.pid)
            began = time.monotonic()
            tasks = []
            for i, customer_id in enumerate(measured):
                delay = began + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(track(customer_id)))
            offered_per_s = (len(measured) - 1) / max(time.monotonic() - began, 1e-9)
            await asyncio.gather(*tasks)
            await until_ended(pool, "carts", WARM_UP + matched, 120)
            cpu_s = time.process_time() - cpu_before
            ingestion_cpu_s = common.cpu_seconds(ingestion.pid) - ingestion_before
            impossible_unless(clock.offset == offset, "the clock was moved while events were matched")
    finally:
        served.consumer.shutdown()
        await consumer
        common.stop(ingestion)
    rows = await pool.fetch(
        "SELECT customer_id, step_id, outcome, finished_at FROM journey_steps"
        " WHERE campaign_id = 'carts' AND step_id IN ('wait_order', 'bought') AND customer_id = ANY($1::text[])",
        measured,
    )
    ended = await pool.fetchval(
        "SELECT count(*) FROM journey_instances WHERE campaign_id = 'carts' AND status <> 1"
    )
    impossible_unless(
        ended == WARM_UP + matched, f"{ended} instances moved on for {WARM_UP + matched} events"
    )
    handled = {r["customer_id"]: r for r in rows if r["step_id"] == "wait_order"}
    resumed = {r["customer_id"]: r for r in rows if r["step_id"] == "bought"}
    appended = await stream_appends(stream_keys)
    stamps = []
    for customer_id in measured:
        wait_step, next_step = handled.get(customer_id), resumed.get(customer_id)
        impossible_unless(
            wait_step is not None and wait_step["outcome"] == "arrived" and next_step is not None,
            f"{customer_id}: its instance did not resume on the arrived path",
        )
        assert wait_step is not None and next_step is not None
        stamps.append(
            MatchStamps(
                customer_id,
                accepted=accepted[customer_id],
                replied=replied[customer_id],
                appended=appended[f"order-{customer_id}"],
                handled=wall(wait_step["finished_at"], clock),
                resumed=wall(next_step["finished_at"], clock),
            )
        )
    events = len(measured)
    return {
        "wait_for_event_matched": events,
        "wait_for_event_rate_per_s": rate,
        "wait_for_event_offered_per_s": round(offered_per_s, 1),
        **match_figures(stamps),
        "wait_for_event_ingestion_cpu_ms_per_event": round(ingestion_cpu_s * 1000 / events, 3),
        "wait_for_event_campaigns_cpu_ms_per_event": round(cpu_s * 1000 / events, 3),
    }


async def main(instances: int, waiting: int, matched: int, match_rate: float) -> dict[str, Any]:
    url = await fresh_database(DATABASE)
    sink = tempfile.mkdtemp(prefix="eventline-bench-journeys-")
    env = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": f"bench-journeys-{uuid.uuid4().hex[:8]}",
        "EVENTLINE_CAMPAIGNS_PORT": "0",
        "EVENTLINE_CAMPAIGNS_SINK_DIR": sink,
        "EVENTLINE_SEGMENTATION_ADDR": "127.0.0.1:9",  # no branch step: never called
        "EVENTLINE_SHUTDOWN_GRACE_S": "2",
    }
    settings = Settings.from_env({**os.environ, **env})
    stream_keys = list(settings.common.stream_layout.keys)
    customers = [f"b{i:06d}" for i in range(instances)]
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4, server_settings={"application_name": BENCH})
    await pool.copy_records_to_table(
        "customers",
        records=[(c, f"{c}@example.com", 1) for c in customers],
        columns=["customer_id", "email", "email_consent"],
    )
    clock = OffsetClock()
    # Business time starts at the wall clock's and runs at most a few hours ahead of it: the
    # matching events carry business time, which ingestion accepts up to 24 hours ahead.
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock.set(start)
    result: dict[str, Any] = {"instances": instances}
    try:
        # The stream consumer is started for the matching events only (the timers are entered directly).
        async with running(settings, consume=False, clock=clock) as served:
            served.journeys.poll_s = 0.02
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
                for campaign_id, spec in (
                    ("spread", journey("Spread", "joined", HOUR)),
                    ("burst", journey("Burst", "signed_up", 2 * HOUR)),
                    ("carts", cart_journey()),
                ):
                    await stub.CreateCampaign(
                        campaigns_pb2.CreateCampaignRequest(campaign=spec, campaign_id=campaign_id)
                    )
                    await stub.ActivateCampaign(
                        campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id)
                    )

            # Entries: "spread" over one minute of business time, "burst" at one instant.
            entered = time.perf_counter()
            per_second = max(1, instances // 60)
            for second in range(60):
                clock.set(start + dt.timedelta(seconds=second))
                chunk = customers[
                    second * per_second : (second + 1) * per_second if second < 59 else instances
                ]
                await enter(served, "joined", [event(c, "joined", clock.now()) for c in chunk])
            clock.set(start + dt.timedelta(seconds=61))
            await enter(served, "signed_up", [event(c, "signed_up", clock.now()) for c in customers])
            carts = customers[:waiting]
            await enter(
                served,
                "cart_updated",
                [event(c, "cart_updated", clock.now(), cart_id=f"cart-{c}") for c in carts],
            )
            result["enter_s"] = round(time.perf_counter() - entered, 1)

            # Waits ending within one minute, fired by the service's own loop in real time.
            clock.set(start + HOUR - dt.timedelta(seconds=0.5))
            runner = asyncio.create_task(served.journeys.run())
            fired = time.perf_counter()
            await wait_for(pool, "spread", 600)
            result["spread_s"] = round(time.perf_counter() - fired, 1)
            lateness = [
                float(r[0])
                for r in await pool.fetch(
                    "SELECT extract(epoch FROM finished_at - (entered_at + interval '1 hour')) * 1000 "
                    "FROM journey_steps WHERE campaign_id = 'spread' AND step_id = 'pause'"
                )
            ]

            # Every wait of "burst" ends at the same instant: the runner's throughput.
            backends_before = await backend_cpu_s(pool)
            cpu_before = time.process_time()
            clock.set(start + dt.timedelta(seconds=61) + 2 * HOUR)
            jumped = time.perf_counter()
            await wait_for(pool, "burst", 600)
            burst_s = time.perf_counter() - jumped
            cpu_s = time.process_time() - cpu_before
            backends_after = await backend_cpu_s(pool)
            postgres_cpu_s = sum(t - backends_before.get(pid, 0.0) for pid, t in backends_after.items())

            # Matching events through ingestion and the stream, the runner still running beside
            # the consumer (as in a replica); the clock now runs in real time at a fixed offset.
            matching = await match_events(served, pool, clock, env, stream_keys, carts, matched, match_rate)
            served.journeys.shutdown()
            await runner
            sent = await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 2")
            if sent != 2 * instances:
                raise SystemExit(f"{sent} messages sent, {2 * instances} expected")
    finally:
        await pool.close()
        await drop_database(DATABASE)
        shutil.rmtree(sink, ignore_errors=True)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            await client.delete(*stream_keys, *(key + ":dead" for key in stream_keys))
        finally:
            await client.aclose()
    result.update(
        timer_lateness_p50_ms=round(statistics.median(lateness), 1),
        timer_lateness_p99_ms=round(p99(lateness), 1),
        timer_lateness_max_ms=round(max(lateness), 1),
        steps_per_s=round(2 * instances / burst_s),
        campaigns_cpu_us_per_step=round(cpu_s / (2 * instances) * 1e6),
        postgres_cpu_us_per_step=round(postgres_cpu_s / (2 * instances) * 1e6),
        **matching,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    return result


if __name__ == "__main__":
    parser = common.command_line(
        __doc__,
        quick="100,000 instances per timer journey (the issue's run), 2,000 waiting for an event (1,000 matched)",
    )
    parser.add_argument("--instances", type=int, default=0, help="instances per timer journey")
    parser.add_argument(
        "--match-rate", type=float, default=100.0, help="matching events sent per second (default 100)"
    )
    options = parser.parse_args()
    count = options.instances or 100_000
    waiting = min(count, 2000 if options.quick else 10_000)
    figures = figures_or_exit(
        main(count, waiting, min(1000 if options.quick else 3000, waiting - WARM_UP), options.match_rate),
        "bench/journeys.py",
    )
    print(
        f"timer lateness p99 {figures['timer_lateness_p99_ms']} ms (target <= 1000), "
        f"{figures['steps_per_s']} steps/s (target >= 5000), wait-for-event match p99 "
        f"{figures['wait_for_event_match_p99_ms']} ms (target <= 50), "
        f"{figures['wait_for_event_matched']} events at {figures['wait_for_event_rate_per_s']:.0f}/s"
    )
    print(json.dumps(figures))
