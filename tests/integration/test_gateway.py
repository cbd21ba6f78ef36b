"""The HTTP/JSON gateway over real HTTP on loopback, with the real services behind it.

Every transcoded route is called with JSON and answers JSON; errors are google.rpc.Status
JSON with the HTTP status AIP-193 gives their code; API keys are checked by the services
the gateway forwards them to; health follows the backends.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from eventline_gateway.service import running as running_gateway
from eventline_gateway.settings import Settings as GatewaySettings
from eventline_shared.observability.logs import JsonFormatter
from eventline_shared.security import api_keys
from tests.certificates import Certificates
from tests.conftest import gateway_env, secured_suite, service_env
from tests.processes import free_port
from tests.support import wait_for_entries

ROOT = Path(__file__).resolve().parents[2]


class Http:
    """JSON over HTTP to one gateway: each call returns (status, JSON body, headers)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None = None) -> None:
        self.session = session
        self.base = base
        self.key = key

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Any]:
        sent = dict(headers or {})
        if self.key is not None:
            sent["Authorization"] = f"Bearer {self.key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=sent) as response:
            text = await response.read()
            assert response.content_type == "application/json", (response.status, text[:200])
            return response.status, json.loads(text), response.headers

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply, _ = await self.call(method, path, body)
        assert status == 200, reply
        return reply

    def keyed(self, key: str | None) -> Http:
        return Http(self.session, self.base, key)


@pytest.fixture
async def http(gateway_server: Any) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, f"http://127.0.0.1:{gateway_server.port}")


def field_violations(status: dict[str, Any]) -> dict[str, str]:
    """The BadRequest field violations of a google.rpc.Status in JSON, by field."""
    found: dict[str, str] = {}
    for detail in status["details"]:
        if detail["@type"] == "type.googleapis.com/google.rpc.BadRequest":
            found.update({v.get("field", ""): v["description"] for v in detail["fieldViolations"]})
    return found


def customer_event(event_id: str, name: str, **context: Any) -> dict[str, Any]:
    return {"eventId": event_id, "name": name, "context": context}


# --------------------------------------------------------------------------- ingestion


