"""The List-Unsubscribe URLs of marketing e-mails (RFC 2369, RFC 8058 one-click)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from eventline_shared.unsubscribe import Unsubscribe, make_token


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Writes a customer's signed one-click link (the gateway's ``/v1/unsubscribe/{token}``),
    and a mailto where one is configured."""

    base_url: str
    """The gateway as recipients reach it, ``https://events.example.com`` (EVENTLINE_UNSUBSCRIBE_URL)."""
    secret: str
    mailto: str = ""
    """An address that takes unsubscribe requests by e-mail (EVENTLINE_UNSUBSCRIBE_MAILTO)."""

    def urls(self, customer_id: str, channel: str, campaign_id: str) -> list[str]:
        token = make_token(self.secret, Unsubscribe(customer_id, channel, campaign_id))
        found = [f"{self.base_url.rstrip('/')}/v1/unsubscribe/{token}"]
        if self.mailto:
            found.append(f"mailto:{self.mailto}?subject={urllib.parse.quote('unsubscribe ' + token)}")
        return found
