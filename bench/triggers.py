"""Campaign benchmark: trigger latency at a steady event rate, and system-event fan-out throughput.

Starts ingestion, segmentation and campaigns as their own processes
(``python -m eventline_...``) on a database of their own. E-mail goes to a real
SMTP server (aiosmtpd) running in this process, on a thread of its own, which
stamps each message's arrival when its data is complete. Measured:

* trigger latency: customer events tracked one per call at ``--rate`` events/s
  (1,000 by default) for a campaign "event Ping -> e-mail"; for each event, the
  time from the TrackCustomerEvent call to the message's arrival at the SMTP
  server: what a client sees. The message subject carries the event id. Its
  parts: the call's reply, the stream entry's append, and the campaign
  service's share (entry appended -> message received);
* fan-out: one system event for a campaign whose audience (a segmentation
  filter streamed by StreamCustomers: "has an e-mail address") is every
  customer; messages per second from the TrackSystemEvent call to the last
  message's arrival (rendered, ledgered, sent over SMTP and received).

Clocks: calls, replies and arrivals are stamped in this process with one
clock, ``time.perf_counter_ns()`` (monotonic: no NTP step moves it, and
nothing is compared across processes). The latency starts at the call, not at
the reply: the reply and the message travel separately, and a busy load
generator may read a reply after the message has arrived, which would make
"reply -> arrival" negative; a message can never arrive before its call. The
stream entries' ids are stamped by Redis, another process, with its wall clock
in milliseconds: comparisons with them use CLOCK_REALTIME (``time.time_ns()``),
the clock both processes share, at +-0.5 ms resolution.

A figure that cannot be true (a message arriving before the call that caused
it or after the run, an entry appended before its call was sent or after its
message arrived, a message received twice, one missing) means the measurement
is wrong: the benchmark says so and exits with status 2 instead of printing it.

Data: 100,000 customers (20,000 with --quick) with an e-mail address and
e-mail consent, COPYed in; trigger events go to the first 1,000 of them.
The load generator and the SMTP server share the machine's cores with the
three services, PostgreSQL and Redis (the SMTP server's CPU per fan-out message
is printed: it is taken from the services), so figures are only comparable
between runs on a quiet machine of the same size; they are not comparable with
runs before this benchmark measured at a receiver (it timed files written by
the development sink).

Where the time goes: segmentation's, PostgreSQL's (the backends of the run's database) and
Redis's CPU per trigger event next to the campaign and ingestion services'; and the campaign
service's share split at the delivery ledger's own stamps (entry -> recorded: read, trigger,
plan; recorded -> received: send; received -> marked). ``--triggers-only`` skips the fan-out:
rounds short enough to alternate two trees back to back.

With ``--channel-cap`` an e-mail cap across campaigns is set first (1,000 per customer in
7 days: never reached here), so every delivery passes the cap's check where it is recorded
(one transaction per batch of triggers, a lock per customer, a count and an insert): its cost.

With ``--service-path`` (PYTHONPATH entries, ":"-joined) the services run another checkout's code
and its migrations make the run's database, measured by this checkout's bench: rounds of two
trees alternate with one measuring code.

Usage: python bench/triggers.py [--quick] [--rate N] [--channel-cap] [--triggers-only]
[--service-path PATHS]. The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import common
import grpc
import redis.asyncio as redis
from aiosmtpd.controller import Controller
from common import (
    REDIS_URL,
    ImpossibleFigure,
    drop_database,
    free_port,
    fresh_database,
    impossible_unless,
    serving,
    start_service,
    stop,
)
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg

from eventline_cli import demo_campaigns

TRIGGER_CUSTOMERS = 1000


async def database_with_customers(name: str, customers: int, python_path: str | None = None) -> str:
    url = await fresh_database(name, python_path=python_path)
    connection = await asyncpg.connect(url)
    try:
        await connection.copy_records_to_table(
            "customers",
            records=[(f"cust{i:06d}", f"cust{i:06d}@example.com", 1) for i in range(customers)],
            columns=["customer_id", "email", "email_consent"],
        )
        await connection.execute("ANALYZE customers")
    finally:
        await connection.close()
    return url


_SUBJECT = re.compile(rb"^Subject: ([^\r\n]*)", re.MULTILINE)


class Arrival:
    """When a message arrived: ``perf_ns`` on this process's monotonic clock, ``wall_ns`` on CLOCK_REALTIME."""

    __slots__ = ("perf_ns", "wall_ns")

    def __init__(self, perf_ns: int, wall_ns: int) -> None:
        self.perf_ns = perf_ns
        self.wall_ns = wall_ns


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on its own thread, so that the load generator's event loop
    never delays a stamp: it records each message's arrival by subject."""

    def __init__(self) -> None:
        self.arrived: dict[str, Arrival] = {}
        self.repeated: list[str] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        arrival = Arrival(time.perf_counter_ns(), time.time_ns())  # the data is complete: it has arrived
        found = _SUBJECT.search(envelope.content)
        subject = found.group(1).decode() if found else ""
        with self._lock:
            if subject in self.arrived:
                self.repeated.append(subject)
            else:
                self.arrived[subject] = arrival
        return "250 OK"

    def count(self) -> int:
        return len(self.arrived)

    def __enter__(self) -> SmtpReceiver:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class Services:
    """The three services as processes, as they run in production."""

    def __init__(
        self, url: str, stream: str, smtp_port: int, sink: str, python_path: str | None = None
    ) -> None:
        self.ports = {"ingestion": free_port(), "segmentation": free_port(), "campaigns": free_port()}
        env = {
            "EVENTLINE_DATABASE_URL": url,
            "EVENTLINE_REDIS_URL": REDIS_URL,
            "EVENTLINE_STREAM": stream,
            "EVENTLINE_LOG_LEVEL": os.environ.get("EVENTLINE_BENCH_LOG_LEVEL", "WARNING"),
            "EVENTLINE_INGESTION_PORT": str(self.ports["ingestion"]),
            "EVENTLINE_SEGMENTATION_PORT": str(self.ports["segmentation"]),
            "EVENTLINE_CAMPAIGNS_PORT": str(self.ports["campaigns"]),
            "EVENTLINE_SEGMENTATION_ADDR": f"127.0.0.1:{self.ports['segmentation']}",
            "EVENTLINE_INGESTION_DB_POOL_SIZE": "16",
            # E-mail goes to the receiver in this process, whatever this shell has configured.
            "EVENTLINE_SMTP_HOST": "127.0.0.1",
            "EVENTLINE_SMTP_PORT": str(smtp_port),
            "EVENTLINE_SMTP_USERNAME": "",
            "EVENTLINE_SMTP_PASSWORD": "",
            "EVENTLINE_SMTP_STARTTLS": "false",
            "EVENTLINE_SMS_URL": "",
            "EVENTLINE_PUSH_URL": "",
            "EVENTLINE_CAMPAIGNS_SINK_DIR": sink,  # SMS and push: unused here
        }
        if python_path:
            env["PYTHONPATH"] = python_path
        self.processes = [start_service(name, env) for name in self.ports]

    async def ready(self) -> None:
        for port in self.ports.values():
            await serving(port)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each service process (Linux /proc)."""
        used: dict[str, float] = {}
        for name, process in zip(self.ports, self.processes, strict=True):
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                used[name] = 0.0
        return used

    @contextlib.asynccontextmanager
    async def stubs(
        self,
    ) -> AsyncIterator[
        tuple[ingestion_pb2_grpc.IngestionServiceStub, campaigns_pb2_grpc.CampaignServiceStub]
    ]:
        """Clients of ingestion and campaigns, their channels closed afterwards."""
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{self.ports['ingestion']}") as ingestion_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{self.ports['campaigns']}") as campaigns_channel,
        ):
            yield (
                ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel),
                campaigns_pb2_grpc.CampaignServiceStub(campaigns_channel),
            )

    def stop(self) -> None:
        stop(*self.processes)


async def wait_for_messages(receiver: SmtpReceiver, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while receiver.count() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {receiver.count()} of {count} messages after {timeout_s} s")
        await asyncio.sleep(0.05)


PING_CAMPAIGN = demo_campaigns.email_campaign(
    demo_campaigns.on_customer_event("Ping"),
    display_name="Ping",
    subject="{{ event.event_id }}",
    text_body="Hello {{ client.customer_id }}",
)
"""The triggered campaign: an e-mail whose subject is the event id, for every customer event Ping."""

SALE_CAMPAIGN = demo_campaigns.email_campaign(
    demo_campaigns.on_system_event("Sale"),
    seg.Filter(customer=seg.CustomerCondition(has_address=seg.CHANNEL_EMAIL)),
    display_name="Sale",
    subject="Sale for {{ client.customer_id }}",
    html_body="<p>Dear {{ client.email }}, everything is 20% off.</p>",
    text_body="Dear {{ client.email }}, everything is 20% off.",
)
"""The fan-out: an e-mail to every customer with an address when the system event Sale occurs."""


async def activate(stub: campaigns_pb2_grpc.CampaignServiceStub, campaign: campaigns_pb2.Campaign) -> None:
    created = await stub.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
    await stub.ActivateCampaign(
        campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@dataclass
class Stamps:
    """When this process made a call and read its reply (see the module's description for the clocks)."""

    sent_wall_ns: int = field(default_factory=time.time_ns)
    sent_ns: int = field(default_factory=time.perf_counter_ns)
    replied_ns: int = 0


@dataclass(frozen=True)
class TriggerFigures:
    """Milliseconds, p50 unless said: call -> message received (p50, p99), call -> reply, call ->
    stream entry, stream entry -> message received (p50, p99)."""

    p50: float
    p99: float
    reply: float
    to_stream: float
    in_campaigns: float
    in_campaigns_p99: float


def trigger_figures(
    calls: Mapping[str, Stamps],
    receiver: SmtpReceiver,
    appended: Mapping[str, int],
    started_ns: int,
    finished_ns: int,
) -> TriggerFigures:
    """The figures of the accepted ``calls`` (by event id) made between ``started_ns`` and
    ``finished_ns``, from their messages' arrivals and their stream entries' ids (``appended``: the
    ms of the id, in ns); raises ImpossibleFigure when the stamps contradict each other."""
    impossible_unless(not receiver.repeated, f"messages received twice: {receiver.repeated[:5]}")
    arrived = receiver.arrived
    missing = [e for e in calls if e not in arrived]
    impossible_unless(not missing, f"no message with the subject of events {missing[:5]} arrived")
    latencies, replies = [], []
    for event_id, stamps in calls.items():
        arrival = arrived[event_id].perf_ns
        # The message is caused by the call, and everything happened during the run: one clock
        # stamped all four, so anything else is a defect of the measurement.
        impossible_unless(
            started_ns <= stamps.sent_ns < stamps.replied_ns <= finished_ns
            and stamps.sent_ns < arrival <= finished_ns,
            f"event {event_id}: call, reply and message stamped out of order",
        )
        latencies.append((arrival - stamps.sent_ns) / 1e6)
        replies.append((stamps.replied_ns - stamps.sent_ns) / 1e6)
    latencies.sort()
    to_stream, in_campaigns = [], []
    for event_id in calls.keys() & appended.keys():
        stamps, append_ms_ns, wall_arrival_ns = calls[event_id], appended[event_id], arrived[event_id].wall_ns
        # The append happened within [ms, ms + 1), after the call was sent and before the message left.
        impossible_unless(
            stamps.sent_wall_ns < append_ms_ns + 1_000_000 and append_ms_ns < wall_arrival_ns,
            f"event {event_id}: its stream entry is stamped outside its call and its message"
            " (did the wall clock step during the run?)",
        )
        to_stream.append((append_ms_ns + 500_000 - stamps.sent_wall_ns) / 1e6)
        in_campaigns.append((wall_arrival_ns - append_ms_ns - 500_000) / 1e6)
    impossible_unless(bool(latencies) and bool(in_campaigns), "no event was measured")
    in_campaigns.sort()
    return TriggerFigures(
        p50=statistics.median(latencies),
        p99=percentile(latencies, 0.99),
        reply=statistics.median(replies),
        to_stream=statistics.median(to_stream),
        in_campaigns=statistics.median(in_campaigns),
        in_campaigns_p99=percentile(in_campaigns, 0.99),
    )


@dataclass(frozen=True)
class Stage:
    """One stage of the campaign service's share, in ms: p50 and p99 over the run's events."""

    name: str
    p50: float
    p99: float


async def ledger_stages(
    url: str, receiver: SmtpReceiver, appended: Mapping[str, int], event_ids: Sequence[str]
) -> list[Stage]:
    """Where the campaign service's share goes, per event, from the delivery ledger: a delivery's
    ``created_at`` is the start of the transaction that recorded it (the event was read, its
    trigger evaluated and its message planned), its ``updated_at`` the outcome's write after the
    send. PostgreSQL stamps both with the wall clock of this host, Redis the entry, the receiver
    the arrival: CLOCK_REALTIME, compared in ms (+-0.5 ms for the entry)."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT event_id, extract(epoch FROM created_at)::float8 AS recorded,"
            " extract(epoch FROM updated_at)::float8 AS marked"
            " FROM deliveries WHERE event_id = ANY($1::text[])",
            list(event_ids),
        )
    finally:
        await connection.close()
    spans: dict[str, list[float]] = {
        "entry -> recorded": [],
        "recorded -> received": [],
        "received -> marked": [],
    }
    for row in rows:
        event_id = row["event_id"]
        if event_id not in appended or event_id not in receiver.arrived:
            continue
        entry_ms = (appended[event_id] + 500_000) / 1e6
        recorded_ms, marked_ms = row["recorded"] * 1e3, row["marked"] * 1e3
        received_ms = receiver.arrived[event_id].wall_ns / 1e6
        spans["entry -> recorded"].append(recorded_ms - entry_ms)
        spans["recorded -> received"].append(received_ms - recorded_ms)
        spans["received -> marked"].append(marked_ms - received_ms)
    stages = []
    for name, values in spans.items():
        if values:
            values.sort()
            stages.append(Stage(name, statistics.median(values), percentile(values, 0.99)))
    return stages


@dataclass(frozen=True)
class TriggerRun:
    figures: TriggerFigures
    events: int
    offered_per_s: float
    stages: list[Stage]


async def bench_triggers(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
    receiver: SmtpReceiver,
    rate: int,
    seconds: float,
    stream: str,
    url: str,
) -> TriggerRun:
    rng = random.Random(1)
    run = uuid.uuid4().hex[:6]
    total = int(rate * seconds)
    calls: dict[str, Stamps] = {}
    retries: list[str] = []

    async def track(i: int) -> None:
        event_id = f"{run}-{i}"
        request = ingestion_pb2.TrackCustomerEventRequest(
            event_id=event_id, customer_id=f"cust{rng.randrange(TRIGGER_CUSTOMERS):06d}", name="Ping"
        )
        stamps = calls[event_id] = Stamps()
        for _ in range(5):
            try:
                await ingestion.TrackCustomerEvent(request, timeout=30)
                stamps.replied_ns = time.perf_counter_ns()
                return
            except grpc.aio.AioRpcError as exc:
                # The event id makes a retry safe; count them, they are reported.
                if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                    raise
                retries.append(exc.code().name)
                await asyncio.sleep(0.05)

    before = receiver.count()
    started_ns = time.perf_counter_ns()
    start = time.monotonic()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(track(i)))
    offered_per_s = (total - 1) / max(time.monotonic() - start, 1e-9) if total > 1 else float(rate)
    await asyncio.gather(*tasks)
    accepted = {event_id: stamps for event_id, stamps in calls.items() if stamps.replied_ns}
    await wait_for_messages(receiver, before + len(accepted), 60)
    finished_ns = time.perf_counter_ns()
    # Where the time goes, against the entries' ids: Redis stamps them with its wall clock, in ms.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        appended = {
            fields[b"event_id"].decode(): int(entry_id.split(b"-")[0]) * 1_000_000
            for entry_id, fields in await client.xrange(stream)
        }
    finally:
        await client.aclose()
    figures = trigger_figures(accepted, receiver, appended, started_ns, finished_ns)
    print(
        f"campaigns only (stream append -> received, +-0.5 ms): p50 {figures.in_campaigns:.2f} ms, "
        f"p99 {figures.in_campaigns_p99:.2f} ms"
    )
    stages = await ledger_stages(url, receiver, appended, list(accepted))
    for stage in stages:
        print(f"  {stage.name}: p50 {stage.p50:.2f} ms, p99 {stage.p99:.2f} ms")
    if offered_per_s < 0.95 * rate:
        print(f"the load generator offered only {offered_per_s:.0f} of {rate} events/s")
    if retries:
        print(
            f"ingestion answered {len(retries)} calls with {sorted(set(retries))}; retried with the same event id"
        )
    return TriggerRun(figures, total, offered_per_s, stages)


async def bench_fanout(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub, receiver: SmtpReceiver, customers: int
) -> float:
    before = receiver.count()
    sent_ns = time.perf_counter_ns()
    reply = await ingestion.TrackSystemEvent(
        ingestion_pb2.TrackSystemEventRequest(event_id="sale-1", name="Sale")
    )
    assert not reply.deduplicated
    await wait_for_messages(receiver, before + customers, 600)
    impossible_unless(not receiver.repeated, f"messages received twice: {receiver.repeated[:5]}")
    arrivals = [a.perf_ns for subject, a in receiver.arrived.items() if subject.startswith("Sale for ")]
    impossible_unless(
        len(arrivals) == customers, f"{len(arrivals)} fan-out messages for {customers} customers"
    )
    impossible_unless(min(arrivals) > sent_ns, "a fan-out message arrived before its event was sent")
    return customers / ((max(arrivals) - sent_ns) / 1e9)


async def main(
    quick: bool, rate: int, channel_cap: bool = False, fanout: bool = True, python_path: str | None = None
) -> dict[str, float]:
    customers = 20_000 if quick else 100_000
    seconds = 3.0 if quick else 10.0
    # A database of this run's own: runs on one server at once (other checkouts) must not drop
    # each other's.
    database_name = f"eventline_bench_triggers_{uuid.uuid4().hex[:8]}"
    url = await database_with_customers(database_name, customers, python_path)
    try:
        return await measure(url, customers, seconds, rate, channel_cap, fanout, python_path)
    finally:
        await drop_database(database_name)


async def measure(
    url: str,
    customers: int,
    seconds: float,
    rate: int,
    channel_cap: bool = False,
    fanout: bool = True,
    python_path: str | None = None,
) -> dict[str, float]:
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    sink = tempfile.mkdtemp(prefix="eventline-bench-sink-")
    with SmtpReceiver() as receiver:
        services = Services(url, stream, receiver.port, sink, python_path)
        try:
            await services.ready()
            async with services.stubs() as (ingestion, campaigns):
                if channel_cap:
                    week = campaigns_pb2.ChannelCap(channel=campaigns_pb2.CHANNEL_EMAIL, max_sends=1000)
                    week.window.seconds = 7 * 86400
                    await campaigns.SetChannelCaps(campaigns_pb2.SetChannelCapsRequest(caps=[week]))
                await activate(campaigns, PING_CAMPAIGN)
                await activate(campaigns, SALE_CAMPAIGN)
                await asyncio.sleep(1.0)  # every replica has loaded the campaigns
                # Warm-up: connections, prepared statements, compiled templates.
                await bench_triggers(ingestion, receiver, 200, 1.0, stream, url)
                cpu_before = services.cpu_seconds()
                backends_before = await common.database_backend_cpu(url)
                redis_before = await common.redis_cpu_seconds()
                triggers = await bench_triggers(ingestion, receiver, rate, seconds, stream, url)
                cpu_after = services.cpu_seconds()
                backends_after = await common.database_backend_cpu(url)
                redis_after = await common.redis_cpu_seconds()
                if fanout:
                    receiver_cpu_before = time.process_time()
                    fanout_per_s = await bench_fanout(ingestion, receiver, customers)
                    cpu_fanout = services.cpu_seconds()
                    # This process only waits meanwhile: its CPU is the SMTP server's, taken from the services.
                    receiver_cpu_s = time.process_time() - receiver_cpu_before
        finally:
            services.stop()
            shutil.rmtree(sink, ignore_errors=True)
            client = redis.Redis.from_url(REDIS_URL)
            try:
                await client.delete(stream, stream + ":dead")
            finally:
                await client.aclose()
    events = triggers.events
    result: dict[str, float] = {
        "trigger_events": events,
        "trigger_rate_per_s": rate,
        "trigger_offered_per_s": round(triggers.offered_per_s),
        "trigger_p50_ms": round(triggers.figures.p50, 2),
        "trigger_p99_ms": round(triggers.figures.p99, 2),
        "trigger_from_request_p50_ms": round(triggers.figures.p50, 2),
        "trigger_reply_p50_ms": round(triggers.figures.reply, 2),
        "trigger_to_stream_p50_ms": round(triggers.figures.to_stream, 2),
        "trigger_in_campaigns_p50_ms": round(triggers.figures.in_campaigns, 2),
        "trigger_campaigns_cpu_ms_per_event": round(
            (cpu_after["campaigns"] - cpu_before["campaigns"]) * 1000 / events, 3
        ),
        "trigger_ingestion_cpu_ms_per_event": round(
            (cpu_after["ingestion"] - cpu_before["ingestion"]) * 1000 / events, 3
        ),
        "trigger_segmentation_cpu_ms_per_event": round(
            (cpu_after["segmentation"] - cpu_before["segmentation"]) * 1000 / events, 3
        ),
        "trigger_postgres_cpu_ms_per_event": round(
            common.backend_cpu_used(backends_before, backends_after) * 1000 / events, 3
        ),
        "trigger_redis_cpu_ms_per_event": round((redis_after - redis_before) * 1000 / events, 3),
        **{
            f"trigger_stage_{stage.name.replace(' -> ', '_to_')}_{p}_ms": round(value, 2)
            for stage in triggers.stages
            for p, value in (("p50", stage.p50), ("p99", stage.p99))
        },
        "channel_cap": int(channel_cap),
        "cpus": os.cpu_count() or 0,
    }
    if fanout:
        result |= {
            "fanout_customers": customers,
            "fanout_campaigns_cpu_ms_per_message": round(
                (cpu_fanout["campaigns"] - cpu_after["campaigns"]) * 1000 / customers, 3
            ),
            "fanout_messages_per_s": round(fanout_per_s),
            "fanout_receiver_cpu_ms_per_message": round(receiver_cpu_s * 1000 / customers, 3),
        }
    return result


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="a short run on less data")
    parser.add_argument("--rate", type=int, default=1000, help="customer events per second (default 1000)")
    parser.add_argument(
        "--channel-cap", action="store_true", help="set an e-mail cap across campaigns (never reached) first"
    )
    parser.add_argument(
        "--triggers-only",
        action="store_true",
        help="measure trigger latency only, no fan-out (short rounds that alternate two trees)",
    )
    parser.add_argument(
        "--service-path",
        help="PYTHONPATH entries put first for the services and the migrations: another checkout's code",
    )
    arguments = parser.parse_args()
    try:
        result = asyncio.run(
            main(
                arguments.quick,
                arguments.rate,
                arguments.channel_cap,
                fanout=not arguments.triggers_only,
                python_path=arguments.service_path,
            )
        )
    except ImpossibleFigure as impossible:
        print(f"bench/triggers.py: impossible measurement, no figures printed: {impossible}", file=sys.stderr)
        sys.exit(2)
    print(
        f"trigger: p50 {result['trigger_p50_ms']} ms (target <= 10), p99 {result['trigger_p99_ms']} ms "
        f"(target <= 50) at {result['trigger_rate_per_s']} events/s, from the call to the message's arrival"
    )
    if "fanout_customers" in result:
        print(
            f"fan-out: {result['fanout_messages_per_s']} messages/s to {result['fanout_customers']} customers"
            " received by SMTP (target >= 5000)"
        )
    print(json.dumps(result))
