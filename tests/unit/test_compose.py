"""docker-compose.yml and the Dockerfile, checked without a container engine.

CI has no Docker daemon (and the docker CLI has no compose plugin there), so the
structure is checked here: what the compose spec requires, plus our own rules:
one image for the three services and the gateway, health checks everywhere, Redis with
its append-only file, configuration through known environment variables only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"ingestion": 50051, "segmentation": 50052, "campaigns": 50053}
GATEWAY_PORT = 8080
TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
    "depends_on", "healthcheck", "restart", "stop_grace_period", "stop_signal", "networks", "labels",
    "user", "working_dir", "deploy", "logging", "profiles",
}  # fmt: skip
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def known_variables() -> set[str]:
    """Every EVENTLINE_* name the code mentions (including EVENTLINE_<SERVICE>_ patterns)."""
    names: set[str] = set()
    for path in [*(ROOT / "libs").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        names.update(re.findall(r"EVENTLINE_[A-Z0-9_]+", path.read_text()))
    for service in [*SERVICES, "gateway"]:
        for suffix in ("HOST", "PORT", "DB_POOL_SIZE", "METRICS_PORT"):
            names.add(f"EVENTLINE_{service.upper()}_{suffix}")
    return names


def test_the_file_has_only_compose_keys_and_every_service_is_complete() -> None:
    document = compose()
    assert {key for key in document if not key.startswith("x-")} <= TOP_LEVEL  # x-* are extensions
    services = document["services"]
    assert set(services) == {"postgres", "redis", "gateway", *SERVICES}
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        check = service["healthcheck"]["test"]
        assert check[0] in {"CMD", "CMD-SHELL"} and len(check) > 1, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in (document.get("volumes") or {}), (name, volume)


def test_one_image_runs_the_three_services_after_healthy_dependencies() -> None:
    services = compose()["services"]
    images = {services[name]["image"] for name in [*SERVICES, "gateway"]}
    assert len(images) == 1
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"]
    for name, port in SERVICES.items():
        service = services[name]
        assert service["build"] == "."
        assert service["command"] == ["python", "-m", f"eventline_{name}"]
        assert f"eventline_{name}" in package_dirs
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert set(condition["condition"] for condition in service["depends_on"].values()) <= CONDITIONS
        assert f"{port}:{port}" in service["ports"]
        assert service["healthcheck"]["test"] == ["CMD", "eventline", "health", f"127.0.0.1:{port}"]
        env = service["environment"]
        assert env[f"EVENTLINE_{name.upper()}_PORT"] == str(port)
        assert env[f"EVENTLINE_{name.upper()}_HOST"] == "0.0.0.0"


def test_the_gateway_calls_the_three_services_and_is_checked_over_http() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["build"] == "." and gateway["command"] == ["python", "-m", "eventline_gateway"]
    env = gateway["environment"]
    assert set(env) <= known_variables(), set(env) - known_variables()
    assert all(isinstance(value, str) for value in env.values())
    assert env["EVENTLINE_GATEWAY_HOST"] == "0.0.0.0" and env["EVENTLINE_GATEWAY_PORT"] == str(GATEWAY_PORT)
    for name, port in SERVICES.items():
        assert env[f"EVENTLINE_{name.upper()}_ADDR"] == f"{name}:{port}"
    assert f"{GATEWAY_PORT}:{GATEWAY_PORT}" in gateway["ports"]
    assert gateway["healthcheck"]["test"] == [
        "CMD",
        "eventline",
        "health",
        f"http://127.0.0.1:{GATEWAY_PORT}",
    ]
    # It keeps no state: no database, no Redis, no volume.
    assert "EVENTLINE_DATABASE_URL" not in env and "volumes" not in gateway


def test_configuration_is_environment_with_known_variables() -> None:
    services = compose()["services"]
    known = known_variables()
    postgres_env = services["postgres"]["environment"]
    for name in SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict)
        assert all(isinstance(value, str) for value in env.values()), "quote numbers: compose wants strings"
        assert set(env) <= known, set(env) - known
        url = env["EVENTLINE_DATABASE_URL"]
        assert url == (
            f"postgresql://{postgres_env['POSTGRES_USER']}:{postgres_env['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres_env['POSTGRES_DB']}"
        )
        assert env["EVENTLINE_REDIS_URL"].startswith("redis://redis:6379/")


def test_redis_keeps_its_stream_across_restarts() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_the_dockerfile_copies_what_the_package_needs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    for source in sources:
        assert (ROOT / source).exists(), source
    for needed in ("pyproject.toml", "README.md", "libs", "services", "clients/python"):
        assert needed in sources
    # The generated code's distribution (eventline-api) is installed in the same pip run.
    assert re.search(r"^RUN pip install \./clients/python \.", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".eventline" in ignored and ".git" in ignored


@pytest.mark.slow
def test_the_image_install_contains_every_service_and_the_cli(tmp_path: Path) -> None:
    """`RUN pip install .` after the Dockerfile's COPY lines: build that context's wheel, check its contents."""
    context = tmp_path / "context"
    context.mkdir()
    for line in re.findall(r"^COPY (.+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            if (ROOT / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules")
                shutil.copytree(ROOT / source, context / source, ignore=ignore)
            else:
                shutil.copy(ROOT / source, context / source)
    wheel_command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        "dist",
    ]
    result = subprocess.run(
        [*wheel_command, "./clients/python", "."],  # both distributions, as the Dockerfile installs them
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = (context / "dist").glob("eventline-0*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        assert "eventline = eventline_cli.main:cli" in archive.read(entry_points).decode()
        metadata = archive.read(next(name for name in names if name.endswith("METADATA"))).decode()
        assert "Requires-Dist: eventline-api==" in metadata
    for name in [*SERVICES, "gateway"]:
        assert f"eventline_{name}/__main__.py" in names
    assert "eventline_gateway/openapi.json" in names  # served at /openapi.json
    migrations = {path.name for path in (ROOT / "libs/eventline_shared/migrations").glob("*.sql")}
    assert {f"eventline_shared/migrations/{migration}" for migration in migrations} <= names
    # The generated code ships once, in eventline-api, not again in the services' wheel.
    assert not any(name.startswith("eventline/") for name in names)
    [api_wheel] = (context / "dist").glob("eventline_api-*.whl")
    with zipfile.ZipFile(api_wheel) as archive:
        api_names = set(archive.namelist())
    assert {
        "eventline/ingestion/v1/ingestion_pb2.py",
        "eventline/ingestion/v1/ingestion_pb2.pyi",
    } <= api_names
    assert "eventline_client/__init__.py" in api_names
