"""Regenerate the client code for protos/: Python and TypeScript.

- Python (grpcio-tools): messages, stubs and ``.pyi`` into ``clients/python/src/eventline``,
  the generated half of the ``eventline-api`` distribution.
- TypeScript (buf with protoc-gen-es, clients/typescript/buf.gen.yaml): messages and
  service descriptors into ``clients/typescript/src/gen``.
- OpenAPI: the HTTP/JSON API the gateway transcodes, from the ``google.api.http``
  annotations and the comments, into ``services/gateway/eventline_gateway/openapi.json``
  (served by the gateway at ``/openapi.json``).

One script, so that the output is reproducible: CI runs it with --check and fails when
the committed code differs from what the protos produce.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
THIRD_PARTY = PROTOS / "third_party"
PYTHON_OUT = ROOT / "clients" / "python" / "src"
TYPESCRIPT = ROOT / "clients" / "typescript"
TYPESCRIPT_TEMPLATE = TYPESCRIPT / "buf.gen.yaml"
TYPESCRIPT_OUT = Path("clients") / "typescript" / "src" / "gen"  # as buf.gen.yaml says, from ROOT
OPENAPI = ROOT / "services" / "gateway" / "eventline_gateway" / "openapi.json"


def _sources() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "eventline").rglob("*.proto"))


def _includes() -> list[str]:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return [f"-I{PROTOS}", f"-I{THIRD_PARTY}", f"-I{well_known}"]


def generate_python(out: Path) -> Path:
    """Write the Python package ``eventline`` under ``out``; returns its directory."""
    out.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    args = [
        "grpc_tools.protoc",
        *_includes(),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    package = out / "eventline"
    # Packages need __init__.py so that setuptools and type checkers find them; py.typed
    # tells type checkers of the package's users to read the .pyi stubs.
    for directory in [package, *package.rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()
    (package / "py.typed").touch()
    return package


def buf() -> str:
    """The buf of this environment (the buf-bin package), else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "buf"
    found = str(beside) if beside.exists() else shutil.which("buf")
    if found is None:
        sys.exit("buf is missing: install the project's dev dependencies (make test does)")
    return found


def generate_typescript(out_root: Path) -> Path:
    """Write the TypeScript code under ``out_root`` (buf's -o); returns its directory."""
    plugin = TYPESCRIPT / "node_modules" / ".bin" / "protoc-gen-es"
    if not plugin.exists():
        sys.exit(
            f"{plugin.relative_to(ROOT)} is missing: run `npm ci` in clients/typescript (make test does)"
        )
    result = subprocess.run(
        [buf(), "generate", "--template", str(TYPESCRIPT_TEMPLATE), "-o", str(out_root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"buf generate failed:\n{result.stdout}{result.stderr}")
    return out_root / TYPESCRIPT_OUT


def generate_openapi(out: Path) -> None:
    """Write the OpenAPI document of the gateway's HTTP/JSON API to ``out``."""
    from google.protobuf import descriptor_pb2

    from eventline_gateway import openapi

    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / "protos.pb"
        args = [
            "grpc_tools.protoc",
            *_includes(),
            f"--descriptor_set_out={descriptor_set}",
            "--include_imports",
            "--include_source_info",
            *_sources(),
            "google/rpc/error_details.proto",  # the details an error's Status holds
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    out.write_text(openapi.render(files))


def differences(a: Path, b: Path) -> list[str]:
    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    files_a, files_b = files(a), files(b)
    changed = [str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)]
    return sorted(changed + [str(p) for p in files_a ^ files_b])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed generated code is stale")
    options = parser.parse_args()
    if options.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh_python = generate_python(Path(tmp) / "python")
            fresh_typescript = generate_typescript(Path(tmp) / "typescript")
            fresh_openapi = Path(tmp) / "openapi.json"
            generate_openapi(fresh_openapi)
            stale = [f"python: {p}" for p in differences(fresh_python, PYTHON_OUT / "eventline")]
            stale += [f"typescript: {p}" for p in differences(fresh_typescript, ROOT / TYPESCRIPT_OUT)]
            if not OPENAPI.exists() or not filecmp.cmp(fresh_openapi, OPENAPI, shallow=False):
                stale.append(f"openapi: {OPENAPI.relative_to(ROOT)}")
        if stale:
            sys.exit("generated code is stale, run `make protos`: " + ", ".join(stale))
        print("generated code is up to date")
        return
    shutil.rmtree(PYTHON_OUT / "eventline", ignore_errors=True)
    PYTHON_OUT.mkdir(parents=True, exist_ok=True)
    generate_python(PYTHON_OUT)
    generate_typescript(ROOT)  # clean: true in the template empties the output directory first
    generate_openapi(OPENAPI)


if __name__ == "__main__":
    main()
