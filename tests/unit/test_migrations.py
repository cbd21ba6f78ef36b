"""The shipped migrations, read as files: each version is used once.

Two branches that each add "the next" migration give two files one number; the
runner would then record the first and fail on the second in every database.
"""

from __future__ import annotations

from collections import Counter

from eventline_shared.storage import database


def test_every_migration_has_a_version_of_its_own() -> None:
    versions = Counter(version for version, _, _ in database.migrations())
    assert versions, "no migrations found"
    assert [version for version, count in versions.items() if count > 1] == []
