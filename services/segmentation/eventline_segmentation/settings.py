"""Segmentation configuration (see README for every variable)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from eventline_shared.environment import ConfigError, env_bool, env_float, env_int, env_seconds, env_str
from eventline_shared.server.config import CommonSettings

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class Settings:
    common: CommonSettings
    max_query_s: float
    """Queries of a request without a deadline are cancelled after this many seconds."""
    work_mem_mb: int
    """PostgreSQL work_mem of the service's connections: hashed id sets must fit in memory."""
    max_streams: int
    """StreamCustomers calls served at once by this replica; more are RESOURCE_EXHAUSTED."""
    stream_idle_s: float
    """A stream whose client reads nothing for this long is ended with ABORTED."""
    read_database_url: str = ""
    """EVENTLINE_SEGMENTATION_READ_DATABASE_URL: a streaming replica that evaluates filters
    (count, list, stream, match, segment size); empty: the primary does."""
    realtime: bool = True
    """EVENTLINE_SEGMENTATION_REALTIME: whether this replica keeps real-time segments (consumes the
    event stream in group EVENTLINE_SEGMENTATION_GROUP, fires timers, runs backfills)."""
    transition_retention_s: float = 7 * 24 * 3600.0
    """EVENTLINE_SEGMENTATION_TRANSITION_RETENTION_S: transitions older than this are pruned from
    the log WatchSegment reads (their customer events stay)."""
    import_max_lag_s: float = 30.0
    """EVENTLINE_SEGMENTATION_IMPORT_MAX_LAG_S: while bulk imports are being stored
    (``TrackEventsRequest.bulk_import``) the real-time consumer reads no new event, until the
    oldest unread one has waited this long (by the clock, since ingestion received it)."""
    consumer_group: str = "segmentation"
    consumer_name: str = ""
    """EVENTLINE_SEGMENTATION_CONSUMER: this replica's name in the group (host, pid and a random
    part by default)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        idle = env_seconds(environ, "EVENTLINE_SEGMENTATION_STREAM_IDLE_S", 120.0)
        read_database_url = env_str(environ, "EVENTLINE_SEGMENTATION_READ_DATABASE_URL", "")
        retention = env_seconds(environ, "EVENTLINE_SEGMENTATION_TRANSITION_RETENTION_S", 7 * 24 * 3600.0)
        if read_database_url and not read_database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("EVENTLINE_SEGMENTATION_READ_DATABASE_URL must be a postgresql:// URL")
        return cls(
            common=CommonSettings.from_env(environ, "segmentation", DEFAULT_PORT),
            max_query_s=env_float(environ, "EVENTLINE_SEGMENTATION_MAX_QUERY_S", 300.0),
            work_mem_mb=env_int(environ, "EVENTLINE_SEGMENTATION_WORK_MEM_MB", 64, minimum=4),
            max_streams=env_int(environ, "EVENTLINE_SEGMENTATION_MAX_STREAMS", 32, minimum=1),
            stream_idle_s=idle,
            read_database_url=read_database_url,
            realtime=env_bool(environ, "EVENTLINE_SEGMENTATION_REALTIME", True),
            transition_retention_s=retention,
            import_max_lag_s=env_seconds(environ, "EVENTLINE_SEGMENTATION_IMPORT_MAX_LAG_S", 30.0),
            consumer_group=env_str(environ, "EVENTLINE_SEGMENTATION_GROUP", "segmentation"),
            consumer_name=env_str(
                environ,
                "EVENTLINE_SEGMENTATION_CONSUMER",
                f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            ),
        )
