"""Ingestion benchmark: batch and unary throughput against the raw COPY floor.

Starts the ingestion service as its own process (python -m eventline_ingestion)
on a database of its own, and measures from this process over loopback gRPC:

* batch: 500 events per TrackEvents call, 4 calls in flight, asking for replies
  without the stored events (``omit_stored_events``, as a bulk import does;
  ``--full-replies`` asks for the events); the clock stops when every event is
  durable: committed in PostgreSQL and published on the Redis stream;
* copy: the same rows COPYed into the same table (same indexes and foreign
  key, customers created beforehand) over one connection: the floor;
* unary: one TrackCustomerEvent per call, 64 in flight; the clock stops when
  every reply is in (each reply means committed);
* bare: the same unary calls, same client, answered by a handler that stores
  nothing (bench/bare_unary.py), served once by the services' own bootstrap
  (``eventline_shared.server.grpc_server.Server``, its interceptors included) and
  once by a plain grpc.aio server (interceptors excluded): the floor.

Each phase runs in rounds (``ROUNDS``), each round of the service next to a
round of its floors, so both ratios compare figures taken under the same load:
they hold on a shared, noisy machine where absolute figures do not: ``batch_to_copy_ratio``
(batch events/s over COPY rows/s) and ``unary_to_bare_ratio`` (unary events/s
over the plain grpc.aio floor).

Where the machine's CPU goes, per event (row, call), read from the kernel (psutil)
around each round: the serving process (and its worker processes, if any), the
PostgreSQL backends of its database, the server's background processes (WAL
writer, checkpointer, autovacuum: shared with every database on the server),
Redis (shared too: the COPY rounds, which touch no Redis, show what others
cost it), and this process, the client (requests and rows are made before each
round, so only sending and receiving count). The sum bounds the events per
second the machine's cores could take (``*_cpu_bound_per_s``). The relay's own
share is measured apart, while the service is otherwise idle: after each batch
round, half as many events are committed straight into the outbox as the
storing statement writes them (rows of 500 packed entries, each waking the
relays once the one before is on the stream), and the service, its backends and
Redis are read until they are all on the stream (``relay_cpu_us_per_event_*``).

Data: customers drawn with a skew (a few customers have many events) from a
pool of 10,000, 20 event names, contexts like {"item_id": 123, "amount": 12.34}.

Usage: python bench/ingest.py [--quick] [--full-replies] [--service-path DIRS]. ``--service-path``
runs the service from another checkout (its libs/, services/ingestion and clients/python/src,
joined with ":", put first on the service's PYTHONPATH): rounds of the code before and after a
change, alternating, with the same benchmark. The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
import common
import grpc
import psutil
import redis.asyncio as redis
from common import (
    POSTGRES_URL,
    REDIS_URL,
    ROOT,
    backend_cpu,
    backend_cpu_used,
    cpu_seconds,
    drop_database,
    free_port,
    fresh_database,
    serving,
    start_service,
    stop,
)
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from google.protobuf import timestamp_pb2

from eventline_shared.storage import notifications
from eventline_shared.streams.stream import pack_entry
from eventline_shared.values import UTC

NAMES = [f"Event{i:02d}" for i in range(20)]


def make_events(count: int, seed: int) -> list[tuple[str, str, str, dt.datetime, int, str]]:
    """(customer_id, event_id, name, occurred_at, item_id, amount) with a skew over customers."""
    rng = random.Random(seed)
    now = dt.datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    events = []
    for i in range(count):
        customer = int(rng.paretovariate(1.2)) % 10_000
        occurred = now - dt.timedelta(seconds=rng.randrange(90 * 86400))
        events.append(
            (
                f"cust{customer}",
                f"{run}-{i}",
                rng.choice(NAMES),
                occurred.replace(microsecond=0),
                rng.randrange(1000),
                f"{rng.randrange(1, 100000) / 100:.2f}",
            )
        )
    return events


def customer_request(
    event: tuple[str, str, str, dt.datetime, int, str],
) -> ingestion_pb2.TrackCustomerEventRequest:
    customer, event_id, name, occurred, item_id, amount = event
    request = ingestion_pb2.TrackCustomerEventRequest(customer_id=customer, event_id=event_id, name=name)
    request.occurred_at.FromDatetime(occurred)
    request.context["item_id"].integer_value = item_id
    request.context["amount"].decimal_value = amount
    return request


class Service:
    def __init__(self, url: str, stream: str, python_path: str | None = None) -> None:
        self.port = free_port()
        env = {
            "EVENTLINE_DATABASE_URL": url,
            "EVENTLINE_REDIS_URL": REDIS_URL,
            "EVENTLINE_STREAM": stream,
            "EVENTLINE_INGESTION_PORT": str(self.port),
            "EVENTLINE_INGESTION_DB_POOL_SIZE": "16",
            "EVENTLINE_LOG_LEVEL": "WARNING",
        }
        if python_path:
            env["PYTHONPATH"] = python_path
        self.process = start_service("ingestion", env)

    def stop(self) -> None:
        stop(self.process)


class BareServer:
    """bench/bare_unary.py in its own process: the unary floor."""

    def __init__(self, interceptors: bool) -> None:
        self.port = free_port()
        flags = ["--interceptors"] if interceptors else []
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare_unary.py"), str(self.port), *flags],
            env={**os.environ, "EVENTLINE_LOG_LEVEL": "WARNING"},
            cwd=ROOT,
        )

    def stop(self) -> None:
        stop(self.process)


async def wait_for_stream(client: redis.Redis, stream: str, count: int) -> None:
    while await client.xlen(stream) < count:
        await asyncio.sleep(0.005)


ROUNDS = 4
"""Each phase runs in this many rounds, a round of each floor next to a round of what it is
the floor of, so that a change of load on a shared machine weighs on both alike."""

Event = tuple[str, str, str, dt.datetime, int, str]


class CopyFloor:
    """COPY of rows into ``customer_events`` of a database of its own (customers created first)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, events: list[Event], name: str) -> CopyFloor:
        connection = await asyncpg.connect(await fresh_database(name))
        customers = sorted({e[0] for e in events})
        await connection.executemany(
            "INSERT INTO customers (customer_id) VALUES ($1)", [(c,) for c in customers]
        )
        return cls(connection)

    @staticmethod
    def rows(events: list[Event]) -> list[tuple[object, ...]]:
        """The rows of ``events`` (made before a round: a client's data is ready to send)."""
        now = dt.datetime.now(UTC)
        return [
            (c, i, n, o, now, json.dumps({"amount": float(a), "item_id": item}))
            for c, i, n, o, item, a in events
        ]

    async def copy(self, rows: list[tuple[object, ...]]) -> float:
        """Seconds to COPY ``rows``."""
        started = time.perf_counter()
        await self.connection.copy_records_to_table(
            "customer_events",
            records=rows,
            columns=["customer_id", "event_id", "name", "occurred_at", "received_at", "context"],
        )
        return time.perf_counter() - started