async def test_ingestion_over_http_tracks_upserts_reads_pages_and_erases(
    http: Http, db: asyncpg.Connection
) -> None:
    created = await http.ok(
        "PATCH",
        "/v1/customers/shop%3Ac42",
        {
            "email": "c42@example.com",
            "emailConsent": "CONSENT_GRANTED",
            "attributes": {"plan": {"stringValue": "pro"}},
        },
    )
    assert created["created"] is True and created["customer"]["customerId"] == "shop:c42"
    changed = await http.ok("PATCH", "/v1/customers/shop%3Ac42?updateMask=phone", {"phone": "+33600000000"})
    assert changed["created"] is False
    customer = (await http.ok("GET", "/v1/customers/shop%3Ac42"))["customer"]
    assert customer["email"] == "c42@example.com" and customer["phone"] == "+33600000000"
    assert customer["emailConsent"] == "CONSENT_GRANTED" and customer["pushTokens"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", customer["createdAt"])

    context = {
        "total": {"decimalValue": "59.90"},
        "items": {"integerValue": 3},
        "referrer": {"integerValue": "9007199254740993"},
        "gift": {"booleanValue": True},
        "shipped": {"timestampValue": "2024-01-15T09:30:00.250+01:00"},
    }
    body = {
        "eventId": "order-1",
        "name": "order_placed",
        "occurredAt": "2024-01-15T09:00:00Z",
        "context": context,
    }
    tracked = await http.ok("POST", "/v1/customers/shop%3Ac42/events", body)
    event = tracked["event"]
    assert tracked["deduplicated"] is False and event["kind"] == "EVENT_KIND_CUSTOMER"
    assert event["customerId"] == "shop:c42" and event["occurredAt"] == "2024-01-15T09:00:00Z"
    assert event["context"]["referrer"] == {"integerValue": "9007199254740993"}  # int64: a string, exact
    assert event["context"]["shipped"] == {"timestampValue": "2024-01-15T08:30:00.250Z"}
    again = await http.ok("POST", "/v1/customers/shop%3Ac42/events", body)
    assert again["deduplicated"] is True and again["event"] == event
    stored = await db.fetchval("SELECT context FROM customer_events WHERE event_id = 'order-1'")
    assert json.loads(stored)["referrer"] == 2**53 + 1

    system = await http.ok("POST", "/v1/systemEvents", {"eventId": "stock-1", "name": "item_in_stock"})
    assert system["event"]["kind"] == "EVENT_KIND_SYSTEM" and system["event"]["customerId"] == ""

    batch = await http.ok(
        "POST",
        "/v1/events:batchTrack",
        {
            "events": [
                {"customerEvent": {**customer_event("b1", "viewed"), "customerId": "shop:c42"}},
                {"customerEvent": {**customer_event("b2", "bad-name"), "customerId": "shop:c42"}},
                {"systemEvent": customer_event("b3", "sale_started")},
                {"customer_event": {**customer_event("order-1", "order_placed"), "customer_id": "shop:c42"}},
            ]
        },
    )
    results = batch["results"]
    assert [sorted(r) for r in results] == [["deduplicated", "event"], ["deduplicated", "error"]] + [
        ["deduplicated", "event"]
    ] * 2
    assert results[1]["error"]["code"] == 3
    assert set(field_violations(results[1]["error"])) == {"events[1].customer_event.name"}
    assert results[3]["deduplicated"] is True

    pages, token = [], ""
    while True:
        page = await http.ok("GET", f"/v1/customers/shop%3Ac42/timeline?pageSize=1&pageToken={token}")
        pages.append([e["eventId"] for e in page["events"]])
        token = page["nextPageToken"]
        if not token:
            break
    assert pages == [["b1"], ["order-1"]]
    named = await http.ok(
        "GET", "/v1/customers/shop%3Ac42/timeline?eventNames=order_placed&event_names=nothing"
    )
    assert [e["eventId"] for e in named["events"]] == ["order-1"]
    after = await http.ok("GET", "/v1/customers/shop%3Ac42/timeline?occurredAfter=2024-01-15T09:00:00.001Z")
    assert [e["eventId"] for e in after["events"]] == ["b1"]

    erased = await http.ok("POST", "/v1/customers/shop%3Ac42:erase")
    assert erased == {
        "customerErased": True,
        "eventsErased": "2",
        "streamEntriesErased": erased["streamEntriesErased"],
    }
    status, missing, _ = await http.call("GET", "/v1/customers/shop%3Ac42")
    assert status == 404 and missing["code"] == 5 and "shop:c42" in missing["message"]


# --------------------------------------------------------------------------- segmentation


async def test_segmentation_over_http_counts_lists_matches_and_keeps_segments(http: Http) -> None:
    await http.ok(
        "POST",
        "/v1/events:batchTrack",
        {
            "events": [
                {"customerEvent": {"eventId": f"e{i}", "customerId": f"c{i}", "name": "order_placed",
                                   "context": {"tier": {"stringValue": "gold" if i % 2 else "silver"}}}}
                for i in range(5)
            ]
        },
    )  # fmt: skip
    buyers = {"event": {"name": "order_placed"}}
    gold = {
        "event": {
            "name": "order_placed",
            "predicates": [{"field": "tier", "operator": "OPERATOR_EQUALS", "value": {"reference": "$tier"}}],
        }
    }
    assert (await http.ok("POST", "/v1/customers:count", {"filter": buyers}))["count"] == "5"
    listed = await http.ok("POST", "/v1/customers:list", {"filter": buyers, "pageSize": 2})
    assert listed["customerIds"] == ["c0", "c1"] and listed["nextPageToken"]
    rest = await http.ok(
        "POST", "/v1/customers:list", {"filter": buyers, "pageToken": listed["nextPageToken"]}
    )
    assert rest["customerIds"] == ["c2", "c3", "c4"]
    bindings = {"tier": {"stringValue": "gold"}}
    matched = await http.ok("POST", "/v1/customers/c1:match", {"filter": gold, "bindings": bindings})
    assert matched["matched"] is True and matched["nodes"]
    assert (await http.ok("POST", "/v1/customers/c0:match", {"filter": gold, "bindings": bindings}))[
        "matched"
    ] is False
    validated = await http.ok("POST", "/v1/filters:validate", {"filter": gold})
    assert validated["valid"] is True and validated["unresolvedReferences"] == ["tier"]

    segment = {"displayName": "Gold buyers", "filter": gold}
    created = await http.ok("POST", "/v1/segments?segmentId=gold", segment)
    assert created["segment"]["segmentId"] == "gold"
    assert (await http.ok("POST", "/v1/segments?segment_id=gold", segment)) == created  # AIP-155 repeat
    status, conflict, _ = await http.call(
        "POST", "/v1/segments?segmentId=gold", {**segment, "displayName": "Other"}
    )
    assert status == 409 and conflict["code"] == 6
    assert (await http.ok("GET", "/v1/segments/gold"))["segment"]["displayName"] == "Gold buyers"
    renamed = await http.ok("PATCH", "/v1/segments/gold?updateMask=displayName", {"displayName": "Gold"})
    assert renamed["segment"]["displayName"] == "Gold"
    # Replies carry every field without presence: the predicate's empty `values` too.
    assert renamed["segment"]["filter"]["event"]["predicates"] == [
        {**gold["event"]["predicates"][0], "values": []}
    ]
    await http.ok("POST", "/v1/segments?segmentId=all", {"displayName": "All", "filter": buyers})
    first = await http.ok("GET", "/v1/segments?pageSize=1")
    assert [s["segmentId"] for s in first["segments"]] == ["all"] and first["nextPageToken"]
    assert (await http.ok("GET", "/v1/segments/all/size"))["size"] == "5"
    sized = await http.ok("POST", "/v1/segments/gold/size", {"bindings": bindings})
    assert sized["size"] == "2"
    status, unbound, _ = await http.call("GET", "/v1/segments/gold/size")
    assert status == 400 and unbound["code"] == 3
    assert await http.ok("DELETE", "/v1/segments/gold") == {}
    status, _, _ = await http.call("GET", "/v1/segments/gold")
    assert status == 404


# --------------------------------------------------------------------------- campaigns


async def test_campaign_reads_previews_deliveries_and_stats_over_http(
    http: Http, campaigns_server: Any, redis_client: Any, stream_key: str, smtp_server: Any
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_server.port}") as channel:
        campaigns = campaigns_pb2_grpc.CampaignServiceStub(channel)
        created = await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                campaign_id="welcome",
                campaign=campaigns_pb2.Campaign(
                    display_name="Welcome",
                    trigger=campaigns_pb2.Trigger(
                        customer_event=campaigns_pb2.CustomerEventTrigger(event_name="signed_up")
                    ),
                    actions=[
                        campaigns_pb2.Action(
                            email=campaigns_pb2.EmailAction(
                                subject="Hi {{ client.customer_id }}",
                                text_body="Plan {{ client.eventContext.plan }}",
                            )
                        )
                    ],
                ),
            )
        )
        await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id="welcome"))
    campaign = (await http.ok("GET", "/v1/campaigns/welcome"))["campaign"]
    assert campaign["campaignId"] == "welcome" and campaign["state"] == "CAMPAIGN_STATE_ACTIVE"
    assert campaign["displayName"] == created.campaign.display_name
    active = await http.ok("GET", "/v1/campaigns?states=CAMPAIGN_STATE_ACTIVE&states=CAMPAIGN_STATE_PAUSED")
    assert [c["campaignId"] for c in active["campaigns"]] == ["welcome"]
    assert (await http.ok("GET", "/v1/campaigns?states=CAMPAIGN_STATE_DRAFT"))["campaigns"] == []

    await http.ok("PATCH", "/v1/customers/u1", {"email": "u1@example.com", "emailConsent": "CONSENT_GRANTED"})
    preview = await http.ok(
        "POST",
        "/v1/campaigns/welcome:preview",
        {"customerId": "u1", "context": {"plan": {"stringValue": "pro"}}},
    )
    assert preview["messages"][0]["subject"] == "Hi u1" and "Plan pro" in preview["messages"][0]["textBody"]
    assert smtp_server.messages == []  # a preview sends nothing

    await http.ok(
        "POST",
        "/v1/customers/u1/events",
        customer_event("signup-u1", "signed_up", plan={"stringValue": "pro"}),
    )
    await wait_for_entries(redis_client, stream_key, 1)
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(1)
    [delivery] = (await http.ok("GET", "/v1/campaigns/welcome/deliveries"))["deliveries"]
    assert delivery["customerId"] == "u1" and delivery["eventId"] == "signup-u1"
    assert delivery["status"] == "DELIVERY_STATUS_SENT" and delivery["channel"] == "CHANNEL_EMAIL"
    assert (await http.ok("GET", "/v1/customers/u1/deliveries?pageSize=10"))["deliveries"] == [delivery]
    assert (await http.ok("GET", "/v1/events/signup-u1/deliveries"))["deliveries"] == [delivery]
    stats = await http.ok("GET", "/v1/campaigns/welcome/stats")
    assert stats["sent"] == "1" and stats["pending"] == "0" and stats["reasons"] == {}
    status, both, _ = await http.call("GET", "/v1/campaigns/welcome/deliveries?customerId=u1")
    assert status == 400 and set(field_violations(both)) == {"customer_id"}


