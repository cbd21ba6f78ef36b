"""API keys: their scopes, their storage and the store that checks them.

Keys travel in gRPC metadata as ``authorization: Bearer evl_<key id>_<secret>``.
Only a SHA-256 hash of the secret is stored (the secret is 256 random bits, so
a slow hash would add nothing), in the ``api_keys`` table, with scopes:

* ``ingest``: the Track* RPCs, customer upserts and RecordDeliveryEvents (provider reports);
* ``read``: Get*, List*, Count*, Stream*, Match*, Validate*, Preview* RPCs and server reflection;
* ``admin``: everything, including erasure and changing campaigns and segments.

Health checks are always open. A missing, malformed, unknown or revoked key is
UNAUTHENTICATED; a key without the needed scope is PERMISSION_DENIED. Checked
keys are cached for ``EVENTLINE_AUTH_CACHE_S`` seconds, so a revocation takes
effect within that time. The check itself wraps every handler of a server
(``eventline_shared.server.handlers.requiring_keys``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

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
REVOKED_ONE = "UPDATE 1"
"""The command tag of a revocation that revoked a key (``UPDATE 0``: none was active)."""
CACHE_LIMIT = 10_000
"""The most tokens ``KeyStore`` remembers; past it the cache starts again empty."""


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
    return status == REVOKED_ONE


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
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        if self.cache_s > 0:
            self._cache[token] = (now + self.cache_s, found)
        return found
