"""Provider signatures, without sockets: SendGrid's ECDSA scheme against the example its own
library is tested with, Mailgun's HMAC against each signing key, and the gateway's settings
refusing a key that is not one."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from eventline_gateway.callbacks import (
    CallbackSettings,
    mailgun_reports,
    sendgrid_public_key,
    sendgrid_signed,
)
from eventline_gateway.errors import HttpError
from eventline_gateway.settings import Settings
from eventline_shared.environment import ConfigError

# SendGrid's published example (its Python library's Event Webhook test): key, signature,
# timestamp and the payload they sign, which ends with CR LF as SendGrid's bodies do.
PUBLIC_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SIGNATURE = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
TIMESTAMP = "1600112502"
PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
).encode()


def test_sendgrids_documented_example_verifies_and_any_change_does_not() -> None:
    key = sendgrid_public_key(PUBLIC_KEY)
    assert sendgrid_signed(key, TIMESTAMP, PAYLOAD, SIGNATURE)
    assert not sendgrid_signed(key, "1600112503", PAYLOAD, SIGNATURE)
    assert not sendgrid_signed(key, TIMESTAMP, PAYLOAD.replace(b"hello", b"hallo"), SIGNATURE)
    assert not sendgrid_signed(key, TIMESTAMP, PAYLOAD, SIGNATURE[:-8] + "AAAAAAA=")
    assert not sendgrid_signed(key, TIMESTAMP, PAYLOAD, "not base64!")
    armoured = f"-----BEGIN PUBLIC KEY-----\n{PUBLIC_KEY}\n-----END PUBLIC KEY-----\n"
    assert sendgrid_signed(sendgrid_public_key(armoured), TIMESTAMP, PAYLOAD, SIGNATURE)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EVENTLINE_SENDGRID_VERIFICATION_KEY", "not-a-key", "base64 DER"),
        ("EVENTLINE_SENDGRID_VERIFICATION_KEY", "MFkwEwYHKoZIzj0CAQ==", "base64 DER"),
        ("EVENTLINE_POSTMARK_WEBHOOK_AUTH", "no-colon-in-this-value", "user:password"),
        ("EVENTLINE_POSTMARK_WEBHOOK_AUTH", "user:short", "16 characters"),
    ],
)
def test_provider_secrets_that_cannot_work_stop_the_gateway_at_start(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})


def test_provider_secrets_are_read() -> None:
    settings = Settings.from_env(
        {"EVENTLINE_SENDGRID_VERIFICATION_KEY": PUBLIC_KEY, "EVENTLINE_POSTMARK_WEBHOOK_AUTH": "pm:" + "p" * 16}
    )
    assert settings.callbacks.sendgrid_verification_key == PUBLIC_KEY
    assert settings.callbacks.postmark_webhook_auth == "pm:" + "p" * 16


def _mailgun_body(key: str, timestamp: str, token: str) -> bytes:
    """A Mailgun "delivered" webhook signed with ``key`` the way Mailgun's docs show."""
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": {"event": "delivered", "message": {"headers": {"message-id": "<delivery-42@x>"}}},
        }
    ).encode()


def test_mailgun_signatures_check_against_their_own_key_however_often_keys_are_used() -> None:
    """The keyed HMAC is made once per signing key and copied per request: each request is
    checked against its own key alone, and no request's token carries over to the next."""
    now = str(int(time.time()))
    first, second = CallbackSettings(mailgun_signing_key="key-one"), CallbackSettings(mailgun_signing_key="key-two")
    for n in range(3):  # again and again: a copy per request, nothing fed into the shared one
        reports, key = mailgun_reports(first, _mailgun_body("key-one", now, f"token-{n}"))
        assert (key, [r.delivery_id for r in reports]) == (f"mailgun:token-{n}", ["42"])
        assert mailgun_reports(second, _mailgun_body("key-two", now, f"token-{n}"))[1] == f"mailgun:token-{n}"
        for settings, wrong in ((first, "key-two"), (second, "key-one")):
            with pytest.raises(HttpError) as refused:
                mailgun_reports(settings, _mailgun_body(wrong, now, f"token-{n}"))
            assert refused.value.http_status == 401
