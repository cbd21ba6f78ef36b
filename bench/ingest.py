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
over the plain grpc.aio floor). The CPU the serving process (and its worker
processes, if any) and the PostgreSQL backends of each database (same host)
spent per event is read from the kernel (psutil) around each round.

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
from collections.abc import Awaitable, Callable

import asyncpg
import common
import grpc
import redis.asyncio as redis
from common import (
    POSTGRES_URL,
    REDIS_URL,
    ROOT,
    backend_cpu,
    cpu_seconds,
    drop_database,
    free_port,
    fresh_database,
    serving,
    start_service,
    stop,
)
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

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

    async def copy(self, events: list[Event]) -> float:
        """Seconds to COPY ``events``."""
        now = dt.datetime.now(UTC)
        rows = [
            (c, i, n, o, now, json.dumps({"amount": float(a), "item_id": item}))
            for c, i, n, o, item, a in events
        ]
        started = time.perf_counter()
        await self.connection.copy_records_to_table(
            "customer_events",
            records=rows,
            columns=["customer_id", "event_id", "name", "occurred_at", "received_at", "context"],
        )
        return time.perf_counter() - started


async def bench_batch(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
    client: redis.Redis,
    stream: str,
    events: list[Event],
    full_replies: bool,
) -> float:
    """Seconds until ``events``, sent in TrackEvents calls of 500, 4 in flight, are all on the stream."""
    batches = [
        ingestion_pb2.TrackEventsRequest(
            events=[
                ingestion_pb2.TrackEventsItem(customer_event=customer_request(e)) for e in events[i : i + 500]
            ],
            omit_stored_events=not full_replies,
        )
        for i in range(0, len(events), 500)
    ]
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
    await wait_for_stream(client, stream, before + len(events))
    return time.perf_counter() - started


async def bench_unary(
    stub: ingestion_pb2_grpc.IngestionServiceStub, events: list[Event]
) -> tuple[float, list[float]]:
    """Seconds for one TrackCustomerEvent per event, 64 in flight, and each call's latency."""
    requests = [customer_request(e) for e in events]
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
    events: list[Event],
    stored: int,
    latencies: list[float],
) -> float:
    """``bench_unary``'s seconds (every reply means committed), adding its latencies; returns once
    the stream holds ``stored`` entries, so that the CPU the relay spends on them counts too."""
    elapsed, seen = await bench_unary(stub, events)
    latencies.extend(seen)
    await wait_for_stream(client, stream, stored)
    return elapsed


class Phase:
    """Time, server CPU and PostgreSQL CPU summed over a phase's rounds.

    ``backends`` gives the pids of the PostgreSQL backends serving the phase (its
    database's connections), whose CPU is read around each round.
    """

    def __init__(
        self, pid: int | None = None, backends: Callable[[], Awaitable[list[int]]] | None = None
    ) -> None:
        self.pid = pid
        self.backends = backends
        self.seconds = 0.0
        self.cpu_s = 0.0
        self.database_cpu_s = 0.0
        self.count = 0

    async def run(self, count: int, work: Awaitable[float]) -> None:
        before = backend_cpu(await self.backends()) if self.backends else {}
        cpu = cpu_seconds(self.pid) if self.pid else 0.0
        self.seconds += await work
        if self.pid:
            self.cpu_s += cpu_seconds(self.pid) - cpu
        if self.backends:
            after = backend_cpu(await self.backends())
            self.database_cpu_s += sum(t - before.get(pid, 0.0) for pid, t in after.items())
        self.count += count

    @property
    def database_cpu_us(self) -> float:
        return self.database_cpu_s * 1e6 / self.count

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s * 1e6 / self.count


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
    # Databases of this run's own: other sessions may benchmark on the same PostgreSQL server.
    run = uuid.uuid4().hex[:8]
    floor = await CopyFloor.open(batch_events, f"eventline_bench_copy_{run}")
    url = await fresh_database(f"eventline_bench_ingest_{run}")
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    client = redis.Redis.from_url(REDIS_URL)
    service = Service(url, stream, service_path)
    bare, served = BareServer(interceptors=False), BareServer(interceptors=True)
    admin = await asyncpg.connect(POSTGRES_URL)

    async def service_backends() -> list[int]:
        rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", url.rsplit("/", 1)[1])
        return [row["pid"] for row in rows]

    async def copy_backend() -> list[int]:
        return [floor.connection.get_server_pid()]

    copy, batch = Phase(backends=copy_backend), Phase(service.process.pid, service_backends)
    unary, bare_unary, served_unary = (
        Phase(service.process.pid, service_backends),
        Phase(bare.process.pid),
        Phase(served.process.pid),
    )
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
            for part in rounds(batch_events):
                await copy.run(len(part), floor.copy(part))
                await batch.run(len(part), bench_batch(stub, client, stream, part, full_replies))
            stored = 500 + len(batch_events)
            for part in rounds(unary_events):
                # The bare handlers store nothing: half as many calls measure them well enough.
                half = part[: len(part) // 2]
                await bare_unary.run(len(half), _elapsed(bench_unary(bare_stub, half)))
                await served_unary.run(len(half), _elapsed(bench_unary(served_stub, half)))
                stored += len(part)
                await unary.run(len(part), unary_published(stub, client, stream, part, stored, latencies))
    finally:
        service.stop()
        bare.stop()
        served.stop()
        await floor.connection.close()
        await admin.close()
        await drop_database(f"eventline_bench_copy_{run}")
        await drop_database(f"eventline_bench_ingest_{run}")
        await client.delete(stream)
        await client.aclose()
    latencies.sort()
    return {
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
        "batch_cpu_us_per_event": round(batch.cpu_us, 1),
        "unary_cpu_us_per_event": round(unary.cpu_us, 1),
        "copy_database_cpu_us_per_row": round(copy.database_cpu_us, 1),
        "batch_database_cpu_us_per_event": round(batch.database_cpu_us, 1),
        "unary_database_cpu_us_per_event": round(unary.database_cpu_us, 1),
        "bare_cpu_us_per_call": round(bare_unary.cpu_us, 1),
        "bare_served_cpu_us_per_call": round(served_unary.cpu_us, 1),
        "batch_full_replies": int(full_replies),
        "cpus": os.cpu_count() or 0,
    }


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
