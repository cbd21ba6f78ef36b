"""Compile the hot modules with mypyc into build/mypyc/ and have this virtual environment import
them (``eventline_shared.compiled``; docs/performance.md, "Compiled hot modules").

Run by ``make`` after installing the project (``make`` runs it again whenever one of the modules
changes). The modules are typed under ``mypy --strict`` already: mypyc compiles the same sources,
with the project's mypy configuration. Without a C compiler or Python's headers it says so and
leaves the modules interpreted (exit status 0; 1 under CI, whose tests must run the compiled
modules).

The image (Dockerfile) installs the project (not editable) and runs this with ``--installed``
in its build stage: the manifest then names the installed sources, in site-packages, which it
checks are the files compiled, byte for byte, and the ``.pth`` file runs the installed finder. Its
final stage installs the same sources at the same paths and copies only the build and the ``.pth``
file; a failure to compile fails the build.

Usage: python scripts/compile_modules.py [--sources | --installed]
  (``--sources``: print the modules' files, for make)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mypyc"
COMPILED = ROOT / "libs" / "eventline_shared" / "compiled.py"
PTH = "eventline_compiled.pth"
GROUP = "eventline_compiled"
"""mypyc's shared library of the modules: ``eventline_compiled__mypyc``."""
MODULES = {
    # Segmentation's real-time evaluation: the forecast, the answer from a row, and what they use
    # of the filter language (docs/performance.md).
    "eventline_predicates.filters": "libs/eventline_predicates/filters.py",
    "eventline_predicates.periods": "libs/eventline_predicates/periods.py",
    "eventline_predicates.evaluation": "libs/eventline_predicates/evaluation.py",
    "eventline_segmentation.transitions": "services/segmentation/eventline_segmentation/transitions.py",
    "eventline_segmentation.evaluation": "services/segmentation/eventline_segmentation/evaluation.py",
    # Ingestion's batch path per event: validation, the context's encoding, the stored event's
    # bytes, its stream entry and the storing statement's columns (issue 16's tenth round).
    "eventline_shared.values": "libs/eventline_shared/values.py",
    "eventline_shared.streams.entries": "libs/eventline_shared/streams/entries.py",
    "eventline_ingestion.validation": "services/ingestion/eventline_ingestion/validation.py",
    "eventline_ingestion.stored_form": "services/ingestion/eventline_ingestion/stored_form.py",
}


def compile_modules(installed: bool) -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    from eventline_shared.compiled import MANIFEST, source_digest

    # Built beside the current build, which replaces it whole at the end: a process starting
    # meanwhile imports the current one (or the sources), never half of a build.
    new = BUILD.with_name(BUILD.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    sources = {module: ROOT / path for module, path in MODULES.items()}
    digests = {module: source_digest(path) for module, path in sources.items()}
    if installed:
        sources = {module: installed_source(module, digests[module]) for module in MODULES}
    os.chdir(ROOT)  # mypyc reads the project's mypy configuration (pyproject.toml) from here
    extensions = mypycify(list(MODULES.values()), opt_level="3", target_dir=str(new / "c"), group_name=GROUP)
    build_ext = Distribution({"name": GROUP, "ext_modules": extensions}).get_command_obj("build_ext")
    build_ext.build_lib = str(new / "lib")
    build_ext.build_temp = str(new / "temp")
    build_ext.ensure_finalized()
    build_ext.run()
    manifest = {
        "sources": {
            module: {"path": str(path.resolve()), "sha256": digests[module]}
            for module, path in sources.items()
        },
        "binaries": {ext.name: build_ext.get_ext_filename(ext.name) for ext in extensions},
    }
    # Only what each source was when compiling began is recorded: a source edited meanwhile is
    # then stale, and interpreted.
    (new / "lib" / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(BUILD, ignore_errors=True)
    new.rename(BUILD)


def installed_source(module: str, digest: str) -> Path:
    """The installed file an import of ``module`` runs, which must be its compiled source unchanged."""
    from eventline_shared.compiled import source_digest, source_of

    found = source_of(module)
    if found is None or found.resolve().is_relative_to(ROOT):
        raise RuntimeError(f"{module} is not installed apart from this checkout: {found}")
    if source_digest(found) != digest:
        raise RuntimeError(f"{found} is not the source compiled for {module}")
    return found


def main() -> None:
    if sys.argv[1:] == ["--sources"]:
        print(" ".join(MODULES.values()))
        return
    installed = sys.argv[1:] == ["--installed"]
    pth = Path(sysconfig.get_paths()["purelib"]) / PTH
    try:
        compile_modules(installed)
    except (Exception, SystemExit) as failure:  # distutils reports a compiler's failure by exiting
        pth.unlink(missing_ok=True)
        shutil.rmtree(BUILD, ignore_errors=True)
        print(f"compile_modules: not compiled, the modules stay interpreted: {failure!r}", file=sys.stderr)
        sys.exit(1 if installed or os.environ.get("CI") else 0)
    # Run at every start of this environment's Python: the finder, from this checkout by its path
    # (not imported: another checkout's code may come first on PYTHONPATH), while it is there; for
    # an installed project, the installed finder.
    finder, build = str(COMPILED), str(BUILD / "lib")
    if installed:
        from eventline_shared.compiled import source_digest

        finder = str(installed_source("eventline_shared.compiled", source_digest(COMPILED)).resolve())
    pth.write_text(
        f"import os, runpy; os.path.isfile({finder!r}) and runpy.run_path({finder!r})['install']({build!r})\n"
    )
    print(f"compile_modules: {len(MODULES)} modules compiled into {BUILD / 'lib'}")


if __name__ == "__main__":
    main()