def batch_requests(events: list[Event], full_replies: bool) -> list[ingestion_pb2.TrackEventsRequest]:
    """``events`` in TrackEvents requests of 500 (made before a round, as ``CopyFloor.rows``)."""
    return [
        ingestion_pb2.TrackEventsRequest(
            events=[
                ingestion_pb2.TrackEventsItem(customer_event=customer_request(e)) for e in events[i : i + 500]
            ],
            omit_stored_events=not full_replies,
        )
        for i in range(0, len(events), 500)
    ]


async def bench_batch(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
    client: redis.Redis,
    stream: str,
    batches: list[ingestion_pb2.TrackEventsRequest],
) -> float:
    """Seconds until ``batches``, sent 4 calls in flight, are all on the stream."""
    events = sum(len(batch.events) for batch in batches)
    queue: asyncio.Queue[ingestion_pb2.TrackEventsRequest] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    before = await client.xlen(stream)

    async def worker() -> None:
        while not queue.empty():
            reply = await stub.TrackEvents(queue.get_nowait(), timeout=60)
            assert not any(r.HasField("error") for r in reply.results)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(4)))
    await wait_for_stream(client, stream, before + events)
    return time.perf_counter() - started


async def bench_unary(
    stub: ingestion_pb2_grpc.IngestionServiceStub, requests: list[ingestion_pb2.TrackCustomerEventRequest]
) -> tuple[float, list[float]]:
    """Seconds for one TrackCustomerEvent per request, 64 in flight, and each call's latency."""
    latencies: list[float] = []
    index = 0

    async def worker() -> None:
        nonlocal index
        while index < len(requests):
            request = requests[index]
            index += 1
            t0 = time.perf_counter()
            await stub.TrackCustomerEvent(request, timeout=30)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(64)))
    return time.perf_counter() - started, latencies


