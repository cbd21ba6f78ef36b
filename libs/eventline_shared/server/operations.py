"""What a server adds to every service from its ``CommonSettings``: counting calls, the
API-key check (``eventline_shared.security.api_keys``), TLS credentials
(``eventline_shared.security.tls``), and the ``/metrics`` HTTP endpoint (on
EVENTLINE_<SERVICE>_METRICS_PORT; off when unset) with its gauges
(``eventline_shared.observability.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import grpc
from prometheus_client import start_http_server

from eventline_shared.observability.metrics import (
    OUTBOX_BACKLOG,
    refresh_delivery_gauges,
    refresh_stream_gauges,
)
from eventline_shared.security.api_keys import KeyStore
from eventline_shared.security.tls import SecuritySettings
from eventline_shared.server.config import CommonSettings
from eventline_shared.server.handlers import HandlerWrapper, counting_calls, requiring_keys
from eventline_shared.streams import stream

log = logging.getLogger(__name__)


class Operations:
    """Metrics endpoint, API keys and TLS for one server, from its ``CommonSettings``."""

    def __init__(self, service_names: Sequence[str], settings: CommonSettings) -> None:
        self.settings = settings
        self.service_names = list(service_names)
        self.security: SecuritySettings = getattr(settings, "security", None) or SecuritySettings()
        self.metrics_port: int | None = getattr(settings, "metrics_port", None)
        self.keys: KeyStore | None = None
        self._pool: Any = None
        self._http: Any = None
        self._probes: asyncio.Task[None] | None = None
        self.bound_metrics_port = 0

    def wrappers(self) -> list[HandlerWrapper]:
        """What wraps every method's handler, innermost first (see ``eventline_shared.server.handlers``)."""
        found: list[HandlerWrapper] = []
        if self.security.auth:
            found.append(requiring_keys(lambda: self.keys))
        found.append(counting_calls)
        return found

    def credentials(self) -> grpc.ServerCredentials | None:
        return self.security.server_credentials()

    async def start(self) -> None:
        if self.security.auth:
            import asyncpg

            self._pool = await asyncpg.create_pool(self.settings.database_url, min_size=1, max_size=4)
            self.keys = KeyStore(self._pool, self.security.auth_cache_s)
        if self.metrics_port is not None:
            self._http, _ = start_http_server(self.metrics_port, addr=self.settings.host)
            self.bound_metrics_port = int(self._http.server_port)
            log.info("metrics serving", extra={"metrics_port": self.bound_metrics_port})
            self._probes = asyncio.create_task(self._refresh_gauges())

    async def stop(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        if self._http is not None:
            await asyncio.to_thread(self._http.shutdown)
            self._http.server_close()
        if self._pool is not None:
            await self._pool.close()

    async def _refresh_gauges(self) -> None:
        import asyncpg

        interval = float(getattr(self.settings, "metrics_interval_s", 15.0))
        names = " ".join(self.service_names).lower()
        client = stream.connect(self.settings.redis_url)
        connection: asyncpg.Connection | None = None
        try:
            while True:
                for key in self.settings.stream_layout.keys:
                    with contextlib.suppress(Exception):
                        await refresh_stream_gauges(client, key)
                try:
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(self.settings.database_url, timeout=5)
                    if "ingestion" in names:
                        OUTBOX_BACKLOG.set(await connection.fetchval("SELECT count(*) FROM event_outbox"))
                    if "campaigns" in names:
                        await refresh_delivery_gauges(connection)
                except Exception as exc:
                    log.debug("metrics probe failed", extra={"error": repr(exc)})
                await asyncio.sleep(interval)
        finally:
            await client.aclose()
            if connection is not None:
                await connection.close()
