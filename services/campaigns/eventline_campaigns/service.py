"""Wiring of the campaign service: pools, channels, campaign cache, stream consumer and server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from eventline_campaigns.audience import Audience
from eventline_campaigns.campaign_admin import CampaignAdmin
from eventline_campaigns.campaign_cache import CampaignCache
from eventline_campaigns.channels import Channel, FileSink, HttpChannel, SmtpChannel, WebhookChannel
from eventline_campaigns.consumer import CampaignHandler
from eventline_campaigns.delivery import Delivery
from eventline_campaigns.engine import Engine
from eventline_campaigns.erasure import SinkJanitor
from eventline_campaigns.gauges import refresh_delivery_gauges
from eventline_campaigns.journey_store import JourneyStore
from eventline_campaigns.journeys import JourneyRunner
from eventline_campaigns.model import EMAIL, PUSH, SMS, WEBHOOK, ChannelNumber, Message
from eventline_campaigns.rendering import RenderPool
from eventline_campaigns.repository import CampaignRepository
from eventline_campaigns.servicer import CampaignServicer
from eventline_campaigns.settings import Settings
from eventline_campaigns.test_sends import TestSends
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.observability.dependencies import DependencyMonitor
from eventline_shared.paging import PageTokens
from eventline_shared.security import client_channels
from eventline_shared.server.grpc_server import Server
from eventline_shared.storage import database
from eventline_shared.storage.database import PostgreSQL
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup
from eventline_shared.streams.stream import Redis

log = logging.getLogger(__name__)

SERVICE_NAME = campaigns_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name


@dataclass
class RunningCampaigns:
    server: Server
    port: int
    consumer: ConsumerGroup
    engine: Engine
    cache: CampaignCache
    channels: dict[ChannelNumber, Channel]
    rendering: RenderPool
    journeys: JourneyRunner


def build_channels(
    settings: Settings, observer: Callable[[Message], None] | None = None
) -> dict[ChannelNumber, Channel]:
    """A provider per channel where one is configured, the file sink everywhere else."""
    sink: FileSink | None = None

    def file_sink() -> FileSink:
        nonlocal sink
        if sink is None:
            sink = FileSink(settings.sink_dir, observer)
        return sink

    channels: dict[ChannelNumber, Channel] = {}
    if settings.smtp_host:
        channels[EMAIL] = SmtpChannel(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_from,
            domain=settings.message_id_domain,
            username=settings.smtp_username,
            password=settings.smtp_password,
            start_tls=settings.smtp_starttls,
            timeout_s=settings.provider_timeout_s,
            concurrency=settings.smtp_connections,
        )
    else:
        channels[EMAIL] = file_sink()
    channels[WEBHOOK] = (
        WebhookChannel(
            settings.webhook_secret,
            timeout_s=settings.provider_timeout_s,
            allow_private=settings.webhook_allow_private,
        )
        if settings.webhook_secret
        else file_sink()
    )
    for channel, url in ((SMS, settings.sms_url), (PUSH, settings.push_url)):
        channels[channel] = (
            HttpChannel(url, settings.provider_secret, timeout_s=settings.provider_timeout_s)
            if url
            else file_sink()
        )
    return channels


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    consume: bool = True,
    observer: Callable[[Message], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[RunningCampaigns]:
    """The campaign service, serving until the context exits; then a graceful stop.

    With ``consume=False`` the stream is not consumed in the background (tests
    call ``consumer.drain()`` themselves); campaign changes are still polled.
    Business time (frequency-cap windows, previews) is read from ``clock``.
    """
    common = settings.common
    await database.prepare_schema(common.database_url, apply=common.migrate)
    client = stream.connect(common.redis_url)
    channels = build_channels(settings, observer)
    segmentation = client_channels.client_channel(settings.segmentation_addr, common.security)
    # Campaigns react to the event stream: without Redis they cannot do their job, so both
    # PostgreSQL and Redis are required. Segmentation is not: its outage only delays deliveries,
    # and it reports its own health (a chain of NOT_SERVING would take every service out at once).
    dependencies = DependencyMonitor(
        [PostgreSQL(common.database_url), Redis(client, common.stream_layout.keys, required=True)],
        interval_s=common.health_probe_interval_s,
    )
    rendering = RenderPool(
        settings.render_workers,
        settings.render_limits,
        memory_mb=settings.render_memory_mb,
        stall_s=max(30.0, settings.render_limits.cpu_s * 4 + 10),
    )
    async with rendering, database.open_pool(common.database_url, max_size=common.database_pool_size) as pool:
        repository = CampaignRepository(pool, clock)
        cache = CampaignCache(repository, settings.campaign_poll_s)
        audience = Audience(segmentation)
        delivery = Delivery(
            repository,
            channels,
            rendering,
            lease_s=settings.lease_s,
            send_attempts=settings.send_attempts,
            send_concurrency=settings.send_concurrency,
            unsubscribe_links=settings.unsubscribe,
        )
        journeys = JourneyRunner(
            JourneyStore(pool, settings.lease_s), repository, cache, delivery, audience, clock
        )
        engine = Engine(
            repository, cache, audience, delivery, fanout_batch=settings.fanout_batch, journeys=journeys
        )
        consumer = ConsumerGroup(
            client,
            CampaignHandler(engine),
            streams=common.stream_layout.keys,
            group=settings.consumer_group,
            consumer=settings.consumer_name,
            batch=settings.read_batch,
            claim_idle_ms=settings.claim_idle_ms,
            max_attempts=settings.max_attempts,
            concurrency=settings.batches_in_flight,
            forget_idle_ms=settings.forget_consumer_ms,
            lease_ms=settings.partition_lease_ms,
            ordered=settings.ordered,
            dependencies=dependencies,
        )
        await cache.refresh()
        admin = CampaignAdmin(
            repository,
            audience,
            cache,
            rendering,
            settings.render_limits,
            clock=clock,
            journeys=journeys.store,
        )
        servicer = CampaignServicer(
            admin, await PageTokens.load(pool), TestSends(admin, delivery), settings.suppression
        )
        server = Server(
            [SERVICE_NAME],
            settings=common,
            dependencies=dependencies,
            pool=pool,
            gauges=[lambda: refresh_delivery_gauges(pool)],
        )
        campaigns_pb2_grpc.add_CampaignServiceServicer_to_server(servicer, server.server)
        port = server.bind(common.host, common.port)
        await server.start()
        tasks = [asyncio.create_task(cache.run()), asyncio.create_task(audience.check_access())]
        janitors = [
            SinkJanitor(sink, repository, settings.campaign_poll_s)
            for sink in {id(c): c for c in channels.values() if isinstance(c, FileSink)}.values()
        ]
        tasks += [asyncio.create_task(janitor.run()) for janitor in janitors]
        if consume:
            tasks.append(asyncio.create_task(consumer.run()))
            tasks.append(asyncio.create_task(journeys.run()))
        if settings.smtp_host and settings.unsubscribe is None:
            log.warning(
                "marketing e-mails carry no List-Unsubscribe link: set EVENTLINE_UNSUBSCRIBE_URL and "
                "EVENTLINE_UNSUBSCRIBE_SECRET (mailbox providers require one-click unsubscribe of bulk senders)"
            )
        log.info("campaigns serving", extra={"port": port, "consumer": settings.consumer_name})
        try:
            yield RunningCampaigns(server, port, consumer, engine, cache, channels, rendering, journeys)
        finally:
            await server.stop(common.shutdown_grace_s)
            consumer.shutdown()
            journeys.shutdown()
            cache.shutdown()
            for janitor in janitors:
                janitor.shutdown()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in {id(c): c for c in channels.values()}.values():
                await channel.aclose()
            await segmentation.close()
            await client.aclose()
