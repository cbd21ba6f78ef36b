"""One-click unsubscribe tokens (RFC 8058): who may stop which channel, signed.

A token names a customer, a channel and the campaign whose message carried it, and ends
with an HMAC-SHA256 (128 bits) of them under ``EVENTLINE_UNSUBSCRIBE_SECRET``, which the
campaign service (that writes the links) and the gateway (that takes the clicks) share.
Without the secret no token can be made, and a token's customer or channel cannot be
changed without breaking its MAC: it unsubscribes that customer from that channel only.
Using it twice changes nothing more (the consent is already withdrawn).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

_MAC_BYTES = 16


@dataclass(frozen=True)
class Unsubscribe:
    customer_id: str
    channel: str
    """``email`` or ``sms``."""
    campaign_id: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), b"unsubscribe." + payload.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: str, unsubscribe: Unsubscribe) -> str:
    """The token of a link (URL-safe, no padding)."""
    payload = _b64(
        json.dumps(
            [unsubscribe.customer_id, unsubscribe.channel, unsubscribe.campaign_id], separators=(",", ":")
        ).encode()
    )
    return f"{payload}.{_b64(_mac(secret, payload))}"


def read_token(secret: str, token: str) -> Unsubscribe | None:
    """What a token unsubscribes, or None when it is not one of ours (forged, edited, cut)."""
    payload, _, mac = token.partition(".")
    if not payload or not mac or len(token) > 1024:
        return None
    try:
        given = _unb64(mac)
        if not hmac.compare_digest(given, _mac(secret, payload)):
            return None
        customer_id, channel, campaign_id = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if not all(isinstance(v, str) for v in (customer_id, channel, campaign_id)) or channel not in ("email", "sms"):
        return None
    return Unsubscribe(customer_id, channel, campaign_id)