# --------------------------------------------------------------------------- errors


async def test_errors_are_google_rpc_status_json_with_the_http_status_of_their_code(http: Http) -> None:
    # The gateway's own: a body that is not JSON, an unknown field named by its path.
    status, error, _ = await http.call("POST", "/v1/systemEvents", raw=b'{"eventId": ')
    assert status == 400 and error["code"] == 3 and "" in field_violations(error)
    status, error, _ = await http.call(
        "POST", "/v1/events:batchTrack", {"events": [{"customerEvent": {"nme": "x"}}]}
    )
    assert status == 400 and set(field_violations(error)) == {"events[0].customer_event.nme"}
    # The service's: INVALID_ARGUMENT with its BadRequest, passed on as it is.
    status, error, _ = await http.call("POST", "/v1/customers/c1/events", customer_event("e1", "bad name"))
    assert status == 400 and error["code"] == 3 and set(field_violations(error)) == {"name"}
    assert error["message"].startswith("invalid request: name:")
    status, error, _ = await http.call(
        "POST", "/v1/customers/c1/events", {"name": "x", "context": {"a-b": {"stringValue": "x"}}}
    )
    assert status == 400 and set(field_violations(error)) == {"event_id", 'context["a-b"]'}
    # A batch over the limit: RESOURCE_EXHAUSTED is 429.
    events = [{"systemEvent": customer_event(f"s{i}", "x")} for i in range(1001)]
    status, error, _ = await http.call("POST", "/v1/events:batchTrack", {"events": events})
    assert status == 429 and error["code"] == 8
    # HTTP's own: unknown path, other method, and every error body the same shape.
    status, error, headers = await http.call("GET", "/v2/anything")
    assert status == 404 and error == {"code": 5, "message": "no such path: /v2/anything", "details": []}
    status, error, headers = await http.call("GET", "/v1/events:batchTrack")
    assert status == 405 and headers["Allow"] == "POST" and error["code"] == 12
    status, error, _ = await http.call("GET", "/v1/customers/c1", headers={"Grpc-Timeout": "soon"})
    assert status == 400 and set(field_violations(error)) == {"Grpc-Timeout"}


