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


def test_the_architecture_map_names_files_and_functions_that_exist() -> None:
    """docs/architecture.md is a map of the code: every path it names exists, and every
    ``name`` it places ``in `some/file.py` `` is defined there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = [ref for ref in re.findall(r"`([^`\s]+)`", text) if "/" in ref and not ref.startswith("google.")]
    assert len(paths) > 30, "the map's paths were not found; has its format changed?"
    missing = [ref for ref in paths if not (ROOT / ref.rstrip("/")).exists()]
    placed = re.findall(r"`([A-Za-z_][\w.]*)`\s+in\s+`(\w+(?:/\w+)+\.py)`", text)
    assert len(placed) > 15, "the map's functions were not found; has its format changed?"
    for name, path in placed:
        source = (ROOT / path).read_text() if (ROOT / path).exists() else ""
        for part in name.split("."):
            if not re.search(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(part)}\b", source, re.M):
                missing.append(f"{name} in {path}")
    assert missing == []