async def unary_published(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
    client: redis.Redis,
    stream: str,
    requests: list[ingestion_pb2.TrackCustomerEventRequest],
    stored: int,
    latencies: list[float],
) -> float:
    """``bench_unary``'s seconds (every reply means committed), adding its latencies; returns once
    the stream holds ``stored`` entries, so that the CPU the relay spends on them counts too."""
    elapsed, seen = await bench_unary(stub, requests)
    latencies.extend(seen)
    await wait_for_stream(client, stream, stored)
    return elapsed


CpuReading = Mapping[int, float]
"""CPU seconds used so far, by process id (one id for a process read with its children)."""
Meter = Callable[[], Awaitable[CpuReading]]


class Phase:
    """Time and CPU summed over a phase's rounds, the CPU read by ``meters`` (each a process or
    a set of processes: the serving process, its PostgreSQL backends, Redis...) around each
    round."""

    def __init__(self, meters: Mapping[str, Meter] | None = None) -> None:
        self.meters = dict(meters or {})
        self.seconds = 0.0
        self.cpu_s = dict.fromkeys(self.meters, 0.0)
        self.count = 0

    async def run(self, count: int, work: Awaitable[float]) -> None:
        before = {name: await meter() for name, meter in self.meters.items()}
        self.seconds += await work
        for name, meter in self.meters.items():
            self.cpu_s[name] += backend_cpu_used(before[name], await meter())
        self.count += count

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    def cpu_us(self, meter: str) -> float:
        """CPU µs per event (row, call) that ``meter``'s processes spent."""
        return self.cpu_s[meter] * 1e6 / self.count


def process_meter(pid: int) -> Meter:
    """A process and its children (worker processes)."""

    async def read() -> CpuReading:
        return {pid: cpu_seconds(pid)}

    return read


def own_meter() -> Meter:
    """This process alone (the benchmark's client side), not the services it started."""
    me = psutil.Process()

    async def read() -> CpuReading:
        times = me.cpu_times()
        return {me.pid: times.user + times.system}

    return read


def backends_meter(pids: Callable[[], Awaitable[list[int]]]) -> Meter:
    """PostgreSQL backends (same host), found anew at each reading (a backend started between
    two readings counts from zero; one that ended meanwhile is lost)."""

    async def read() -> CpuReading:
        return backend_cpu(await pids())

    return read


def redis_meter(client: redis.Redis) -> Meter:
    """The Redis server (same host; shared with every other user of that server)."""

    async def read() -> CpuReading:
        info = await client.info("server")
        return {0: cpu_seconds(int(info["process_id"]))}

    return read


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_FEED = """
WITH fed AS (INSERT INTO event_outbox (stream, customer_ids, entries) VALUES ($1, $2, $3))
SELECT pg_notify($4, '')
"""


