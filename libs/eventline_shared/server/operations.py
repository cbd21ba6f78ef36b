"""What a server adds to every service from its ``CommonSettings``: counting calls, the
API-key check (``eventline_shared.security.api_keys``), TLS credentials
(``eventline_shared.security.tls``), and the ``/metrics`` HTTP endpoint (on
EVENTLINE_<SERVICE>_METRICS_PORT; off when unset) with its gauges
(``eventline_shared.observability.metrics``).

The stream gauges are every service's; a service adds its own (the outbox backlog of
ingestion, the delivery ledger of campaigns) as ``gauges``, refreshed on the same beat.
API keys are checked against the service's own pool: the server opens none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import grpc
from prometheus_client import start_http_server

from eventline_shared.observability.metrics import refresh_stream_gauges
from eventline_shared.security.api_keys import KeyStore
from eventline_shared.security.tls import SecuritySettings
from eventline_shared.server.config import CommonSettings
from eventline_shared.server.handlers import HandlerWrapper, counting_calls, requiring_keys
from eventline_shared.streams import stream

log = logging.getLogger(__name__)

Gauges = Callable[[], Awaitable[None]]
"""Refreshes some of a service's own gauges (reads its database, sets the values)."""


class Operations:
    """Metrics endpoint, API keys and TLS for one server, from its ``CommonSettings``.

    ``pool`` is the service's PostgreSQL pool, which API keys are checked against
    (required when EVENTLINE_AUTH is on); ``gauges`` refresh the service's own gauges.
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        pool: asyncpg.Pool | None = None,
        gauges: Sequence[Gauges] = (),
    ) -> None:
        self.settings = settings
        self.security = settings.security or SecuritySettings()
        self.metrics_port = settings.metrics_port
        self.keys: KeyStore | None = None
        if self.security.auth:
            if pool is None:
                raise ValueError("EVENTLINE_AUTH=true: the server needs the service's pool to check API keys")
            self.keys = KeyStore(pool, self.security.auth_cache_s)
        self.gauges = list(gauges)
        self._http: Any = None
        self._probes: asyncio.Task[None] | None = None
        self.bound_metrics_port = 0

    def wrappers(self) -> list[HandlerWrapper]:
        """What wraps every method's handler, innermost first (see ``eventline_shared.server.handlers``)."""
        found: list[HandlerWrapper] = []
        if self.keys is not None:
            found.append(requiring_keys(self.keys))
        found.append(counting_calls)
        return found

    def credentials(self) -> grpc.ServerCredentials | None:
        return self.security.server_credentials()

    async def start(self) -> None:
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

    async def _refresh_gauges(self) -> None:
        client = stream.connect(self.settings.redis_url)
        try:
            while True:
                for key in self.settings.stream_layout.keys:
                    with contextlib.suppress(Exception):
                        await refresh_stream_gauges(client, key)
                for refresh in self.gauges:
                    try:
                        await refresh()
                    except Exception as exc:
                        log.debug("metrics probe failed", extra={"error": repr(exc)})
                await asyncio.sleep(self.settings.metrics_interval_s)
        finally:
            await client.aclose()
