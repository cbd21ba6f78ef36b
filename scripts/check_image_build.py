"""The Dockerfile's two stages run by hand, without a container engine: checks that the image runs
the hot modules compiled (README, "Compiled hot modules").

In a scratch directory: the build context (the Dockerfile's COPY lines), then the build stage's
steps in a fresh virtual environment of this Python (the project installed not editable, with the
``compile`` extra, and ``scripts/compile_modules.py --installed``); then that environment is
removed and the final stage's made at the same path (as both stages' site-packages are
/usr/local/lib/python3.11/site-packages): the project installed again, not editable, and only the
build stage's artefacts copied in (the build and the .pth file). There it checks that every
compiled module imports compiled (``python -m eventline_shared.compiled``), that mypy is absent,
that ingestion starts and serves (against PostgreSQL and Redis on 127.0.0.1: a scratch database,
dropped after), and that an edited installed source makes every module run from its source.

Minutes on a 2-core machine (two installs and a compile): not run by the tests nor CI.

Usage: python scripts/check_image_build.py [--keep]  (``--keep``: leave the scratch directory)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = re.compile(r"^FROM .*$", flags=re.MULTILINE)
PTH = "eventline_compiled.pth"


def run(command: list[str], cwd: Path, **env: str) -> str:
    started = time.monotonic()
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"  ok in {time.monotonic() - started:.0f} s", flush=True)
    return result.stdout


def stages() -> tuple[str, str, str]:
    """The Dockerfile's stages: the sources, the build stage, the final stage."""
    sources, build, final = STAGE.split((ROOT / "Dockerfile").read_text())[1:]
    return sources, build, final


def copy_context(stage: str, app: Path) -> None:
    """The stage's ``COPY`` lines from the build context (not ``--from``) into ``app`` (``/app``)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "node_modules")
    for line in re.findall(r"^COPY (?!--from)(.+)$", stage, flags=re.MULTILINE):
        *sources, target = line.split()
        target = target.removeprefix("/app").lstrip("/")
        for source in sources:
            destination = app / target / Path(source).name if line.endswith("/") else app / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, destination, ignore=ignore, dirs_exist_ok=True)
            else:
                shutil.copy(ROOT / source, destination)


def pip_installs(stage: str) -> list[list[str]]:
    """The stage's ``pip install`` arguments, as its RUN lines give them."""
    installs = re.findall(r"pip install ([^\n&\\]+)", stage)
    return [[argument.strip("'\"") for argument in install.split()] for install in installs]


def venv(path: Path) -> tuple[Path, Path]:
    """A fresh virtual environment of this Python: its python and its site-packages."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return python, Path(purelib)


def serves(python: Path, app: Path) -> None:
    """Ingestion starts with the final stage's environment and serves, then stops on SIGTERM."""
    database = f"image_check_{uuid.uuid4().hex[:8]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]
    subprocess.run([*psql, f"CREATE DATABASE {database}"], check=True)
    try:
        env = {
            **os.environ,
            "EVENTLINE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
            "EVENTLINE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "EVENTLINE_INGESTION_PORT": "0",
        }
        service = subprocess.Popen(
            [str(python), "-m", "eventline_ingestion"], cwd=app, env=env, stderr=subprocess.PIPE, text=True
        )
        assert service.stderr is not None
        lines = []
        deadline = time.monotonic() + 120
        for line in service.stderr:
            lines.append(line)
            if "ingestion serving" in line or time.monotonic() > deadline:
                break
        time.sleep(2)  # its handler of SIGTERM is set once it serves
        service.send_signal(signal.SIGTERM)
        lines.extend(service.stderr)
        status = service.wait(timeout=60)
        if not any("ingestion serving" in line for line in lines) or status != 0:
            sys.exit(f"ingestion did not serve then stop (status {status}):\n{''.join(lines)}")
        print("  ingestion served, then stopped on SIGTERM (status 0)", flush=True)
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], check=True)


def main() -> None:
    sources, build_stage, final_stage = stages()
    scratch = Path(tempfile.mkdtemp(prefix="eventline-image-"))
    app, environment, artefacts = scratch / "app", scratch / "venv", scratch / "artefacts"
    try:
        # The build stage.
        copy_context(sources, app)
        copy_context(build_stage, app)
        python, purelib = venv(environment)
        for install in pip_installs(build_stage):
            run([str(python), "-m", "pip", "install", "-q", *install], app)
        run([str(python), "scripts/compile_modules.py", "--installed"], app)
        built = app / "build" / "mypyc" / "lib"
        shutil.copytree(built, artefacts / "lib")
        shutil.copy(purelib / PTH, artefacts / PTH)

        # The final stage: a new context, a new environment at the same path, the artefacts.
        shutil.rmtree(app)
        copy_context(sources, app)
        copy_context(final_stage, app)
        python, purelib = venv(environment)
        for install in pip_installs(final_stage):
            run([str(python), "-m", "pip", "install", "-q", *install], app)
        copied = re.findall(r"^COPY --from=\S+ (.+)$", final_stage, flags=re.MULTILINE)
        assert len(copied) == 3, copied  # the sources, the build and the .pth file, nothing else
        shutil.copytree(artefacts / "lib", built)
        shutil.copy(artefacts / PTH, purelib / PTH)

        report = run([str(python), "-m", "eventline_shared.compiled"], app)
        print(report, end="")
        files = run(
            [
                str(python),
                "-c",
                "import eventline_ingestion.validation as v, eventline_segmentation.transitions as t; "
                "print(v.__file__); print(t.__file__)",
            ],
            app,
        ).split()
        assert all(file.endswith(".so") for file in files), files
        absent = subprocess.run([str(python), "-c", "import mypy"], capture_output=True, check=False)
        assert absent.returncode != 0, "mypy is in the final stage"
        serves(python, app)

        # An installed source edited: every module runs from its source, with a line on stderr.
        source = purelib / "eventline_ingestion" / "validation.py"
        source.write_text(source.read_text() + "\n# edited\n")
        edited = subprocess.run(
            [str(python), "-m", "eventline_shared.compiled"], cwd=app, capture_output=True, text=True
        )
        assert edited.returncode == 1 and "changed since its module was compiled" in edited.stderr, edited
        assert "validation: interpreted" in edited.stdout, edited.stdout
        print("  an edited installed source: every module from its source", flush=True)
        print(f"the image's stages check out ({sysconfig.get_python_version()})")
    finally:
        if "--keep" in sys.argv[1:]:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
