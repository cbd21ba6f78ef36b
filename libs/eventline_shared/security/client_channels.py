"""Channels from one service to another: targets, round-robin with retries, TLS and the service's key."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from eventline_client.connection import service_config
from eventline_shared.environment import ConfigError
from eventline_shared.security.tls import SecuritySettings

_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def channel_target(addresses: str, variable: str = "address") -> str:
    """The gRPC target of a service's address setting: ``host:port``, a resolver target such as
    ``dns:///name:port`` (every address the name resolves to, re-resolved as it changes), or a
    comma-separated list of ``ip:port`` (a fixed set of replicas, as an ``ipv4:``/``ipv6:`` target).

    Raises ConfigError, naming ``variable``, for anything else.
    """
    addresses = addresses.strip()
    if addresses.startswith(_TARGET_SCHEMES):
        return addresses
    entries = [entry.strip() for entry in addresses.split(",")]
    if len(entries) == 1:
        host, colon, port = entries[0].rpartition(":")
        if not (colon and host and port.isdigit()):
            raise ConfigError(
                f"{variable} must be host:port, ip:port,ip:port… or a gRPC target such as dns:///host:port"
            )
        return entries[0]
    families = set()
    for entry in entries:
        host, colon, port = entry.rpartition(":")
        try:
            ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            raise ConfigError(
                f"{variable}: {entry!r} in a list must be ip:port ([ip]:port for IPv6); for a name, "
                "use dns:///name:port, which balances over every address it resolves to"
            ) from None
        if not (colon and port.isdigit()):
            raise ConfigError(f"{variable}: {entry!r} has no port")
        families.add(ip.version)
    if len(families) > 1:
        raise ConfigError(f"{variable}: a list holds IPv4 or IPv6 addresses, not both")
    return f"ipv{families.pop()}:{','.join(entries)}"


SEGMENTATION_READS = (
    "CountCustomers",
    "ListCustomers",
    "StreamCustomers",
    "MatchCustomer",
    "ValidateFilter",
    "GetSegment",
    "ListSegments",
    "GetSegmentSize",
)
"""Segmentation's read-only methods: safe for a channel to repeat."""


def _service_config() -> str:
    config = service_config()
    # Reads of segmentation are retried too: a burst of MatchCustomer calls (a campaigns replica
    # evaluates audiences of several batches at once) can exceed a connection's concurrent-stream
    # limit, and the streams past it are refused (UNAVAILABLE) before the server sees them.
    retry = config["methodConfig"][0]["retryPolicy"]
    config["methodConfig"].append(
        {
            "name": [
                {"service": "eventline.segmentation.v1.SegmentationService", "method": method}
                for method in SEGMENTATION_READS
            ],
            "retryPolicy": retry,
        }
    )
    return json.dumps(config)


SERVICE_CONFIG = _service_config()
"""round_robin over every address of the target (calls spread over all replicas, following
DNS as it changes); ingestion's calls (all idempotent) and segmentation's reads retried by the
channel on UNAVAILABLE."""


def client_channel(
    target: str,
    security: SecuritySettings | None,
    *,
    service_key: bool = True,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel from one service to another, secured like the configuration says: the one way
    the services open channels to each other.

    ``target`` is what ``channel_target`` accepts; calls go round-robin over every address it
    resolves to (``SERVICE_CONFIG``). With EVENTLINE_TLS_CA it is TLS, presenting this
    service's own certificate (mutual TLS); with EVENTLINE_SERVICE_API_KEY every call carries
    that key, unless ``service_key`` is False (the gateway, whose calls carry their clients'
    keys and never its own).
    """
    security = security or SecuritySettings()
    target = channel_target(target)
    options = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1), *options]
    interceptors: list[grpc.aio.ClientInterceptor] = []
    if security.service_api_key and service_key:
        interceptors = [
            _BearerUnaryUnary(security.service_api_key),
            _BearerUnaryStream(security.service_api_key),
        ]
    if not security.tls_ca:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(security.tls_ca).read_bytes(),
        private_key=Path(security.tls_key).read_bytes() if security.tls_key else None,
        certificate_chain=Path(security.tls_cert).read_bytes() if security.tls_cert else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def _with_bearer(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _BearerUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_bearer(details, self.token), request)


class _BearerUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_bearer(details, self.token), request)

