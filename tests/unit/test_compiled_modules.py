"""The compiled hot modules (eventline_shared.compiled, scripts/compile_modules.py): imported in
place of their sources only while those are exactly what was compiled, and in CI what the suite
runs."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path

import pytest

from eventline_shared import compiled

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "mypyc" / "lib"


def test_the_suite_runs_the_compiled_modules() -> None:
    """CI compiles them (make test): its tests, and the services they start, run them compiled."""
    if not (BUILD / compiled.MANIFEST).is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must run the compiled modules: scripts/compile_modules.py built nothing")
        pytest.skip("not compiled here (no C compiler?): the modules run from their sources")
    manifest = json.loads((BUILD / compiled.MANIFEST).read_text())
    assert manifest["sources"]
    interpreted = [
        name
        for name in manifest["sources"]
        if not Path(importlib.import_module(name).__file__ or "").is_relative_to(BUILD)
    ]
    if interpreted and not os.environ.get("CI"):
        # A source edited since `make` compiled it (make test compiles first): all run from source.
        pytest.skip(f"the build is not current here: {interpreted} run from their sources")
    assert interpreted == []


def _build(tmp_path: Path, source: Path) -> Path:
    """A build directory whose manifest names ``probe_package.probe`` compiled from ``source``."""
    build = tmp_path / "build"
    build.mkdir()
    manifest = {
        "sources": {
            "probe_package.probe": {"path": str(source.resolve()), "sha256": compiled.source_digest(source)}
        },
        "binaries": {"probe_package.probe": "probe_package/probe.so", "probe__mypyc": "probe__mypyc.so"},
    }
    (build / compiled.MANIFEST).write_text(json.dumps(manifest))
    return build


def _checkout(directory: Path) -> Path:
    package = directory / "probe_package"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source = package / "probe.py"
    source.write_text("ANSWER = 42\n")
    return source


def test_a_module_compiled_from_its_source_is_imported_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _checkout(tmp_path / "checkout")
    monkeypatch.syspath_prepend(str(tmp_path / "checkout"))
    build = _build(tmp_path, source)
    finder = compiled.CompiledModules(build)
    spec = finder.find_spec("probe_package.probe", None)
    assert spec is not None and spec.origin == str(build / "probe_package" / "probe.so")
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    library = finder.find_spec("probe__mypyc", None)  # mypyc's shared library of the group
    assert library is not None and library.origin == str(build / "probe__mypyc.so")
    assert finder.find_spec("probe_package", None) is None  # what was not compiled
    assert "probe_package" not in sys.modules  # deciding imported nothing


def test_a_subpackage_installed_on_the_path_is_found_in_its_parent_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the image, where the project is installed in site-packages (not editable): a module
    of a subpackage (``eventline_shared.streams.entries``) is found in its parent package's
    directory, not as a top-level name on ``sys.path``."""
    installed = tmp_path / "site-packages"
    _checkout(installed)
    subpackage = installed / "probe_package" / "streams"
    subpackage.mkdir()
    (subpackage / "__init__.py").write_text("")
    source = subpackage / "entries.py"
    source.write_text("ANSWER = 42\n")
    monkeypatch.syspath_prepend(str(installed))
    assert compiled.source_of("probe_package.streams.entries") == source
    build = tmp_path / "build"
    build.mkdir()
    manifest = {
        "sources": {
            "probe_package.streams.entries": {
                "path": str(source.resolve()),
                "sha256": compiled.source_digest(source),
            }
        },
        "binaries": {"probe_package.streams.entries": "probe_package/streams/entries.so"},
    }
    (build / compiled.MANIFEST).write_text(json.dumps(manifest))
    assert compiled.CompiledModules(build).find_spec("probe_package.streams.entries", None) is not None
    assert compiled.source_of("probe_package.absent.entries") is None
    assert "probe_package" not in sys.modules


def test_a_source_changed_since_it_was_compiled_is_imported_from_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _checkout(tmp_path / "checkout")
    monkeypatch.syspath_prepend(str(tmp_path / "checkout"))
    build = _build(tmp_path, source)
    source.write_text("ANSWER = 43\n")
    finder = compiled.CompiledModules(build)
    assert finder.find_spec("probe_package.probe", None) is None
    assert finder.find_spec("probe__mypyc", None) is None  # all of the group or none
    assert "changed since its module was compiled" in capsys.readouterr().err


def test_another_checkout_first_on_the_path_is_imported_from_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark runs another checkout's services with this environment (``--service-path``):
    its modules, not this build of this checkout's."""
    build = _build(tmp_path, _checkout(tmp_path / "checkout"))
    _checkout(tmp_path / "other")
    monkeypatch.syspath_prepend(str(tmp_path / "checkout"))
    monkeypatch.syspath_prepend(str(tmp_path / "other"))
    assert compiled.CompiledModules(build).find_spec("probe_package.probe", None) is None
    assert capsys.readouterr().err == ""


def test_install_without_a_build_changes_nothing(tmp_path: Path) -> None:
    finders = list(sys.meta_path)
    compiled.install(str(tmp_path))
    assert sys.meta_path == finders


def test_install_twice_installs_one_finder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .pth file runs once per path of site-packages (lib and its link lib64)."""
    build = _build(tmp_path, _checkout(tmp_path / "checkout"))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    compiled.install(str(build))
    compiled.install(str(build))
    assert [getattr(finder, "directory", None) for finder in sys.meta_path].count(build) == 1