async def test_a_body_over_the_limit_is_413_a_backend_down_503_and_a_silent_one_504(
    ingestion_server: Any,
) -> None:
    closed = free_port()  # nothing listens there: campaigns is down
    # Segmentation "hangs": a socket that accepts connections and never answers.
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    env = gateway_env(ingestion_server.port, silent_port, closed, EVENTLINE_GATEWAY_MAX_BODY_BYTES="4096")
    try:
        async with (
            running_gateway(GatewaySettings.from_env(env)) as gateway,
            aiohttp.ClientSession() as session,
        ):
            http = Http(session, f"http://127.0.0.1:{gateway.port}")
            big = {"eventId": "e1", "name": "x", "context": {"note": {"stringValue": "x" * 5000}}}
            status, error, _ = await http.call("POST", "/v1/customers/c1/events", big)
            assert status == 413 and error["code"] == 8
            # The failure is logged as a JSON line with the request's id.
            lines = io.StringIO()
            handler = logging.StreamHandler(lines)
            handler.setFormatter(JsonFormatter("gateway"))
            logging.getLogger("eventline_gateway").addHandler(handler)
            try:
                status, error, _ = await http.call(
                    "GET", "/v1/campaigns", headers={"X-Request-Id": "req-503"}
                )
            finally:
                logging.getLogger("eventline_gateway").removeHandler(handler)
            assert status == 503 and error["code"] == 14
            assert error["message"] == "the campaigns service is unavailable, retry later"
            [logged] = [json.loads(line) for line in lines.getvalue().splitlines()]
            assert logged["request_id"] == "req-503" and logged["http_status"] == 503
            # The deadline a client asks for (gRPC's header format), passed waiting for segmentation.
            status, error, _ = await http.call("GET", "/v1/segments", headers={"Grpc-Timeout": "300m"})
            assert status == 504 and error["code"] == 4
            assert error["message"] == "the segmentation service did not answer before the deadline"
            # Ingestion still answers.
            assert await http.ok("POST", "/v1/systemEvents", {"eventId": "s1", "name": "x"})
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