def outbox_rows(events: list[Event]) -> list[tuple[list[str], bytes]]:
    """``events`` as the storing statement leaves them in the outbox (new event ids, the
    customers and their packed stream entries), in rows of 500: a relay round's work."""
    received_at = timestamp_pb2.Timestamp()
    received_at.FromDatetime(dt.datetime.now(UTC))
    rows = []
    for i in range(0, len(events), 500):
        chunk = events[i : i + 500]
        entries = []
        for customer, event_id, name, occurred, item_id, amount in chunk:
            event = common_pb2.Event(
                event_id=f"{event_id}-relay",
                kind=common_pb2.EVENT_KIND_CUSTOMER,
                customer_id=customer,
                name=name,
                received_at=received_at,
                context={
                    "item_id": common_pb2.Value(integer_value=item_id),
                    "amount": common_pb2.Value(decimal_value=amount),
                },
            )
            event.occurred_at.FromDatetime(occurred)
            entries.append(pack_entry(customer, event.event_id, name, event.SerializeToString(), TRACEPARENT))
        rows.append(([e[0] for e in chunk], b"".join(entries)))
    return rows


async def relay_round(
    feeder: asyncpg.Connection,
    client: redis.Redis,
    stream: str,
    rows: list[tuple[list[str], bytes]],
    stored: int,
) -> float:
    """Seconds until the service's relay has published ``rows``: each is committed to the outbox
    (waking the relays, as other writers' rows do) once the one before is on the stream, as
    statements of the batch path commit theirs; the stream holds ``stored`` entries before."""
    started = time.perf_counter()
    for customer_ids, entries in rows:
        await feeder.execute(_FEED, stream, customer_ids, entries, notifications.OUTBOX)
        stored += len(customer_ids)
        await wait_for_stream(client, stream, stored)
    return time.perf_counter() - started


