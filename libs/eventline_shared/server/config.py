"""Configuration from the environment: frozen dataclasses that fail fast.

Every variable is prefixed ``EVENTLINE_``. A bad value stops the process at
start-up with a message naming the variable, never later at first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eventline_shared.environment import ConfigError, env_bool, env_float, env_int, env_str
from eventline_shared.security.tls import SecuritySettings
from eventline_shared.streams.stream import StreamLayout

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/eventline"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STREAM = "eventline:events"


@dataclass(frozen=True)
class CommonSettings:
    """What every service needs: where PostgreSQL and Redis are, and how to serve."""

    database_url: str
    redis_url: str
    """A single server (redis://, rediss://, unix://) or a Redis Cluster (redis+cluster://,
    rediss+cluster://; EVENTLINE_REDIS_CLUSTER=true turns redis:// into redis+cluster://)."""
    stream: str
    host: str
    port: int
    database_pool_size: int
    shutdown_grace_s: float
    log_level: str
    metrics_port: int | None = None
    """The /metrics HTTP port (EVENTLINE_<SERVICE>_METRICS_PORT); None: no endpoint."""
    metrics_interval_s: float = 15.0
    security: SecuritySettings | None = None
    """API keys and TLS (see eventline_shared.security.tls); None: neither."""
    health_probe_interval_s: float = 2.0
    """How often PostgreSQL and Redis are probed for the health status (see eventline_shared.observability.dependencies)."""
    stream_partitions: int = 1
    """EVENTLINE_STREAM_PARTITIONS: the event stream is this many Redis streams (see
    ``eventline_shared.streams.stream.StreamLayout``); every replica of every service must agree."""
    migrate: bool = True
    """EVENTLINE_MIGRATE: apply missing migrations at start; false: only check that none is missing
    (then ``eventline migrate``, run once per release, is the only writer of DDL)."""
    max_connection_age_s: float = 300.0
    """EVENTLINE_GRPC_MAX_CONNECTION_AGE_S: the server ends (GOAWAY) each client connection after
    about this long (gRPC adds ±10 % jitter), so that clients reconnect and an L4 balancer spreads
    them over new replicas; 0: never."""
    max_connection_age_grace_s: float = 60.0
    """EVENTLINE_GRPC_MAX_CONNECTION_AGE_GRACE_S: how long calls in flight on such a connection may
    still run (long segment streams resume from their last page token after it)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], service: str, default_port: int) -> CommonSettings:
        prefix = f"EVENTLINE_{service.upper()}_"
        database_url = env_str(environ, "EVENTLINE_DATABASE_URL", DEFAULT_DATABASE_URL)
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("EVENTLINE_DATABASE_URL must be a postgresql:// URL")
        redis_url = env_str(environ, "EVENTLINE_REDIS_URL", DEFAULT_REDIS_URL)
        if not redis_url.startswith(
            ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        ):
            raise ConfigError(
                "EVENTLINE_REDIS_URL must be a redis://, rediss:// or unix:// URL, or a Redis Cluster's "
                "redis+cluster:// or rediss+cluster:// URL"
            )
        if env_bool(environ, "EVENTLINE_REDIS_CLUSTER", False) and "+cluster://" not in redis_url:
            if redis_url.startswith("unix://"):
                raise ConfigError(
                    "EVENTLINE_REDIS_CLUSTER=true needs a redis:// or rediss:// URL, not unix://"
                )
            redis_url = redis_url.replace("://", "+cluster://", 1)
        metrics_port = env_int(environ, prefix + "METRICS_PORT", -1, minimum=-1)
        health_probe_interval_s = env_float(environ, "EVENTLINE_HEALTH_PROBE_INTERVAL_S", 2.0)
        if not 0 < health_probe_interval_s <= 3600:
            raise ConfigError("EVENTLINE_HEALTH_PROBE_INTERVAL_S must be more than 0 and at most 3600")
        settings = cls(
            database_url=database_url,
            redis_url=redis_url,
            stream=env_str(environ, "EVENTLINE_STREAM", DEFAULT_STREAM),
            host=env_str(environ, prefix + "HOST", "127.0.0.1"),
            port=env_int(environ, prefix + "PORT", default_port),
            database_pool_size=env_int(environ, prefix + "DB_POOL_SIZE", 10, minimum=1),
            shutdown_grace_s=env_float(environ, "EVENTLINE_SHUTDOWN_GRACE_S", 10.0),
            log_level=env_str(environ, "EVENTLINE_LOG_LEVEL", "INFO").upper(),
            metrics_port=None if metrics_port < 0 else metrics_port,
            metrics_interval_s=env_float(environ, "EVENTLINE_METRICS_INTERVAL_S", 15.0),
            security=SecuritySettings.from_env(environ),
            health_probe_interval_s=health_probe_interval_s,
            stream_partitions=env_int(environ, "EVENTLINE_STREAM_PARTITIONS", 1, minimum=1),
            migrate=env_bool(environ, "EVENTLINE_MIGRATE", True),
            max_connection_age_s=_non_negative(environ, "EVENTLINE_GRPC_MAX_CONNECTION_AGE_S", 300.0),
            max_connection_age_grace_s=_non_negative(
                environ, "EVENTLINE_GRPC_MAX_CONNECTION_AGE_GRACE_S", 60.0
            ),
        )
        try:
            settings.stream_layout  # noqa: B018 - checked at start, not at first use
        except ValueError as exc:
            raise ConfigError(f"EVENTLINE_STREAM: {exc}") from None
        return settings

    def server_options(self) -> list[tuple[str, int]]:
        """The gRPC server options these settings imply: the maximum connection age and its grace."""
        if self.max_connection_age_s <= 0:
            return []
        return [
            ("grpc.max_connection_age_ms", round(self.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(self.max_connection_age_grace_s * 1000)),
        ]

    @property
    def stream_layout(self) -> StreamLayout:
        """The keys of the event stream's partitions and their dead-letter streams."""
        return StreamLayout(self.stream, self.stream_partitions)


def _non_negative(environ: Mapping[str, str], name: str, default: float) -> float:
    value = env_float(environ, name, default)
    if not 0 <= value <= 30 * 86400:
        raise ConfigError(f"{name} must be between 0 and 2592000 seconds, got {value:g}")
    return value
