"""Signed HTTP requests: the HMAC-SHA256 scheme of every request Eventline signs or accepts.

The signature of a request is ``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with a
shared secret, sent in ``X-Eventline-Signature`` beside ``X-Eventline-Timestamp: <unix
seconds>``: provider calls and webhook deliveries carry it, provider callbacks in our own
shape are checked against it. Binding the timestamp into the MAC lets a receiver refuse an
old request (``fresh``); refusing the same signature twice is the receiver's store's job.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Eventline-Timestamp"
SIGNATURE_HEADER = "X-Eventline-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def valid(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``body``'s at ``timestamp`` (compared in constant time)."""
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def fresh(timestamp: str, tolerance_s: float, now: float | None = None) -> bool:
    """Whether a request's timestamp (unix seconds) is within ``tolerance_s`` of now."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    current = time.time() if now is None else now
    return abs(current - int(timestamp)) <= tolerance_s
