"""The documents name tests and files that exist: a renamed test must not leave a promise unproved."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_docs_guarantees_names_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = 0
    missing = []
    for cell in re.findall(r"\|([^|\n]*`(?:tests/|::)[^|\n]*)", text):
        current: Path | None = None
        for reference in re.findall(r"`([^`]+)`", cell):
            path, _, test = reference.partition("::")
            if path:
                if not path.startswith(("tests/", "bench/")):
                    continue
                current = ROOT / path
                if not current.exists():
                    missing.append(reference)
                    continue
            if test:
                named += 1
                if current is None or not re.search(rf"def {re.escape(test)}\b", current.read_text()):
                    missing.append(reference)
    assert named > 40, "the document's references were not found; has its format changed?"
    assert missing == []
