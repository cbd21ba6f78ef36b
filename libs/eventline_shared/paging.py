"""Paging of every list RPC (AIP-158): page sizes, pages bounded in bytes, signed page tokens.

Every list RPC of every service pages through this module:

- ``page_size`` reads the request's page size (0 is the default, above the cap
  is the cap, negative is INVALID_ARGUMENT);
- ``fill`` takes the items of one page: at most the page size and at most
  ``PAGE_BYTES`` as encoded, so that every reply fits the 4 MiB a gRPC client
  accepts by default; a page cut short by bytes still has a next page token;
- ``PageTokens`` issues and reads the tokens. A token is the RPC's position
  (its last key), bound to the RPC and to the request it continues, signed with
  HMAC-SHA256: a client cannot edit one (to skip the checks of a request's
  fields, or to reach a position no request can), and a token of another RPC or
  of other filters is INVALID_ARGUMENT. The key is generated once and kept in
  PostgreSQL (``signing_keys``), so every replica of every service accepts the
  tokens of the others.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
from google.protobuf.message import Message

from eventline_shared.errors import invalid

MAX_REPLY_BYTES = 4_000_000
"""The largest reply a service sends: below the 4 MiB (4,194,304 bytes) that gRPC
clients accept by default (Python, Node, Go, Java), whatever the request."""
PAGE_BYTES = MAX_REPLY_BYTES - 64 * 1024
"""The most bytes of items one page holds, leaving room for its token and other fields."""

READ_BYTES = PAGE_BYTES + MAX_REPLY_BYTES
"""How far into its rows a list query reads, in bytes of their large columns: one page and
one more row of the largest size a write lets in, so that ``fill`` always sees whether a row
follows the page, while a page of large rows never loads more than this."""

T = TypeVar("T")
Key = str | int | dt.datetime
"""One part of a position: an id, a number or an instant."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_MICROS = -62135596800 * 10**6  # 0001-01-01T00:00:00Z
_MAX_MICROS = 253402300800 * 10**6 - 1  # 9999-12-31T23:59:59.999999Z
_SIGNATURE_BYTES = 16
_KEY_NAME = "page_tokens"
_NOT_A_TOKEN = "not a page token of this RPC (tokens are opaque: pass next_page_token unchanged)"


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    """The page size of a request: 0 means ``default``, above ``maximum`` means ``maximum``."""
    if requested < 0:
        raise invalid(field, "page_size must not be negative")
    return min(requested or default, maximum)


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def field_bytes(size: int) -> int:
    """The encoded size of one length-delimited field of ``size`` bytes (field number < 16)."""
    return 1 + _varint_bytes(size) + size


def message_bytes(message: Message) -> int:
    """The bytes a message takes as one item of a repeated field."""
    return field_bytes(message.ByteSize())


def string_bytes(text: str) -> int:
    """The bytes a string takes as one item of a repeated field."""
    return field_bytes(len(text.encode()))


def fill(items: Sequence[T], size: int, measure: Callable[[T], int], budget: int = PAGE_BYTES) -> list[T]:
    """The items of one page: the first ``size`` of ``items`` that fit in ``budget`` bytes.

    A page always holds at least one item (every item alone fits: writes
    refuse what could not be answered), so paging always moves on. The
    caller reads ``size + 1`` items; there is a next page when the page
    holds fewer than it read.
    """
    page: list[T] = []
    used = 0
    for item in items[:size]:
        used += measure(item)
        if page and used > budget:
            break
        page.append(item)
    return page


def scope(request: Message, *ignored: str) -> str:
    """What a token of ``request`` is bound to: the request without its paging fields and ``ignored``."""
    bound = type(request)()
    bound.CopyFrom(request)
    for name in ("page_token", "page_size", *ignored):
        bound.ClearField(name)
    return hashlib.sha256(bound.SerializeToString(deterministic=True)).hexdigest()[:32]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_key(part: Key) -> str:
    if isinstance(part, dt.datetime):
        delta = part - _EPOCH  # aware datetimes only: a naive one raises here
        return f"t{(delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds}"
    if isinstance(part, bool):
        raise TypeError("a position is made of str, int and datetime")
    if isinstance(part, int):
        return f"i{part}"
    return f"s{part}"


def _decode_key(text: Any, kind: type) -> Key:
    if not isinstance(text, str) or not text:
        raise ValueError
    tag, body = text[0], text[1:]
    if kind is dt.datetime and tag == "t":
        micros = int(body)
        if not _MIN_MICROS <= micros <= _MAX_MICROS:
            raise ValueError
        return _EPOCH + dt.timedelta(microseconds=micros)
    if kind is int and tag == "i":
        number = int(body)
        if not -(2**63) <= number < 2**63:
            raise ValueError
        return number
    if kind is str and tag == "s" and "\x00" not in body:
        return body
    raise ValueError


class Position(tuple[Key, ...]):
    """The keys a page token holds, read back with their types."""

    def text(self, i: int) -> str:
        value = self[i]
        assert isinstance(value, str)
        return value

    def number(self, i: int) -> int:
        value = self[i]
        assert isinstance(value, int)
        return value

    def instant(self, i: int) -> dt.datetime:
        value = self[i]
        assert isinstance(value, dt.datetime)
        return value


class PageTokens:
    """Issues and reads the signed page tokens of every list RPC."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page token key has at least 128 bits")
        self._key = key

    @classmethod
    async def load(cls, pool: asyncpg.Pool) -> PageTokens:
        """The tokens of the deployment: the key in PostgreSQL, made by the first replica to start."""
        await pool.execute(
            "INSERT INTO signing_keys (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            _KEY_NAME,
            secrets.token_bytes(32),
        )
        key = await pool.fetchval("SELECT secret FROM signing_keys WHERE name = $1", _KEY_NAME)
        return cls(bytes(key))

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def issue(self, rpc: str, bound_to: str, position: Iterable[Key]) -> str:
        """The token of the page after ``position`` (the last item's key) for ``rpc``."""
        payload = json.dumps([rpc, bound_to, [_encode_key(p) for p in position]], separators=(",", ":"))
        raw = payload.encode()
        return f"{_b64(raw)}.{_b64(self._sign(raw))}"

    def read(
        self, token: str, rpc: str, bound_to: str, kinds: Sequence[type], field: str = "page_token"
    ) -> Position:
        """The position of a token issued by ``issue(rpc, bound_to, ...)``; INVALID_ARGUMENT otherwise.

        ``kinds`` are the types of its keys (str, int or datetime), checked.
        """
        body, _, signature = token.partition(".")
        try:
            raw, mac = _unb64(body), _unb64(signature)
        except (binascii.Error, ValueError):
            raise invalid(field, _NOT_A_TOKEN) from None
        # Only the canonical text: base64's spare bits would let other texts decode the same.
        if _b64(raw) != body or _b64(mac) != signature or not hmac.compare_digest(self._sign(raw), mac):
            raise invalid(field, _NOT_A_TOKEN)
        try:
            made_for, made_bound, parts = json.loads(raw)
            if made_for != rpc or not isinstance(parts, list) or len(parts) != len(kinds):
                raise ValueError
            position = Position(_decode_key(p, k) for p, k in zip(parts, kinds, strict=True))
        except (ValueError, TypeError):
            raise invalid(field, _NOT_A_TOKEN) from None
        if made_bound != bound_to:
            raise invalid(field, "the page token was made for a request with other parameters")
        return position
