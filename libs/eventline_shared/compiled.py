"""Compiled hot modules: mypyc's extension modules of a few of the project's own modules, imported
in place of those modules' sources only while they were built from exactly those sources.

``scripts/compile_modules.py`` (run by ``make``) compiles the modules it lists with mypyc into a
build directory outside the source tree, with a manifest of each source's path and SHA-256, and
writes a ``.pth`` file into the virtual environment that calls ``install`` at every start. The
sources stay the truth: a module is imported compiled only when every compiled module's source
that an import would find is the file it was built from, unchanged (one group: compiled modules
call each other natively, so either all are compiled or none). Otherwise, and wherever nothing was
compiled (no C compiler, the image, another checkout's code first on ``PYTHONPATH``), the sources
are imported as usual. docs/performance.md ("Compiled hot modules") has the figures.

This module runs from the ``.pth`` file (by path, before anything of the project is imported):
it imports nothing of the project.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MANIFEST = "manifest.json"
"""The build directory's record: ``{"sources": {module: {"path", "sha256"}}, "binaries": {module:
file relative to the build directory}}`` (the binaries include mypyc's shared library)."""


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CompiledModules(importlib.abc.MetaPathFinder):
    """Finds the compiled modules of one build directory while their sources are unchanged."""

    def __init__(self, directory: Path) -> None:
        manifest = json.loads((directory / MANIFEST).read_text())
        self.directory = directory
        self.sources: dict[str, dict[str, str]] = manifest["sources"]
        self.binaries: dict[str, str] = manifest["binaries"]
        self._current: bool | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        binary = self.binaries.get(fullname)
        if binary is None or not self.current():
            return None
        file = str(self.directory / binary)
        return importlib.machinery.ModuleSpec(
            fullname, importlib.machinery.ExtensionFileLoader(fullname, file), origin=file
        )

    def current(self) -> bool:
        """Whether every compiled module's source, where an import would find it, is the file it
        was built from, unchanged (worked out once per process)."""
        if self._current is None:
            stale = [module for module, built in self.sources.items() if not self._same(module, built)]
            self._current = not stale
        return self._current

    def _same(self, module: str, built: dict[str, str]) -> bool:
        found = self._source_of(module)
        if found is None or found.resolve() != Path(built["path"]):
            return False  # another checkout's code comes first: it is not what was compiled
        if source_digest(found) != built["sha256"]:
            print(
                f"eventline: {found} changed since its module was compiled: running every module "
                "from its source (`make` compiles them again)",
                file=sys.stderr,
            )
            return False
        return True

    def _source_of(self, module: str) -> Path | None:
        return source_of(module, skip=self)


def source_of(module: str, skip: object = None) -> Path | None:
    """The file an import of ``module`` would run, found by the finders of ``sys.meta_path`` (but
    ``skip``) without importing anything: each package from its parent's directories, as an
    import walks them (an installed package's subpackage is found in its parent's directory, not
    on ``sys.path``), then the module's file in its package's."""
    package, _, name = module.rpartition(".")
    directories = _package_directories(package, skip)
    for directory in directories or ():
        source = Path(directory) / f"{name}.py"
        if source.is_file():
            return source
    return None


def _package_directories(package: str, skip: object) -> Sequence[str] | None:
    parent, _, _ = package.rpartition(".")
    search: Sequence[str] | None = None
    if parent:
        search = _package_directories(parent, skip)
        if search is None:
            return None
    for finder in sys.meta_path:
        if finder is skip:
            continue
        spec = finder.find_spec(package, search)
        if spec is not None:
            return spec.submodule_search_locations
    return None


def install(directory: str) -> None:
    """Import the compiled modules of ``directory`` (a build of ``scripts/compile_modules.py``)
    in place of their sources while those are unchanged; nothing when it holds no build."""
    path = Path(directory)
    if not (path / MANIFEST).is_file():
        return
    # Not by class: each run of the .pth file (once per path of site-packages: a virtual
    # environment's lib64 is a link to lib) defines the class anew.
    if not any(getattr(finder, "directory", None) == path for finder in sys.meta_path):
        sys.meta_path.insert(0, CompiledModules(path))


def report() -> int:
    """Imports every compiled module of the installed build and prints where each came from:
    0 when all run compiled, 1 otherwise (``python -m eventline_shared.compiled``; the image's
    build runs it)."""
    # By their attributes: the finder the .pth file installed is of another run's class.
    builds = [vars(finder) for finder in sys.meta_path if "sources" in getattr(finder, "__dict__", {})]
    if not builds:
        print("eventline: no compiled modules installed: every module runs from its source")
        return 1
    interpreted = 0
    for build in builds:
        for module in sorted(build["sources"]):
            file = importlib.import_module(module).__file__ or ""
            compiled = Path(file).is_relative_to(build["directory"])
            interpreted += not compiled
            print(f"{module}: {'compiled' if compiled else 'interpreted'} ({file})")
    return 1 if interpreted else 0


if __name__ == "__main__":
    sys.exit(report())
