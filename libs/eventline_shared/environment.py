"""Reading ``EVENTLINE_*`` variables: typed values, and one error that names the variable.

The lowest layer of the configuration: ``config`` (every service's common settings) and
``auth`` (API keys and TLS, part of those settings) both read the environment with these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class ConfigError(Exception):
    """A configuration variable is missing or malformed."""


def env_str(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name, default).strip() or default


def env_int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds: a positive, finite number."""
    value = env_float(environ, name, default)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
