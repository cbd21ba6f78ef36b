"""Ingestion settings."""

from __future__ import annotations

import pytest

from eventline_ingestion.settings import Settings
from eventline_shared.environment import ConfigError


def test_the_relay_poll_is_a_positive_duration() -> None:
    assert Settings.from_env({}).relay_poll_s == 1.0
    assert Settings.from_env({"EVENTLINE_INGESTION_RELAY_POLL_S": "3600"}).relay_poll_s == 3600.0
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="EVENTLINE_INGESTION_RELAY_POLL_S"):
            Settings.from_env({"EVENTLINE_INGESTION_RELAY_POLL_S": bad})
