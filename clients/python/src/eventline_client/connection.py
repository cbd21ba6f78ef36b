"""How the client reaches Eventline: target, TLS or mutual TLS, API key, service config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest message an Eventline server sends or receives."""

RETRIED_SERVICES = ("eventline.ingestion.v1.IngestionService",)
"""Services whose every RPC is safe to repeat (event ids, upserts, reads, erasure), so the
channel may retry them itself; others (segments, campaigns) are retried by the caller."""


def service_config(channel_retries: int = 4) -> dict[str, Any]:
    """The gRPC service config of the client's channels.

    ``round_robin`` spreads calls over every address a ``dns:///`` target resolves to (for
    example a Kubernetes headless service with several ingestion replicas); with one address
    it behaves like the default. Calls to idempotent services are retried by the channel on
    ``UNAVAILABLE`` (a connection refused or reset before the server answered), with
    exponential backoff, before the client's own retries (see ``RetryPolicy``) take over.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if channel_retries > 0:
        config["methodConfig"] = [
            {
                "name": [{"service": service} for service in RETRIED_SERVICES],
                "retryPolicy": {
                    "maxAttempts": channel_retries + 1,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


@dataclass(frozen=True)
class Tls:
    """TLS to the server: its CA (None trusts the system's roots), and for mutual TLS a
    client certificate chain and key, all PEM. ``server_name`` overrides the name the
    server's certificate is checked against (when the target is an IP address, say)."""

    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("a client certificate and its key go together (mutual TLS)")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        """TLS settings read from PEM files."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def open_channel(
    target: str,
    tls: Tls | None = None,
    channel_retries: int = 4,
    options: tuple[tuple[str, Any], ...] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (``host:port`` or ``dns:///host:port``)."""
    settings: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(service_config(channel_retries))),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls is not None and tls.server_name:
        settings.append(("grpc.ssl_target_name_override", tls.server_name))
    settings += list(options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=settings)
    return grpc.aio.secure_channel(target, tls.credentials(), options=settings)