# --------------------------------------------------------------------------- keys


async def test_api_keys_and_scopes_are_the_services_own(
    db_url: str, stream_key: str, redis_client: Any, db: asyncpg.Connection
) -> None:
    _, ingest = await api_keys.create_key(db, "shop", ["ingest"])
    _, read = await api_keys.create_key(db, "reports", ["read"])
    _, admin = await api_keys.create_key(db, "ops", ["admin"])
    revoked_key, revoked = await api_keys.create_key(db, "old", ["admin"])
    await api_keys.revoke_key(db, revoked_key.key_id)
    # The gateway has the suite's service key in its environment: it must never lend it.
    async with (
        secured_suite(db_url, stream_key, EVENTLINE_SERVICE_API_KEY=admin) as base,
        aiohttp.ClientSession() as session,
    ):
        anonymous = Http(session, base)
        event = customer_event("k1", "viewed")
        status, error, headers = await anonymous.call("POST", "/v1/customers/c1/events", event)
        assert status == 401 and error["code"] == 16 and headers["WWW-Authenticate"].startswith("Bearer")
        for bad in ("evl_0000000000000000_" + "x" * 43, revoked, "not a key"):
            status, error, _ = await anonymous.keyed(bad).call("POST", "/v1/customers/c1/events", event)
            assert status == 401 and error["code"] == 16, bad
        status, error, _ = await anonymous.keyed(read).call("POST", "/v1/customers/c1/events", event)
        assert status == 403 and error["code"] == 7 and "ingest" in error["message"]
        assert (await anonymous.keyed(ingest).ok("POST", "/v1/customers/c1/events", event))[
            "deduplicated"
        ] is False
        status, _, _ = await anonymous.keyed(ingest).call("GET", "/v1/customers/c1/timeline")
        assert status == 403
        timeline = await anonymous.keyed(read).ok("GET", "/v1/customers/c1/timeline")
        assert [e["eventId"] for e in timeline["events"]] == ["k1"]
        status, _, _ = await anonymous.keyed(read).call("POST", "/v1/customers/c1:erase")
        assert status == 403
        assert (await anonymous.keyed(admin).ok("POST", "/v1/customers/c1:erase"))["customerErased"] is True
        count = await anonymous.keyed(read).ok(
            "POST", "/v1/customers:count", {"filter": {"event": {"name": "x"}}}
        )
        assert count["count"] == "0"
        # The gateway's own routes need no key.
        async with session.get(base + "/readyz") as response:
            assert response.status == 200
        async with session.get(base + "/openapi.json") as response:
            assert response.status == 200


