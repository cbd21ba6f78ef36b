"""The TypeScript client's own unit tests (node --test), run by the suite so CI runs them."""

from __future__ import annotations

import subprocess

import pytest

from tests.node import TYPESCRIPT_CLIENT, build

pytestmark = pytest.mark.slow


def test_typescript_unit_tests_pass() -> None:
    build(TYPESCRIPT_CLIENT)
    tests = sorted(str(path) for path in (TYPESCRIPT_CLIENT / "dist" / "test").glob("*.test.js"))
    assert tests
    result = subprocess.run(
        ["node", "--test", *tests], cwd=TYPESCRIPT_CLIENT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
