"""``python -m eventline_ingestion``'s process set-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from eventline_ingestion import __main__ as ingestion_main


@pytest.fixture
def collector_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_service_serves_with_a_young_generation_fitted_to_its_batches(
    collector_thresholds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gc.set_threshold(700, 10, 10)
    serving: list[tuple[int, int, int]] = []

    def serve_main(*_: Any, **__: Any) -> None:
        serving.append(gc.get_threshold())

    monkeypatch.setattr(ingestion_main, "serve_main", serve_main)
    ingestion_main.main()
    assert serving == [(ingestion_main.YOUNG_COLLECTION_OBJECTS, 10, 10)]
    assert ingestion_main.YOUNG_COLLECTION_OBJECTS > 4 * 500 * 5  # the batches in flight's objects
