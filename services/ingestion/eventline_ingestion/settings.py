"""Ingestion configuration (see README for every variable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eventline_shared.environment import env_float, env_int, env_seconds
from eventline_shared.server import workers
from eventline_shared.server.config import CommonSettings

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class Settings:
    common: CommonSettings
    max_batch: int
    """TrackEvents refuses more items than this with RESOURCE_EXHAUSTED."""
    relay_batch: int
    """How many outbox rows the relay publishes per transaction."""
    stream_retention_s: float
    """Stream entries older than this are trimmed, unless a consumer group still needs them."""
    trim_interval_s: float
    relay_poll_s: float
    """How often the relay looks for outbox rows nobody woke it for (it listens for the NOTIFY
    of other writers' commits, so this only bounds the delay after a lost connection)."""
    write_concurrency: int
    """How many storing statements run at once; requests arriving meanwhile share the next one."""
    workers: int = 1
    """Worker processes serving the one port (``eventline_shared.server.workers``); above 1, each binds
    with SO_REUSEPORT."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            common=CommonSettings.from_env(environ, "ingestion", DEFAULT_PORT),
            max_batch=env_int(environ, "EVENTLINE_INGESTION_MAX_BATCH", 1000, minimum=1),
            relay_batch=env_int(environ, "EVENTLINE_INGESTION_RELAY_BATCH", 200, minimum=1),
            stream_retention_s=env_float(environ, "EVENTLINE_STREAM_RETENTION_S", 7 * 24 * 3600.0),
            trim_interval_s=env_float(environ, "EVENTLINE_STREAM_TRIM_INTERVAL_S", 60.0),
            relay_poll_s=env_seconds(environ, "EVENTLINE_INGESTION_RELAY_POLL_S", 1.0),
            write_concurrency=env_int(environ, "EVENTLINE_INGESTION_WRITE_CONCURRENCY", 2, minimum=1),
            workers=workers.worker_count(environ, "ingestion"),
        )
