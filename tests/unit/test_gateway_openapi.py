"""The OpenAPI document: valid OpenAPI 3.0, and exactly what the gateway transcodes.

Its freshness against the protos is CI's ``scripts/gen_protos.py --check``; here the
checked-in file is held to the routes the gateway builds at start from the generated code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from yarl import URL

from eventline_gateway.backends import SERVICES
from eventline_gateway.errors import HttpError
from eventline_gateway.routes import service_bindings
from eventline_gateway.service import build_app, openapi_document, transcode
from eventline_gateway.settings import Settings
from eventline_gateway.transcoder import Route, Transcoder
from eventline_shared.observability.dependencies import DependencyMonitor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(openapi_document())
    return found


@pytest.fixture(scope="module")
def transcoder() -> Transcoder:
    return Transcoder(
        [
            Route(b, backend, call=None)
            for backend, service in SERVICES.items()
            for b in service_bindings(service)
        ]
    )


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.0")
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_its_operations_are_the_gateways_routes(document: dict[str, Any], transcoder: Transcoder) -> None:
    documented = {
        (method.upper(), path, operation["operationId"].split("_")[1].rstrip("23456789"))
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation["tags"] != ["Gateway"]
    }
    routed = {
        (r.binding.http_method, r.binding.template.openapi_path(), r.binding.method.name)
        for r in transcoder.routes
    }
    assert documented == routed


def test_the_gateways_own_routes_are_documented_as_it_serves_them(document: dict[str, Any]) -> None:
    """Callbacks and unsubscribe are no RPC: the document lists them beside the RPCs, each
    route the app serves (health and the document itself aside), with every provider."""
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation["tags"] == ["Gateway"]
    }
    app = build_app(
        Transcoder([]),
        DependencyMonitor([], interval_s=1),
        Settings.from_env({}),
        campaigns=None,
    )
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.handler is not transcode
        and route.method != "HEAD"
        and route.resource is not None
        and route.resource.canonical not in ("/healthz", "/readyz", "/openapi.json")
    }
    assert documented == served == {
        ("POST", "/v1/callbacks/{provider}"),
        ("GET", "/v1/unsubscribe/{token}"),
        ("POST", "/v1/unsubscribe/{token}"),
    }
    [provider] = [
        p for p in document["paths"]["/v1/callbacks/{provider}"]["post"]["parameters"] if p["name"] == "provider"
    ]
    assert provider["schema"]["enum"] == ["eventline", "mailgun", "twilio", "sendgrid", "postmark"]


def test_every_documented_parameter_is_one_the_gateway_takes(
    document: dict[str, Any], transcoder: Transcoder
) -> None:
    samples = {"string": "x", "integer": "1", "boolean": "true"}
    checked = 0
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            if operation["tags"] == ["Gateway"]:
                continue  # no RPC: the test above
            path = template
            query = []
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if parameter["in"] == "path":
                    path = path.replace("{" + parameter["name"] + "}", "v1")
                    continue
                kind = schema.get("items", schema)
                sample = kind["enum"][1] if "enum" in kind else samples.get(kind.get("type", "string"), "x")
                if kind.get("format") == "date-time":
                    sample = "2024-01-15T09:30:00Z"
                if kind.get("format") == "int64":
                    sample = "5"
                query.append((parameter["name"], sample))
            url = URL(path).with_query(query)
            route, match = transcoder.match(method.upper(), url.raw_path)
            assert route.binding.template.openapi_path() == template
            try:
                route.request(match, url.query, b"{}" if route.binding.body else b"")
            except HttpError as error:  # pragma: no cover - a failure shows the parameter
                pytest.fail(f"{method.upper()} {template}: {error.status.message}")
            checked += len(query)
    assert checked > 15


def test_descriptions_come_from_the_proto_comments(document: dict[str, Any]) -> None:
    track = document["paths"]["/v1/events:batchTrack"]["post"]
    assert (
        track["summary"]
        == "Stores up to 1,000 customer and system events in one call, with one result per item."
    )
    schemas = document["components"]["schemas"]
    request = schemas["eventline.ingestion.v1.TrackEventsRequest"]
    assert "1 to 1,000 events" in request["properties"]["events"]["description"]
    item = schemas["eventline.ingestion.v1.TrackEventsItem"]
    assert "At most one of `customerEvent`, `systemEvent`" in item["description"]
    body = schemas["eventline.ingestion.v1.IngestionService.TrackCustomerEventBody"]
    assert "customerId" not in body["properties"]  # set by the path
    assert schemas["google.rpc.Status"]["properties"]["details"]["type"] == "array"
    timeline = document["paths"]["/v1/customers/{customer_id}/timeline"]["get"]
    names = [p["name"] for p in timeline["parameters"]]
    assert names == ["customer_id", "pageSize", "pageToken", "eventNames", "occurredAfter", "occurredBefore"]
