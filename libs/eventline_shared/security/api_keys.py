"""API keys and transport security, shared by every service.

Keys travel in gRPC metadata as ``authorization: Bearer evl_<key id>_<secret>``.
Only a SHA-256 hash of the secret is stored (the secret is 256 random bits, so
a slow hash would add nothing), in the ``api_keys`` table, with scopes:

* ``ingest``: the Track* RPCs, customer upserts and RecordDeliveryEvents (provider reports);
* ``read``: Get*, List*, Count*, Stream*, Match*, Validate*, Preview* RPCs and server reflection;
* ``admin``: everything, including erasure and changing campaigns and segments.

Health checks are always open. A missing, malformed, unknown or revoked key is
UNAUTHENTICATED; a key without the needed scope is PERMISSION_DENIED. Checked
keys are cached for ``EVENTLINE_AUTH_CACHE_S`` seconds, so a revocation takes
effect within that time.

TLS is on when EVENTLINE_TLS_CERT and EVENTLINE_TLS_KEY are set; with
EVENTLINE_TLS_CLIENT_CA too, clients must present a certificate signed by that
CA (mutual TLS).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from eventline_client.connection import service_config
from eventline_shared.environment import ConfigError, env_bool, env_float, env_str
from eventline_shared.server.handlers import HandlerWrapper, checked_first

SCOPES = ("ingest", "read", "admin")
KEY_PATTERN = re.compile(r"^evl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
OPEN_SERVICES = ("grpc.health.v1.Health",)
READ_PREFIXES = (
    "Get",
    "List",
    "Count",
    "Stream",
    "Match",
    "Validate",
    "Explain",
    "Preview",
    "Describe",
    "Search",
)
INGEST_PREFIXES = ("Track",)
INGEST_METHODS = {"UpsertCustomer", "RecordDeliveryEvents"}


@dataclass(frozen=True)
class SecuritySettings:
    """Whether API keys are required, and the TLS material."""

    auth: bool = False
    auth_cache_s: float = 5.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_ca: str = ""
    """CA that the servers this service calls (campaigns → segmentation) must chain to: TLS for them."""
    service_api_key: str = ""
    """The key this service sends when it calls another service."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SecuritySettings:
        settings = cls(
            auth=env_bool(environ, "EVENTLINE_AUTH", False),
            auth_cache_s=env_float(environ, "EVENTLINE_AUTH_CACHE_S", 5.0),
            tls_cert=env_str(environ, "EVENTLINE_TLS_CERT", ""),
            tls_key=env_str(environ, "EVENTLINE_TLS_KEY", ""),
            tls_client_ca=env_str(environ, "EVENTLINE_TLS_CLIENT_CA", ""),
            tls_ca=env_str(environ, "EVENTLINE_TLS_CA", ""),
            service_api_key=env_str(environ, "EVENTLINE_SERVICE_API_KEY", ""),
        )
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError("EVENTLINE_TLS_CERT and EVENTLINE_TLS_KEY must be set together")
        if settings.tls_client_ca and not settings.tls_cert:
            raise ConfigError(
                "EVENTLINE_TLS_CLIENT_CA (mutual TLS) needs EVENTLINE_TLS_CERT and EVENTLINE_TLS_KEY"
            )
        for name, path in (
            ("EVENTLINE_TLS_CERT", settings.tls_cert),
            ("EVENTLINE_TLS_KEY", settings.tls_key),
            ("EVENTLINE_TLS_CLIENT_CA", settings.tls_client_ca),
            ("EVENTLINE_TLS_CA", settings.tls_ca),
        ):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path!r}")
        return settings

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            return None
        client_ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


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


def required_scope(method: str) -> str | None:
    """The scope an RPC needs (``/package.Service/Method``); None when it is open."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service in OPEN_SERVICES:
        return None
    if service.startswith("grpc.reflection."):
        return "read"
    if name.startswith(INGEST_PREFIXES) or name in INGEST_METHODS:
        return "ingest"
    if name.startswith(READ_PREFIXES):
        return "read"
    return "admin"


def allows(scopes: Sequence[str], needed: str) -> bool:
    return "admin" in scopes or needed in scopes


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: list[str]
    created_at: Any
    revoked_at: Any


async def create_key(connection: asyncpg.Connection, name: str, scopes: Sequence[str]) -> tuple[ApiKey, str]:
    """Store a new key; returns it and the token (shown once, never stored)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}, got {', '.join(scopes) or 'none'}")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = await connection.fetchrow(
        "INSERT INTO api_keys (key_id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4)"
        " RETURNING key_id, name, scopes, created_at, revoked_at",
        key_id,
        name,
        _hash(secret),
        sorted(set(scopes), key=SCOPES.index),
    )
    assert row is not None
    return ApiKey(**dict(row)), f"evl_{key_id}_{secret}"


async def revoke_key(connection: asyncpg.Connection, key_id: str) -> bool:
    """Revoke a key (by its id or its whole token); False when there is no such active key."""
    match = KEY_PATTERN.match(key_id)
    if match:
        key_id = match.group(1)
    status = await connection.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(status.endswith(" 1"))


async def list_keys(connection: asyncpg.Connection) -> list[ApiKey]:
    rows = await connection.fetch(
        "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
    )
    return [ApiKey(**dict(row)) for row in rows]


class KeyStore:
    """Checks tokens against ``api_keys``, caching results for ``cache_s`` seconds."""

    def __init__(self, pool: asyncpg.Pool, cache_s: float) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, tuple[str, ...] | None]] = {}

    async def scopes(self, token: str) -> tuple[str, ...] | None:
        """The scopes of a valid, active key; None for anything else."""
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        match = KEY_PATTERN.match(token)
        found: tuple[str, ...] | None = None
        if match:
            row = await self.pool.fetchrow(
                "SELECT secret_hash, scopes FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
                match.group(1),
            )
            if row is not None and hmac.compare_digest(bytes(row["secret_hash"]), _hash(match.group(2))):
                found = tuple(row["scopes"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        if self.cache_s > 0:
            self._cache[token] = (now + self.cache_s, found)
        return found


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def requiring_keys(keys: Callable[[], KeyStore | None]) -> HandlerWrapper:
    """Wraps each method's handler so that a call needs a key with the RPC's scope; health stays open.

    The check runs before the request is decoded: a refused call costs no decoding.
    """

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        needed = required_scope(method)
        if needed is None:
            return handler

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            token = _bearer(context.invocation_metadata())
            if not token:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "an API key is required (authorization: Bearer …)"
                )
            store = keys()
            if store is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is starting, retry")
            assert store is not None
            scopes = await store.scopes(token)
            if scopes is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the API key is unknown or revoked")
            assert scopes is not None
            if not allows(scopes, needed):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"the API key lacks the {needed!r} scope for this RPC"
                )

        return checked_first(handler, check)

    return wrap
