"""bench/journeys.py reads wait-for-event matching from the services' stamps and refuses figures
that cannot be true (a negative span, stamps out of order)."""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def journeys(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The benchmark's module, imported as ``python bench/journeys.py`` would run it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    yield importlib.import_module("journeys")


def stamps(journeys: ModuleType, customer_id: str = "c1", **moved_ms: float) -> Any:
    """Consistent stamps of one event (accepted at T0), some moved by ``moved_ms``."""
    at = {"accepted": 0.0, "replied": 1.0, "appended": 1.5, "handled": 2.0, "resumed": 3.0}
    at.update(moved_ms)
    return journeys.MatchStamps(
        customer_id, **{name: T0 + dt.timedelta(milliseconds=value) for name, value in at.items()}
    )


def test_the_figure_runs_from_ingestion_accepting_to_the_instance_moving_on(journeys: ModuleType) -> None:
    figures = journeys.match_figures([stamps(journeys, "c1"), stamps(journeys, "c2", resumed=5.0)])
    assert figures["wait_for_event_match_p50_ms"] == 4.0
    assert figures["wait_for_event_match_max_ms"] == 5.0
    assert figures["wait_for_event_stage_accepted_to_stream_p50_ms"] == 1.5
    assert figures["wait_for_event_stage_stream_to_handler_p50_ms"] == 0.5
    assert figures["wait_for_event_stage_handler_to_resumed_p50_ms"] == 2.0


def test_a_stream_entry_within_its_millisecond_of_the_stamps_is_accepted(journeys: ModuleType) -> None:
    # The entry's id is Redis's millisecond: +-0.5 ms either side of the true append.
    figures = journeys.match_figures([stamps(journeys, appended=-0.4), stamps(journeys, "c2", appended=2.4)])
    assert figures["wait_for_event_match_p50_ms"] == 3.0


@pytest.mark.parametrize(
    "moved",
    [
        {"resumed": -1.0},  # the instance moved on before ingestion accepted the event
        {"handled": 4.0},  # the handler began after the instance moved on
        {"handled": -0.1},  # the handler began before the event was accepted
        {"appended": -0.6},  # the entry appended before the event was accepted
        {"appended": 2.6},  # the entry appended after the handler began on it
        {"replied": -0.1},  # the reply before the call arrived
    ],
)
def test_stamps_out_of_order_are_refused(journeys: ModuleType, moved: dict[str, float]) -> None:
    with pytest.raises(journeys.common.ImpossibleFigure):
        journeys.match_figures([stamps(journeys), stamps(journeys, "c2", **moved)])


def test_no_event_is_refused(journeys: ModuleType) -> None:
    with pytest.raises(journeys.common.ImpossibleFigure):
        journeys.match_figures([])
