"""The services behind the gateway: their channels and their health.

Each backend is a ``Dependency`` of the shared ``DependencyMonitor``, probed with the
``grpc.health.v1`` Check of its own service name, so the gateway's view of a backend is
what that backend reports of itself (NOT_SERVING while its PostgreSQL is down, say),
with the same hysteresis as every other dependency of the suite.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from eventline.campaigns.v1 import campaigns_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eventline_shared.observability.dependencies import Dependency
from eventline_shared.security.client_channels import client_channel
from eventline_shared.security.tls import SecuritySettings
from eventline_shared.server.grpc_server import MAX_MESSAGE_BYTES

SERVICES: dict[str, descriptor.ServiceDescriptor] = {
    "ingestion": ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"],
    "segmentation": segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"],
    "campaigns": campaigns_pb2.DESCRIPTOR.services_by_name["CampaignService"],
}
"""Backend name → the gRPC service it serves."""

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
"""Besides ``client_channel``'s own: round_robin over every address of a backend's target,
ingestion's calls retried on UNAVAILABLE."""


def open_channels(
    addresses: Mapping[str, str], security: SecuritySettings | None
) -> dict[str, grpc.aio.Channel]:
    """A channel to each backend, with TLS as configured and never the service API key:
    every call carries the key of the client it is made for."""
    return {
        name: client_channel(address, security, service_key=False, options=CHANNEL_OPTIONS)
        for name, address in addresses.items()
    }


class NotServing(Exception):
    """A backend answered its health check with something other than SERVING."""


class Backend(Dependency):
    """A service the gateway calls, probed with its own grpc.health.v1 Check."""

    def __init__(self, name: str, channel: grpc.aio.Channel, *, required: bool) -> None:
        super().__init__(name, required=required)
        self.service = SERVICES[name].full_name
        self.health = health_pb2_grpc.HealthStub(channel)

    async def probe(self) -> None:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=self.service))
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise NotServing(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
