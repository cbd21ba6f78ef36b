"""bench/realtime.py's options: a pair count that would give no figure is refused before anything
starts."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def realtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The benchmark's module, imported as ``python bench/realtime.py`` would run it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    yield importlib.import_module("realtime")


@pytest.mark.parametrize("pairs", ["0", "-2", "six", ""])
def test_batch_pairs_below_one_are_refused(realtime: ModuleType, pairs: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        realtime.pairs_count(pairs)


def test_batch_pairs_of_one_or_more_are_taken(realtime: ModuleType) -> None:
    assert [realtime.pairs_count(text) for text in ("1", "6", "12")] == [1, 6, 12]
