"""Prove the ``eventline-api`` distribution stands alone (CI runs this).

Builds its wheel, installs it into an empty virtual environment and checks that
- nothing but grpcio, protobuf and googleapis-common-protos (and what they need) came along;
- the generated modules, their ``.pyi`` stubs and the client import there;
- the hand-written client passes ``mypy --strict`` against the installed package, with the
  grpcio and protobuf type stubs (installed after the dependency check). The stubs live in
  that environment only: the services' own type check treats grpc as untyped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "python"
ALLOWED = {"eventline-api", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions"}
"""What installing the wheel may bring: itself, its three dependencies and grpcio's own."""
TYPE_CHECK = ["mypy>=1.11", "types-grpcio", "types-protobuf"]
SMOKE = """
import datetime as dt
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline_client import AsyncClient, Client, CustomerEvent, to_value
item = CustomerEvent("c1", "order_placed", {"total": 1.5}, dt.datetime(2024, 1, 1, tzinfo=dt.UTC)).item("e1")
assert item.customer_event.context["total"].decimal_value == "1.5", item
assert hasattr(ingestion_pb2_grpc, "IngestionServiceStub")
print("imports ok")
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def distributions(python: Path) -> set[str]:
    listed = json.loads(run(python, "-m", "pip", "list", "--format=json"))
    return {str(entry["name"]).lower().replace("_", "-") for entry in listed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="build in this directory and keep it")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = options.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            PACKAGE,
            "-w",
            work,
        )
        [wheel] = work.glob("eventline_api-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        for needed in (
            "eventline/ingestion/v1/ingestion_pb2.py",
            "eventline/ingestion/v1/ingestion_pb2.pyi",
            "eventline/ingestion/v1/ingestion_pb2_grpc.py",
            "eventline/py.typed",
            "eventline_client/client.py",
            "eventline_client/py.typed",
        ):
            if needed not in names:
                sys.exit(f"{wheel.name} lacks {needed}")
        venv = work / "venv"
        run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        before = distributions(python)
        run(python, "-m", "pip", "install", "-q", wheel)
        installed = distributions(python) - before
        if extra := installed - ALLOWED:
            sys.exit(f"installing {wheel.name} brought more than its declared dependencies: {sorted(extra)}")
        print(run(python, "-c", SMOKE, cwd=work).strip())
        run(python, "-m", "pip", "install", "-q", *TYPE_CHECK)
        print(
            run(
                python,
                "-m",
                "mypy",
                "--config-file",
                PACKAGE / "pyproject.toml",
                "-p",
                "eventline_client",
                cwd=work,
            ).strip()
        )
        print(f"{wheel.name}: installs alone ({', '.join(sorted(installed))}) and type-checks strictly")


if __name__ == "__main__":
    main()
