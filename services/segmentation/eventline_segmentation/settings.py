"""Segmentation configuration (see README for every variable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eventline_shared.config import CommonSettings, env_float, env_int

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class Settings:
    common: CommonSettings
    max_query_s: float
    """Queries of a request without a deadline are cancelled after this many seconds."""
    work_mem_mb: int
    """PostgreSQL work_mem of the service's connections: hashed id sets must fit in memory."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            common=CommonSettings.from_env(environ, "segmentation", DEFAULT_PORT),
            max_query_s=env_float(environ, "EVENTLINE_SEGMENTATION_MAX_QUERY_S", 300.0),
            work_mem_mb=env_int(environ, "EVENTLINE_SEGMENTATION_WORK_MEM_MB", 64, minimum=4),
        )
