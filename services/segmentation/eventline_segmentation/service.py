"""Wiring of the segmentation service: pool, servicer and server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from eventline.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from eventline_segmentation.membership import MembershipRepository
from eventline_segmentation.realtime import RealtimeSegments, SegmentEvents
from eventline_segmentation.repository import SegmentationRepository
from eventline_segmentation.segments import Segments
from eventline_segmentation.servicer import SegmentationServicer
from eventline_segmentation.settings import Settings
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.observability.dependencies import DependencyMonitor
from eventline_shared.paging import PageTokens
from eventline_shared.server.grpc_server import Server, method_path
from eventline_shared.storage import database
from eventline_shared.storage.database import PostgreSQL
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup
from eventline_shared.streams.imports import ImportMark
from eventline_shared.streams.stream import Redis

log = logging.getLogger(__name__)

SERVICE_NAME = segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name
READ_REPLICA = "postgresql-read"
"""The dependency name of EVENTLINE_SEGMENTATION_READ_DATABASE_URL (health: eventline.dependency.postgresql-read)."""

FILTER_REQUEST_BYTES = 256 * 1024
"""The largest request carrying a filter: ample for 200 nodes and 5,000 operands of usual sizes,
and small enough to decode in about a millisecond (a 7 MB filter took 0.1 s to decode alone)."""
SMALL_REQUEST_BYTES = 64 * 1024
"""The largest request of the RPCs that take ids and paging only."""
REQUEST_LIMITS = {
    **{
        method_path(SERVICE_NAME, method): FILTER_REQUEST_BYTES
        for method in (
            "CountCustomers",
            "ListCustomers",
            "StreamCustomers",
            "MatchCustomer",
            "ValidateFilter",
            "CreateSegment",
            "UpdateSegment",
            "GetSegmentSize",
        )
    },
    **{
        method_path(SERVICE_NAME, method): SMALL_REQUEST_BYTES
        for method in ("GetSegment", "ListSegments", "DeleteSegment", "ListSegmentMembers", "WatchSegment")
    },
}
EVENT_BATCH = 1000
"""Stream entries the real-time consumer reads at once (the consumer group's default is 200): a
batch is one evaluation transaction and statement over its customers, each once whatever their
number of events, so a consumer that fell behind catches up in fewer, larger ones; one that keeps
up reads what has arrived, as before."""
MAX_STREAMS_PER_CONNECTION = 256
"""HTTP/2 streams one client connection may have open at once; its further calls wait in the client.

Without a bound, one connection could open thousands of calls at once; grpc's core
keeps the calls the server has not yet picked up in a backlog, and past 1,000 of
them (all past 3,000) sheds new ones by cancelling them: their clients saw
CANCELLED for calls they never cancelled. With the bound, a connection's burst
waits in its client instead; a stream opened past it (before the client learns
the bound, or while the server is still releasing finished streams) is refused
with REFUSED_STREAM, which clients see as UNAVAILABLE: never processed, safe to
retry."""


@dataclass
class RunningSegmentation:
    server: Server
    port: int
    realtime: RealtimeSegments
    """Real-time segments: ``backfill_all`` and ``fire_due`` in burst mode for tests."""
    consumer: ConsumerGroup
    """The event stream's consumer for real-time segments (``drain`` in burst mode)."""


def session_dsn(dsn: str, work_mem_mb: int, *, custom_plans: bool = True) -> str:
    """The DSN with the session settings of segmentation queries.

    asyncpg passes unknown DSN query parameters as server settings. Hashed id
    sets (``IN`` / ``NOT IN`` under OR and NOT) must fit in work_mem, and every
    set query is planned with its actual values (period bounds, names), since a
    generic plan cannot know how selective they are. MatchCustomer queries
    (``custom_plans=False``) read one customer's rows whatever the values, so
    they keep PostgreSQL's plan cache, which saves the planning (about 1 ms
    of a 1.5 ms query on shape 5).
    """
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query.setdefault("work_mem", f"{work_mem_mb}MB")
    if custom_plans:
        query.setdefault("plan_cache_mode", "force_custom_plan")
    # JIT compilation costs 100-600 ms on the larger trees (measured on shape 5
    # of bench/segments.py) and never pays back within one segment query.
    query.setdefault("jit", "off")
    return urlunsplit(parts._replace(query=urlencode(query)))


@asynccontextmanager
async def running(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK, background: bool = True
) -> AsyncIterator[RunningSegmentation]:
    """The segmentation service, serving until the context exits; then a graceful stop.

    A query without its own ``now`` is evaluated at ``clock``'s now. With ``background``
    False (tests), real-time segments are kept only by calling the burst methods of
    ``realtime`` and ``consumer``."""
    common = settings.common
    await database.prepare_schema(common.database_url, apply=common.migrate)
    # Filters are evaluated on the read replica when there is one; saved segments, the page
    # token key and matches the replica cannot answer yet use the primary.
    read_url = settings.read_database_url or common.database_url
    dsn = session_dsn(common.database_url, settings.work_mem_mb)
    match_dsn = session_dsn(read_url, settings.work_mem_mb, custom_plans=False)
    async with contextlib.AsyncExitStack() as pools:
        pool = await pools.enter_async_context(database.open_pool(dsn, max_size=common.database_pool_size))
        match_pool = await pools.enter_async_context(
            database.open_pool(match_dsn, max_size=common.database_pool_size)
        )
        read_pool = None
        if settings.read_database_url:
            read_pool = await pools.enter_async_context(
                database.open_pool(
                    session_dsn(read_url, settings.work_mem_mb), max_size=common.database_pool_size
                )
            )
        tokens = await PageTokens.load(pool)
        repository = SegmentationRepository(
            pool,
            match_pool,
            stream_connections=max(1, common.database_pool_size // 2),
            read_pool=read_pool,
        )
        members = MembershipRepository(pool, common.stream_layout)
        servicer = SegmentationServicer(
            Segments(repository, clock, members), settings.max_query_s, settings.max_streams, tokens
        )
        client = stream.connect(common.redis_url)
        pools.push_async_callback(client.aclose)
        databases = [PostgreSQL(common.database_url)]
        if settings.read_database_url:
            databases.append(PostgreSQL(settings.read_database_url, name=READ_REPLICA))
        # Real-time segments need the stream, the rest of the service does not: not required.
        dependencies = DependencyMonitor(
            [*databases, Redis(client, common.stream_layout.keys, required=False)],
            interval_s=common.health_probe_interval_s,
        )
        realtime = RealtimeSegments(
            pool, members, clock, transition_retention_s=settings.transition_retention_s
        )
        consumer = ConsumerGroup(
            client,
            SegmentEvents(
                realtime,
                ImportMark(client, common.stream_layout, clock),
                dt.timedelta(seconds=settings.import_max_lag_s),
            ),
            streams=common.stream_layout.keys,
            batch=EVENT_BATCH,
            group=settings.consumer_group,
            consumer=settings.consumer_name,
            dependencies=dependencies,
        )
        server = Server(
            [SERVICE_NAME],
            settings=common,
            dependencies=dependencies,
            options=[("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)],
            max_request_bytes=REQUEST_LIMITS,
            stream_idle_s=settings.stream_idle_s,
            pool=pool,
        )
        segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, server.server)
        port = server.bind(common.host, common.port)
        await server.start()
        log.info("segmentation serving", extra={"port": port})
        tasks = []
        if background and settings.realtime:
            tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(realtime.run())]
        try:
            yield RunningSegmentation(server, port, realtime, consumer)
        finally:
            await server.stop(common.shutdown_grace_s)
            consumer.shutdown()
            realtime.shutdown()
            await asyncio.gather(*tasks, return_exceptions=True)
