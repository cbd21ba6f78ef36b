"""The gateway's routes from the protos' annotations, and HTTP requests turned into gRPC requests."""

from __future__ import annotations

from typing import Any

import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.protobuf import json_format
from google.rpc import code_pb2

from eventline_gateway.backends import SERVICES
from eventline_gateway.errors import HttpError
from eventline_gateway.routes import PathTemplate, TemplateError, Variable, service_bindings
from eventline_gateway.transcoder import Route, Transcoder


@pytest.fixture(scope="module")
def transcoder() -> Transcoder:
    routes = [
        Route(binding, backend, call=None)
        for backend, service in SERVICES.items()
        for binding in service_bindings(service)
    ]
    return Transcoder(routes)


def build(transcoder: Transcoder, method: str, path_and_query: str, body: Any = None) -> Any:
    """The gRPC request of an HTTP request (``body`` as JSON)."""
    import json

    from yarl import URL

    url = URL(path_and_query, encoded=True)
    route, match = transcoder.match(method, url.raw_path)
    raw = json.dumps(body).encode() if body is not None else b""
    return route.request(match, url.query, raw)


def refusal(transcoder: Transcoder, method: str, path: str, body: Any = None) -> HttpError:
    with pytest.raises(HttpError) as error:
        build(transcoder, method, path, body)
    return error.value


def test_templates_parse_as_the_grammar_says() -> None:
    template = PathTemplate.parse("/v1/{name=projects/*/items/**}:undo")
    assert template.segments == ("v1", Variable(("name",), ("projects", "*", "items", "**")))
    assert template.verb == "undo"
    assert template.pattern().fullmatch("/v1/projects/p1/items/a/b/c:undo")
    assert not template.pattern().fullmatch("/v1/projects/p1/things/a:undo")
    nested = PathTemplate.parse("/v1/customers/{customer.customer_id}")
    assert nested.variables[0].field_path == ("customer", "customer_id")
    assert nested.openapi_path() == "/v1/customers/{customer.customer_id}"
    for bad in ("v1/x", "/v1/{a", "/v1/{a={b}}", "/v1/**/**", "/v1/x:", "/v1//x", "/v1/{1a}"):
        with pytest.raises(TemplateError):
            PathTemplate.parse(bad)


def test_every_annotated_rpc_is_a_route_and_no_two_share_a_method_and_path(transcoder: Transcoder) -> None:
    bound = {route.binding.rpc for route in transcoder.routes}
    assert "/eventline.ingestion.v1.IngestionService/TrackEvents" in bound
    assert "/eventline.campaigns.v1.CampaignService/ListDeliveries" in bound
    # Writes of campaigns stay on gRPC; streams have no HTTP binding.
    assert "/eventline.campaigns.v1.CampaignService/CreateCampaign" not in bound
    assert "/eventline.segmentation.v1.SegmentationService/StreamCustomers" not in bound
    keys = [(r.binding.http_method, r.binding.template.openapi_path()) for r in transcoder.routes]
    assert len(keys) == len(set(keys))
    assert sum(r.binding.rpc.endswith("/ListDeliveries") for r in transcoder.routes) == 3


def test_paths_match_on_their_raw_text_and_values_are_decoded(transcoder: Transcoder) -> None:
    # An encoded ':' or '/' belongs to the value: it never passes for a verb or a separator.
    request = build(transcoder, "POST", "/v1/customers/shop%3Ac%2F42/events", {"eventId": "e1", "name": "x"})
    assert request.customer_id == "shop:c/42"
    erase = build(transcoder, "POST", "/v1/customers/a%3Aerase:erase")
    assert isinstance(erase, ingestion_pb2.EraseCustomerRequest) and erase.customer_id == "a:erase"
    # The same path, method by method.
    assert isinstance(build(transcoder, "GET", "/v1/customers/c1"), ingestion_pb2.GetCustomerRequest)
    upsert = build(transcoder, "PATCH", "/v1/customers/c1?updateMask=email,attributes", {"email": "a@b.c"})
    assert upsert.customer.customer_id == "c1" and upsert.customer.email == "a@b.c"
    assert list(upsert.update_mask.paths) == ["email", "attributes"]
    # Unicode, percent-encoded as UTF-8.
    assert build(transcoder, "GET", "/v1/customers/%C3%A9l%C3%A8ve").customer_id == "élève"


