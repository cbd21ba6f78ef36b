"""A bare TrackCustomerEvent handler, served by the services' own server bootstrap: the floor of
the unary path in ``bench/ingest.py``.

The handler answers each request with the event it would store (the request's fields, kind and
receipt time) and stores nothing. ``--interceptors`` serves it through
``eventline_shared.server.grpc_server.Server`` exactly as ingestion is served (metrics, error mapping,
health, reflection, the same options); without it, a plain ``grpc.aio`` server with the same
options: what grpc itself costs.

Usage: python bench/bare_unary.py PORT [--interceptors]; serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2_grpc

from eventline_shared.server.config import CommonSettings
from eventline_shared.server.grpc_server import SERVER_OPTIONS, Server, wait_for_signal

SERVICE_NAME = ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name


class BareServicer(ingestion_pb2_grpc.IngestionServiceServicer):  # type: ignore[misc]
    async def TrackCustomerEvent(
        self, request: ingestion_pb2.TrackCustomerEventRequest, context: object
    ) -> ingestion_pb2.TrackCustomerEventResponse:
        received_at = timestamp_pb2.Timestamp()
        received_at.GetCurrentTime()
        return ingestion_pb2.TrackCustomerEventResponse(
            event=common_pb2.Event(
                event_id=request.event_id,
                kind=common_pb2.EVENT_KIND_CUSTOMER,
                customer_id=request.customer_id,
                name=request.name,
                occurred_at=request.occurred_at,
                received_at=received_at,
                context=request.context,
            )
        )


async def serve(port: int, interceptors: bool) -> None:
    if interceptors:
        settings = CommonSettings.from_env({}, "ingestion", port)
        server = Server([SERVICE_NAME], settings=settings)
        ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(BareServicer(), server.server)
        server.bind("127.0.0.1", port)
        await server.start()
        await wait_for_signal()
        await server.stop(1)
        return
    bare = grpc.aio.server(options=SERVER_OPTIONS)
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(BareServicer(), bare)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), bare)  # SERVING
    bare.add_insecure_port(f"127.0.0.1:{port}")
    await bare.start()
    await wait_for_signal()
    await bare.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("port", type=int)
    parser.add_argument("--interceptors", action="store_true", help="serve through eventline's Server")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.port, arguments.interceptors))
