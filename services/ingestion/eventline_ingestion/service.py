"""Wiring of the ingestion service: pools, relay, servicer and server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_ingestion.erasure import Erasure
from eventline_ingestion.relay import OutboxRelay
from eventline_ingestion.repository import IngestionRepository
from eventline_ingestion.servicer import IngestionServicer
from eventline_ingestion.settings import Settings
from eventline_ingestion.writer import EventWriter
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.observability.dependencies import DependencyMonitor
from eventline_shared.paging import PageTokens
from eventline_shared.server import workers
from eventline_shared.server.grpc_server import Server
from eventline_shared.storage import database, notifications
from eventline_shared.storage.database import PostgreSQL
from eventline_shared.streams import stream
from eventline_shared.streams.imports import ImportMark, ImportsRunning
from eventline_shared.streams.stream import Redis

log = logging.getLogger(__name__)

SERVICE_NAME = ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name


@dataclass
class RunningIngestion:
    server: Server
    relay: OutboxRelay
    port: int
    pool: asyncpg.Pool
    listener: notifications.Listener
    imports: ImportsRunning


@asynccontextmanager
async def running(
    settings: Settings, *, relay: bool = True, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[RunningIngestion]:
    """The ingestion service, serving until the context exits; then a graceful stop.

    With ``relay=False`` the outbox is not published (tests drive ``drain`` themselves).
    Business time (arrival, received_at) is read from ``clock``.
    """
    common = settings.common
    await database.prepare_schema(common.database_url, apply=common.migrate)
    client = stream.connect(common.redis_url)
    # Ingestion cannot store without PostgreSQL. Without Redis it keeps accepting events (the
    # outbox keeps them until the relay can publish), so Redis is reported on its own name only.
    dependencies = DependencyMonitor(
        [PostgreSQL(common.database_url), Redis(client, common.stream_layout.keys, required=False)],
        interval_s=common.health_probe_interval_s,
    )
    async with database.open_pool(common.database_url, max_size=common.database_pool_size) as pool:
        outbox = OutboxRelay(
            pool,
            client,
            common.stream_layout,
            batch=settings.relay_batch,
            retention_s=settings.stream_retention_s,
            trim_interval_s=settings.trim_interval_s,
            poll_s=settings.relay_poll_s,
            dependencies=dependencies,
        )
        # Rows other writers commit (segmentation's transitions, on any replica) wake the relay.
        listener = notifications.Listener(common.database_url, notifications.OUTBOX, outbox.wake)
        repository = IngestionRepository(pool, common.stream_layout)
        writer = EventWriter(repository, outbox.wake, concurrency=settings.write_concurrency, clock=clock)
        tokens = await PageTokens.load(pool)
        erasure = Erasure(repository, client, common.stream_layout)
        imports = ImportsRunning(ImportMark(client, common.stream_layout, clock))
        servicer = IngestionServicer(
            repository, writer, erasure, tokens, settings.max_batch, clock=clock, imports=imports
        )
        server = Server(
            [SERVICE_NAME],
            settings=common,
            dependencies=dependencies,
            options=[workers.REUSEPORT_OPTION] if settings.workers > 1 else (),
            pool=pool,
            gauges=[outbox.refresh_gauges],
        )
        ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(servicer, server.server)
        port = server.bind(common.host, common.port)
        await server.start()
        relay_task = asyncio.create_task(outbox.run()) if relay else None
        listener_task = asyncio.create_task(listener.run()) if relay else None
        log.info("ingestion serving", extra={"port": port})
        try:
            yield RunningIngestion(server, outbox, port, pool, listener, imports)
        finally:
            await server.stop(common.shutdown_grace_s)
            await imports.close()
            if listener_task:
                listener.shutdown()
                await listener_task
            if relay_task:
                outbox.shutdown()
                await relay_task
            await client.aclose()