# --------------------------------------------------------------------------- operations


async def cli_health(base: str, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from eventline_cli.main import cli

    result = await asyncio.to_thread(CliRunner().invoke, cli, ["health", base, *args], catch_exceptions=False)
    return result.exit_code, result.output.strip()


async def test_readiness_follows_the_required_backends_and_liveness_does_not(
    db_url: str, stream_key: str, redis_client: Any
) -> None:
    from eventline_ingestion.service import running as running_ingestion
    from eventline_ingestion.settings import Settings as IngestionSettings

    probes = {"EVENTLINE_HEALTH_PROBE_INTERVAL_S": "0.05"}
    ingestion_port = free_port()
    ingestion_env = service_env(db_url, stream_key, EVENTLINE_INGESTION_PORT=str(ingestion_port), **probes)
    env = gateway_env(ingestion_port, free_port(), free_port(), **probes)
    async with running_gateway(GatewaySettings.from_env(env)) as gateway, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{gateway.port}"

        async def health(path: str) -> tuple[int, dict[str, Any]]:
            async with session.get(base + path) as response:
                return response.status, await response.json()

        async def until(path: str, status: int) -> dict[str, Any]:
            for _ in range(600):
                found, body = await health(path)
                if found == status:
                    return body
                await asyncio.sleep(0.05)
            raise AssertionError(f"{path} never answered {status}")

        body = await until("/readyz", 503)  # ingestion, the one required backend, is not there
        assert body["backends"]["ingestion"] == {"status": "NOT_SERVING", "required": True}
        assert (await health("/healthz"))[0] == 200
        async with running_ingestion(IngestionSettings.from_env(ingestion_env)):
            body = await until("/readyz", 200)
            assert body["status"] == "SERVING" and body["backends"]["segmentation"]["status"] == "NOT_SERVING"
            assert (await health("/readyz?backend=segmentation"))[0] == 503
            assert (await health("/readyz?backend=ingestion"))[0] == 200
            assert (await health("/readyz?backend=nothing"))[0] == 400
            # `eventline health URL` is the container health check of the gateway.
            assert await cli_health(base) == (0, "SERVING")
            assert (await cli_health(base, "--service", "segmentation"))[0] == 1
        await until("/readyz", 503)
        assert (await health("/healthz"))[0] == 200


async def test_request_ids_traces_metrics_and_the_openapi_document(
    ingestion_server: Any, segmentation_server: Any, campaigns_server: Any, redis_client: Any, stream_key: str
) -> None:
    env = gateway_env(
        ingestion_server.port,
        segmentation_server.port,
        campaigns_server.port,
        EVENTLINE_GATEWAY_METRICS_PORT="0",
    )
    async with running_gateway(GatewaySettings.from_env(env)) as gateway, aiohttp.ClientSession() as session:
        http = Http(session, f"http://127.0.0.1:{gateway.port}")
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        _, _, headers = await http.call(
            "POST", "/v1/customers/c1/events", customer_event("t1", "viewed"),
            headers={"X-Request-Id": "req-42", "traceparent": trace},
        )  # fmt: skip
        assert headers["X-Request-Id"] == "req-42"
        _, _, headers = await http.call("GET", "/v1/customers/c1", headers={"X-Request-Id": "has a space"})
        assert re.fullmatch(r"[0-9a-f]{16}", headers["X-Request-Id"])
        # The trace reached ingestion: the stream entry continues it.
        await wait_for_entries(redis_client, stream_key, 1)
        [(_, fields)] = await redis_client.xrange(stream_key)
        assert fields[b"traceparent"].decode().split("-")[1] == "0af7651916cd43dd8448eb211c80319c"

        async with session.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
            metrics = await response.text()
        assert (
            'eventline_http_requests_total{http_method="POST",http_status="200",'
            'route="/v1/customers/{customer_id}/events"}' in metrics
        )
        assert 'eventline_dependency_up{dependency="ingestion"} 1.0' in metrics

        async with session.get(http.base + "/openapi.json") as response:
            served = await response.read()
        assert served == (ROOT / "services/gateway/eventline_gateway/openapi.json").read_bytes()


async def test_https_and_mutual_tls_outside_and_tls_to_the_services(
    db_url: str, stream_key: str, redis_client: Any, certificates: Certificates
) -> None:
    import ssl

    from eventline_ingestion.service import running as running_ingestion
    from eventline_ingestion.settings import Settings as IngestionSettings

    tls = {
        "EVENTLINE_TLS_CERT": str(certificates.server_cert),
        "EVENTLINE_TLS_KEY": str(certificates.server_key),
    }
    trusting = ssl.create_default_context(cafile=str(certificates.ca))
    with_certificate = ssl.create_default_context(cafile=str(certificates.ca))
    with_certificate.load_cert_chain(str(certificates.client_cert), str(certificates.client_key))
    event = customer_event("tls-1", "viewed")
    async with (
        running_ingestion(IngestionSettings.from_env(service_env(db_url, stream_key, **tls))) as ingestion,
        aiohttp.ClientSession() as session,
    ):
        # HTTPS outside, TLS (EVENTLINE_TLS_CA) to ingestion, which serves TLS only.
        env = gateway_env(
            ingestion.port, free_port(), free_port(), EVENTLINE_TLS_CA=str(certificates.ca), **tls
        )
        async with running_gateway(GatewaySettings.from_env(env)) as gateway:
            url = f"https://127.0.0.1:{gateway.port}/v1/customers/c1/events"
            async with session.post(url, json=event, ssl=trusting) as response:
                assert response.status == 200, await response.text()
            with pytest.raises(aiohttp.ClientError):
                async with session.post(url.replace("https:", "http:"), json=event):
                    pass
        # Mutual TLS: a client certificate signed by EVENTLINE_TLS_CLIENT_CA, or no connection.
        env = gateway_env(
            ingestion.port, free_port(), free_port(), EVENTLINE_TLS_CA=str(certificates.ca),
            EVENTLINE_TLS_CLIENT_CA=str(certificates.ca), **tls,
        )  # fmt: skip
        async with running_gateway(GatewaySettings.from_env(env)) as gateway:
            url = f"https://127.0.0.1:{gateway.port}/v1/customers/c1/timeline"
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=trusting) as response:
                    await response.read()
            async with session.get(url, ssl=with_certificate) as response:
                assert response.status == 200
                assert [e["eventId"] for e in (await response.json())["events"]] == ["tls-1"]


