"""Gateway configuration (see README for every variable).

The gateway keeps no state and opens no database: it needs its own address, the
addresses of the three services it calls, and the TLS settings shared with them.
``EVENTLINE_AUTH`` does not concern it: it forwards ``Authorization`` and each service
checks the key as for any gRPC call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eventline_gateway.callbacks import CallbackSettings, sendgrid_public_key
from eventline_shared.environment import ConfigError, env_float, env_int, env_str
from eventline_shared.security.client_channels import channel_target
from eventline_shared.server import workers
from eventline_shared.server.config import CommonSettings

DEFAULT_PORT = 8080
BACKENDS = ("ingestion", "segmentation", "campaigns")
ADDRESSES = {
    "ingestion": ("EVENTLINE_INGESTION_ADDR", "127.0.0.1:50051"),
    "segmentation": ("EVENTLINE_SEGMENTATION_ADDR", "127.0.0.1:50052"),
    "campaigns": ("EVENTLINE_CAMPAIGNS_ADDR", "127.0.0.1:50053"),
}
"""Backend → the variable of its address, and its default."""


@dataclass(frozen=True)
class Settings:
    common: CommonSettings
    backends: Mapping[str, str]
    """Backend name (``ingestion``, ``segmentation``, ``campaigns``) to its gRPC target."""
    required_backends: tuple[str, ...]
    """The backends /readyz follows; the others are reported only."""
    max_body_bytes: int
    """Larger request bodies are refused with 413."""
    deadline_s: float
    """The deadline of each call to a service (a shorter ``Grpc-Timeout`` header wins)."""
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    """Provider status callbacks: the providers' secrets."""
    workers: int = 1
    """EVENTLINE_GATEWAY_WORKERS: processes serving the port (SO_REUSEPORT when more than 1)."""
    unsubscribe_secret: str = ""
    """EVENTLINE_UNSUBSCRIBE_SECRET: the key of one-click unsubscribe tokens (shared with
    the campaign service, which writes the links)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        backends = {}
        for name in BACKENDS:
            variable, default = ADDRESSES[name]
            backends[name] = channel_target(env_str(environ, variable, default), variable)
        required = tuple(
            name.strip()
            for name in env_str(environ, "EVENTLINE_GATEWAY_REQUIRED_BACKENDS", "ingestion").split(",")
            if name.strip()
        )
        unknown = sorted(set(required) - set(BACKENDS))
        if unknown:
            raise ConfigError(
                f"EVENTLINE_GATEWAY_REQUIRED_BACKENDS: unknown {', '.join(unknown)} (known: {', '.join(BACKENDS)})"
            )
        deadline_s = env_float(environ, "EVENTLINE_GATEWAY_DEADLINE_S", 60.0)
        if not 0 < deadline_s <= 3600:
            raise ConfigError("EVENTLINE_GATEWAY_DEADLINE_S must be more than 0 and at most 3600")
        common = CommonSettings.from_env(environ, "gateway", DEFAULT_PORT)
        public_url = env_str(environ, "EVENTLINE_GATEWAY_PUBLIC_URL", "")
        if public_url and not public_url.startswith(("http://", "https://")):
            raise ConfigError("EVENTLINE_GATEWAY_PUBLIC_URL must be an http:// or https:// URL")
        tolerance_s = env_float(environ, "EVENTLINE_CALLBACK_TOLERANCE_S", 300.0)
        if not 0 < tolerance_s <= 86400:
            raise ConfigError("EVENTLINE_CALLBACK_TOLERANCE_S must be more than 0 and at most 86400")
        sendgrid_key = environ.get("EVENTLINE_SENDGRID_VERIFICATION_KEY", "")
        if sendgrid_key:
            try:
                sendgrid_public_key(sendgrid_key)
            except ValueError as exc:
                raise ConfigError(f"EVENTLINE_SENDGRID_VERIFICATION_KEY: {exc}") from None
        postmark_auth = environ.get("EVENTLINE_POSTMARK_WEBHOOK_AUTH", "")
        if postmark_auth and (":" not in postmark_auth or len(postmark_auth.partition(":")[2]) < 16):
            raise ConfigError(
                "EVENTLINE_POSTMARK_WEBHOOK_AUTH must be user:password with a password of 16 characters or more"
            )
        callbacks = CallbackSettings(
            secret=environ.get("EVENTLINE_CALLBACK_SECRET", ""),
            mailgun_signing_key=environ.get("EVENTLINE_MAILGUN_SIGNING_KEY", ""),
            twilio_auth_token=environ.get("EVENTLINE_TWILIO_AUTH_TOKEN", ""),
            sendgrid_verification_key=sendgrid_key,
            postmark_webhook_auth=postmark_auth,
            tolerance_s=tolerance_s,
            public_url=public_url,
            service_api_key=common.security.service_api_key if common.security else "",
        )
        return cls(
            callbacks=callbacks,
            unsubscribe_secret=environ.get("EVENTLINE_UNSUBSCRIBE_SECRET", ""),
            common=common,
            backends=backends,
            required_backends=required,
            max_body_bytes=env_int(
                environ, "EVENTLINE_GATEWAY_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024
            ),
            deadline_s=deadline_s,
            workers=workers.worker_count(environ, "gateway"),
        )
