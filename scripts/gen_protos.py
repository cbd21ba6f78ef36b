"""Regenerate the Python code for protos/ into libs/generated.

One script, so that the output is reproducible: CI runs it with --check and
fails when the committed code differs from what the protos produce.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
THIRD_PARTY = PROTOS / "third_party"
OUT = ROOT / "libs" / "generated"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "eventline").rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    # Packages need __init__.py so that setuptools and type checkers find them.
    for directory in [out / "eventline", *(out / "eventline").rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    changed = [str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)]
    return sorted(changed + [str(p) for p in files_a ^ files_b])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if libs/generated is stale")
    options = parser.parse_args()
    if options.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = differences(Path(tmp), OUT)
        if stale:
            sys.exit("generated code is stale, run `make protos`: " + ", ".join(stale))
        print("generated code is up to date")
        return
    shutil.rmtree(OUT / "eventline", ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    generate(OUT)


if __name__ == "__main__":
    main()