def test_unknown_paths_are_404_and_other_methods_405_with_allow(transcoder: Transcoder) -> None:
    missing = refusal(transcoder, "GET", "/v1/nothing/here")
    assert missing.http_status == 404 and missing.status.code == code_pb2.NOT_FOUND
    wrong = refusal(transcoder, "DELETE", "/v1/customers/c1/events")
    assert wrong.http_status == 405 and wrong.headers["Allow"] == "POST"
    assert refusal(transcoder, "PUT", "/v1/segments/s1").headers["Allow"] == "DELETE, GET, PATCH"
    bad_utf8 = refusal(transcoder, "GET", "/v1/customers/%FF")
    assert bad_utf8.http_status == 400 and violations(bad_utf8) == {"customer_id"}


def violations(error: HttpError) -> set[str]:
    from google.rpc import error_details_pb2

    fields: set[str] = set()
    for detail in error.status.details:
        found = error_details_pb2.BadRequest()
        assert detail.Unpack(found)
        fields |= {v.field for v in found.field_violations}
    return fields


def test_query_parameters_fill_the_fields_the_path_and_body_leave(transcoder: Transcoder) -> None:
    request = build(
        transcoder,
        "GET",
        "/v1/customers/c1/timeline?pageSize=20&event_names=a&eventNames=b&occurredAfter=2024-01-15T09:30:00Z"
        "&occurred_before=2024-02-01T00:00:00.5%2B01:00&pageToken=t%2Bk",
    )
    assert request.page_size == 20 and list(request.event_names) == ["a", "b"]
    assert request.occurred_after.ToJsonString() == "2024-01-15T09:30:00Z"
    assert request.occurred_before.ToJsonString() == "2024-01-31T23:00:00.500Z"
    assert request.page_token == "t+k"
    states = build(
        transcoder, "GET", "/v1/campaigns?states=CAMPAIGN_STATE_ACTIVE&states=CAMPAIGN_STATE_PAUSED"
    )
    assert list(states.states) == [campaigns_pb2.CAMPAIGN_STATE_ACTIVE, campaigns_pb2.CAMPAIGN_STATE_PAUSED]
    by_event = build(transcoder, "GET", "/v1/events/order%3A1/deliveries?pageSize=5")
    assert by_event.event_id == "order:1" and by_event.WhichOneof("parent") == "event_id"


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/customers/c1/timeline?limit=3", None, "limit"),
        ("GET", "/v1/customers/c1/timeline?pageSize=ten", None, "page_size"),
        ("GET", "/v1/customers/c1/timeline?pageSize=1&pageSize=2", None, "page_size"),
        ("GET", "/v1/customers/c1/timeline?customerId=c2", None, "customerId"),
        ("GET", "/v1/customers/c1/timeline?occurredAfter=yesterday", None, "occurred_after"),
        ("GET", "/v1/campaigns?states=ACTIVE", None, "states[0]"),
        ("GET", "/v1/campaigns/c1/deliveries?customerId=x", None, "customer_id"),
        ("POST", "/v1/events:batchTrack?x=1", {"events": []}, "x"),
        (
            "POST",
            "/v1/segments/s1/size",
            {"bindings": {"k": {"integerValue": "x"}}},
            'bindings["k"].integer_value',
        ),
        ("PATCH", "/v1/segments/s1?segment.displayName=x", {}, "segment.displayName"),
        ("POST", "/v1/customers/c1/events", [1, 2], ""),
        ("POST", "/v1/customers/c1/events", {"nme": "x"}, "nme"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    transcoder: Transcoder, method: str, path: str, body: Any, field: str
) -> None:
    error = refusal(transcoder, method, path, body)
    assert error.http_status == 400 and error.status.code == code_pb2.INVALID_ARGUMENT
    assert violations(error) == {field}, json_format.MessageToDict(error.status)


def test_a_body_that_is_not_json_is_400(transcoder: Transcoder) -> None:
    from yarl import URL

    route, match = transcoder.match("POST", "/v1/systemEvents")
    for raw in (b"{", b"\xff\xfe", b"[" * 100_000, b'{"eventId": NaN}'):
        with pytest.raises(HttpError) as error:
            route.request(match, URL("/").query, raw)
        assert error.value.http_status == 400, raw[:20]
    assert route.request(match, URL("/").query, b"  ") == ingestion_pb2.TrackSystemEventRequest()
