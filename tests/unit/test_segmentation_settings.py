"""Segmentation settings and the session DSN."""

from __future__ import annotations

import pytest

from eventline_segmentation.service import session_dsn
from eventline_segmentation.settings import DEFAULT_PORT, Settings
from eventline_shared.environment import ConfigError


def test_defaults_and_overrides() -> None:
    settings = Settings.from_env({})
    assert settings.common.port == DEFAULT_PORT == 50052
    assert settings.max_query_s == 300.0 and settings.work_mem_mb == 64
    assert (settings.max_streams, settings.stream_idle_s) == (32, 120.0)
    tuned = Settings.from_env(
        {
            "EVENTLINE_SEGMENTATION_PORT": "6000",
            "EVENTLINE_SEGMENTATION_MAX_QUERY_S": "2.5",
            "EVENTLINE_SEGMENTATION_WORK_MEM_MB": "16",
            "EVENTLINE_SEGMENTATION_MAX_STREAMS": "4",
            "EVENTLINE_SEGMENTATION_STREAM_IDLE_S": "0.5",
        }
    )
    assert (tuned.common.port, tuned.max_query_s, tuned.work_mem_mb) == (6000, 2.5, 16)
    assert (tuned.max_streams, tuned.stream_idle_s) == (4, 0.5)


def test_bad_values_fail_fast_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="EVENTLINE_SEGMENTATION_WORK_MEM_MB"):
        Settings.from_env({"EVENTLINE_SEGMENTATION_WORK_MEM_MB": "1"})
    with pytest.raises(ConfigError, match="EVENTLINE_SEGMENTATION_PORT"):
        Settings.from_env({"EVENTLINE_SEGMENTATION_PORT": "many"})
    with pytest.raises(ConfigError, match="EVENTLINE_SEGMENTATION_MAX_STREAMS"):
        Settings.from_env({"EVENTLINE_SEGMENTATION_MAX_STREAMS": "0"})
    for name in ("EVENTLINE_SEGMENTATION_STREAM_IDLE_S", "EVENTLINE_SEGMENTATION_TRANSITION_RETENTION_S"):
        for bad in ("0", "-1", "nan", "inf"):
            with pytest.raises(ConfigError, match=name):
                Settings.from_env({name: bad})


def test_the_transition_retention_is_a_week_unless_set() -> None:
    assert Settings.from_env({}).transition_retention_s == 7 * 24 * 3600.0
    set_ = Settings.from_env({"EVENTLINE_SEGMENTATION_TRANSITION_RETENTION_S": "3600"})
    assert set_.transition_retention_s == 3600.0


def test_the_import_lag_bound_is_30_s_unless_set_and_refuses_bad_values() -> None:
    assert Settings.from_env({}).import_max_lag_s == 30.0
    name = "EVENTLINE_SEGMENTATION_IMPORT_MAX_LAG_S"
    assert Settings.from_env({name: "120"}).import_max_lag_s == 120.0
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: bad})


def test_session_settings_keep_the_callers_parameters() -> None:
    dsn = session_dsn("postgresql://u@h:5432/db?sslmode=disable&jit=on", 32)
    assert dsn.startswith("postgresql://u@h:5432/db?")
    query = dict(p.split("=") for p in dsn.split("?", 1)[1].split("&"))
    assert query == {
        "sslmode": "disable",
        "jit": "on",  # an explicit choice in the URL wins
        "work_mem": "32MB",
        "plan_cache_mode": "force_custom_plan",
    }