async def test_a_shutdown_lets_requests_in_flight_finish(
    ingestion_server: Any, segmentation_server: Any, db: asyncpg.Connection, db_url: str
) -> None:
    """At SIGTERM (the end of ``running``) the gateway stops accepting and answers what it holds:
    a ListSegments held up by a lock on its table is answered after the listener closed."""
    env = gateway_env(
        ingestion_server.port, segmentation_server.port, free_port(), EVENTLINE_SHUTDOWN_GRACE_S="30"
    )
    watcher = await asyncpg.connect(db_url)
    lock = db.transaction()
    await lock.start()
    released = False
    try:
        await db.execute("LOCK TABLE segments IN ACCESS EXCLUSIVE MODE")
        async with aiohttp.ClientSession() as session:
            context = running_gateway(GatewaySettings.from_env(env))
            gateway = await context.__aenter__()
            in_flight = asyncio.create_task(session.get(f"http://127.0.0.1:{gateway.port}/v1/segments"))
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            for _ in range(600):
                if await watcher.fetchval(waiting):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("ListSegments never waited on the lock")
            stopping = asyncio.create_task(context.__aexit__(None, None, None))
            for _ in range(600):  # until the listener is closed
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                except OSError:
                    break
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway kept accepting connections")
            assert not in_flight.done()
            await lock.rollback()
            released = True
            response = await in_flight
            assert response.status == 200 and (await response.json())["segments"] == []
            response.release()
            await stopping
    finally:
        if not released:
            await lock.rollback()
        await watcher.close()