def rounds(events: list[Event]) -> list[list[Event]]:
    size = -(-len(events) // ROUNDS)
    return [events[i : i + size] for i in range(0, len(events), size)]


async def main(
    quick: bool,
    sizes: tuple[int, int] | None = None,
    *,
    full_replies: bool = False,
    service_path: str | None = None,
) -> dict[str, float]:
    batch_count, unary_count = sizes or ((20_000, 3_000) if quick else (200_000, 30_000))
    batch_events = make_events(batch_count, seed=1)
    unary_events = make_events(unary_count, seed=2)
    load_before = os.getloadavg()
    # Databases of this run's own: other sessions may benchmark on the same PostgreSQL server.
    run = uuid.uuid4().hex[:8]
    floor = await CopyFloor.open(batch_events, f"eventline_bench_copy_{run}")
    url = await fresh_database(f"eventline_bench_ingest_{run}")
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    client = redis.Redis.from_url(REDIS_URL)
    service = Service(url, stream, service_path)
    bare, served = BareServer(interceptors=False), BareServer(interceptors=True)
    admin = await asyncpg.connect(POSTGRES_URL)
    feeder = await asyncpg.connect(url)
    """Writes the relay rounds' outbox rows (its backend is not the service's)."""

    async def service_backends() -> list[int]:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
            url.rsplit("/", 1)[1],
            feeder.get_server_pid(),
        )
        return [row["pid"] for row in rows]

    async def copy_backend() -> list[int]:
        return [floor.connection.get_server_pid()]

    async def background_processes() -> list[int]:
        # The WAL writer, checkpointer, background writer and autovacuum: the server's, shared
        # with every database on it.
        rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'")
        return [row["pid"] for row in rows]

    served_by = process_meter(service.process.pid)
    its_backends, background = backends_meter(service_backends), backends_meter(background_processes)
    redis_server, me = redis_meter(client), own_meter()
    copy = Phase(
        {
            "postgres": backends_meter(copy_backend),
            "background": background,
            "redis": redis_server,
            "client": me,
        }
    )
    batch, unary = (
        Phase(
            {
                "service": served_by,
                "postgres": its_backends,
                "background": background,
                "redis": redis_server,
                "client": me,
            }
        )
        for _ in range(2)
    )
    relay = Phase({"service": served_by, "postgres": its_backends, "redis": redis_server})
    bare_unary = Phase({"service": process_meter(bare.process.pid), "client": me})
    served_unary = Phase({"service": process_meter(served.process.pid), "client": me})
    latencies: list[float] = []
    try:
        for server in (service, bare, served):
            await serving(server.port)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{bare.port}") as bare_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as served_channel,
        ):
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            bare_stub = ingestion_pb2_grpc.IngestionServiceStub(bare_channel)
            served_stub = ingestion_pb2_grpc.IngestionServiceStub(served_channel)
            # Warm up connections and code paths.
            await stub.TrackEvents(
                ingestion_pb2.TrackEventsRequest(
                    events=[
                        ingestion_pb2.TrackEventsItem(customer_event=customer_request(e))
                        for e in make_events(500, 3)
                    ]
                )
            )
            for each in (bare_stub, served_stub):
                await each.TrackCustomerEvent(customer_request(make_events(1, 4)[0]))
            stored = 500
            for part in rounds(batch_events):
                await copy.run(len(part), floor.copy(CopyFloor.rows(part)))
                await batch.run(
                    len(part), bench_batch(stub, client, stream, batch_requests(part, full_replies))
                )
                stored += len(part)
                # The relay alone: half as many events, as outbox rows the storing statement writes.
                fed = part[: len(part) // 2]
                await relay.run(len(fed), relay_round(feeder, client, stream, outbox_rows(fed), stored))
                stored += len(fed)
            for part in rounds(unary_events):
                # The bare handlers store nothing: half as many calls measure them well enough.
                half = [customer_request(e) for e in part[: len(part) // 2]]
                await bare_unary.run(len(half), _elapsed(bench_unary(bare_stub, half)))
                await served_unary.run(len(half), _elapsed(bench_unary(served_stub, half)))
                stored += len(part)
                requests = [customer_request(e) for e in part]
                await unary.run(len(part), unary_published(stub, client, stream, requests, stored, latencies))
    finally:
        service.stop()
        bare.stop()
        served.stop()
        await floor.connection.close()
        await feeder.close()
        await admin.close()
        await drop_database(f"eventline_bench_copy_{run}")
        await drop_database(f"eventline_bench_ingest_{run}")
        await client.delete(stream)
        await client.aclose()
    latencies.sort()
    figures: dict[str, float] = {
        "batch_events": len(batch_events),
        "batch_events_per_s": round(batch.per_s),
        "copy_rows_per_s": round(copy.per_s),
        "batch_to_copy_ratio": round(batch.per_s / copy.per_s, 3),
        "unary_events": len(unary_events),
        "unary_events_per_s": round(unary.per_s),
        "unary_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "unary_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "bare_calls_per_s": round(bare_unary.per_s),
        "bare_served_calls_per_s": round(served_unary.per_s),
        "unary_to_bare_ratio": round(unary.per_s / bare_unary.per_s, 3),
        "unary_to_served_bare_ratio": round(unary.per_s / served_unary.per_s, 3),
        "batch_cpu_us_per_event": round(batch.cpu_us("service"), 1),
        "unary_cpu_us_per_event": round(unary.cpu_us("service"), 1),
        "copy_database_cpu_us_per_row": round(copy.cpu_us("postgres"), 1),
        "batch_database_cpu_us_per_event": round(batch.cpu_us("postgres"), 1),
        "unary_database_cpu_us_per_event": round(unary.cpu_us("postgres"), 1),
        "bare_cpu_us_per_call": round(bare_unary.cpu_us("service"), 1),
        "bare_served_cpu_us_per_call": round(served_unary.cpu_us("service"), 1),
        "batch_full_replies": int(full_replies),
        "cpus": os.cpu_count() or 0,
        "load_average_before": round(load_before[0], 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    # Where the machine's CPU goes per event (row, call), every process the path runs on.
    for name, phase in (("batch", batch), ("copy", copy), ("unary", unary), ("relay", relay)):
        for meter in phase.meters:
            figures[f"{name}_cpu_us_per_event_{meter}"] = round(phase.cpu_us(meter), 1)
        total = sum(phase.cpu_us(meter) for meter in phase.meters)
        if name != "relay":  # part of the batch and unary figures, not a path of its own
            figures[f"{name}_cpu_us_per_event_total"] = round(total, 1)
            # The most events per second the machine's cores could take at this CPU per event.
            figures[f"{name}_cpu_bound_per_s"] = round(figures["cpus"] * 1e6 / total)
    for name, phase in (("bare", bare_unary), ("bare_served", served_unary)):
        figures[f"{name}_client_cpu_us_per_call"] = round(phase.cpu_us("client"), 1)
    return figures


async def _elapsed(timed: Awaitable[tuple[float, list[float]]]) -> float:
    return (await timed)[0]


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="a short run on less data")
    parser.add_argument(
        "--events",
        type=int,
        nargs=2,
        metavar=("BATCH", "UNARY"),
        help="how many events the batch and unary phases send (default 200000 30000; quick 20000 3000)",
    )
    parser.add_argument(
        "--full-replies", action="store_true", help="batch replies echo the stored events (the default reply)"
    )
    parser.add_argument(
        "--service-path", help="PYTHONPATH entries put first for the service: run another checkout's code"
    )
    arguments = parser.parse_args()
    result = asyncio.run(
        main(
            arguments.quick,
            tuple(arguments.events) if arguments.events else None,
            full_replies=arguments.full_replies,
            service_path=arguments.service_path,
        )
    )
    print(
        f"batch: {result['batch_events_per_s']} events/s, copy floor: {result['copy_rows_per_s']} rows/s, "
        f"ratio {result['batch_to_copy_ratio']} (target >= 0.75); "
        f"{result['batch_cpu_us_per_event']} CPU µs per event in the service; PostgreSQL "
        f"{result['batch_database_cpu_us_per_event']} µs per event, {result['copy_database_cpu_us_per_row']} per COPY row"
    )
    for path, unit in (("batch", "event"), ("copy", "COPY row"), ("unary", "event")):
        parts = ", ".join(
            f"{key.rsplit('_', 1)[1]} {value}"
            for key, value in result.items()
            if key.startswith(f"{path}_cpu_us_per_event_") and not key.endswith("_total")
        )
        print(
            f"{path}: CPU µs per {unit}: {parts}; in all {result[f'{path}_cpu_us_per_event_total']}, "
            f"so at most {result[f'{path}_cpu_bound_per_s']}/s on {result['cpus']} cores"
        )
    relay = ", ".join(
        f"{m} {result[f'relay_cpu_us_per_event_{m}']}" for m in ("service", "postgres", "redis")
    )
    print(f"relay alone (part of the batch and unary figures): CPU µs per event: {relay}")
    print(
        f"unary: {result['unary_events_per_s']} events/s, p50 {result['unary_p50_ms']} ms, "
        f"p99 {result['unary_p99_ms']} ms; {result['unary_cpu_us_per_event']} CPU µs per event in the service"
    )
    print(
        f"bare handler: {result['bare_calls_per_s']} calls/s on plain grpc.aio "
        f"({result['bare_cpu_us_per_call']} CPU µs per call), {result['bare_served_calls_per_s']} through "
        f"eventline's Server ({result['bare_served_cpu_us_per_call']} µs); unary ratio "
        f"{result['unary_to_bare_ratio']} (target >= 0.65), {result['unary_to_served_bare_ratio']} to the served floor"
    )
    print(json.dumps(result))
