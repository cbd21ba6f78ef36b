"""Campaign service configuration (see README for every variable).

Channels: e-mail goes over SMTP when ``EVENTLINE_SMTP_HOST`` is set, SMS and
push go to HTTP providers when ``EVENTLINE_SMS_URL`` / ``EVENTLINE_PUSH_URL``
are set; every channel without a provider writes readable files to
``EVENTLINE_CAMPAIGNS_SINK_DIR`` (local development).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from eventline_campaigns.links import UnsubscribeLinks
from eventline_campaigns.templates import DEFAULT_LIMITS, Limits
from eventline_shared.environment import ConfigError, env_bool, env_float, env_int, env_str
from eventline_shared.security.client_channels import channel_target
from eventline_shared.server.config import CommonSettings

DEFAULT_PORT = 50053
DEFAULT_SEGMENTATION_ADDR = "127.0.0.1:50052"


@dataclass(frozen=True)
class SuppressionPolicy:
    """When provider reports suppress an address (hard bounces and complaints always do)."""

    soft_bounces: int = 3
    """Soft bounces of an address within the window that suppress it."""
    soft_bounce_window_s: float = 7 * 86400.0


DEFAULT_SUPPRESSION = SuppressionPolicy()


@dataclass(frozen=True)
class Settings:
    common: CommonSettings
    segmentation_addr: str
    """host:port of the segmentation service."""
    consumer_group: str
    consumer_name: str
    """Unique per replica: pending entries are tracked per consumer."""
    read_batch: int
    """Stream entries read per XREADGROUP."""
    batches_in_flight: int
    """Stream batches processed at once by one replica."""
    claim_idle_ms: int
    """Entries pending longer than this on another (crashed) replica are reclaimed."""
    max_attempts: int
    """An entry delivered this many times without success goes to the dead-letter stream."""
    forget_consumer_ms: int
    partition_lease_ms: int
    ordered: bool
    """One replica per partition at a time (per-customer order); false: every replica reads every partition."""
    """A partition stays one replica's this long without renewal (then a crashed owner's is taken over)."""
    """A consumer of the group with nothing pending, idle this long, is a gone replica's: removed."""
    fanout_batch: int
    """Customers rendered, ledgered and sent per step of a system-event fan-out."""
    lease_s: float
    """A pending delivery not finished within this time is taken over by another replica."""
    send_attempts: int
    """Provider calls for one delivery before it is failed (transient errors only)."""
    send_concurrency: int
    campaign_poll_s: float
    """How often replicas check for campaign changes."""
    smtp_host: str
    smtp_port: int
    smtp_from: str
    smtp_username: str
    smtp_password: str
    smtp_starttls: bool
    smtp_connections: int
    sms_url: str
    push_url: str
    provider_secret: str
    """HMAC-SHA256 key of the X-Eventline-Signature header of provider calls."""
    provider_timeout_s: float
    sink_dir: str
    message_id_domain: str
    render_workers: int
    """Render worker processes (templates are never rendered in the service's own process)."""
    render_limits: Limits
    """Steps and CPU time one template render may take."""
    render_memory_mb: int
    """Address space a render worker may add to what it has after starting."""
    suppression: SuppressionPolicy = DEFAULT_SUPPRESSION
    webhook_secret: str = ""
    """HMAC-SHA256 key of webhook deliveries (EVENTLINE_WEBHOOK_SECRET)."""
    webhook_allow_private: bool = False
    """Let webhooks reach loopback, link-local and private addresses (EVENTLINE_WEBHOOK_ALLOW_PRIVATE)."""
    unsubscribe: UnsubscribeLinks | None = None
    """The List-Unsubscribe links of marketing e-mails (EVENTLINE_UNSUBSCRIBE_URL and _SECRET)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        common = CommonSettings.from_env(environ, "campaigns", DEFAULT_PORT)
        sms_url = env_str(environ, "EVENTLINE_SMS_URL", "")
        push_url = env_str(environ, "EVENTLINE_PUSH_URL", "")
        for name, url in (("EVENTLINE_SMS_URL", sms_url), ("EVENTLINE_PUSH_URL", push_url)):
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name} must be an http:// or https:// URL")
        secret = env_str(environ, "EVENTLINE_PROVIDER_SECRET", "")
        if (sms_url or push_url) and not secret:
            raise ConfigError("EVENTLINE_PROVIDER_SECRET is required when an SMS or push provider is set")
        if common.security is not None and common.security.auth and not common.security.service_api_key:
            raise ConfigError(
                "EVENTLINE_AUTH=true needs EVENTLINE_SERVICE_API_KEY: the campaign service calls the "
                "segmentation service with it (create one with: eventline keys create --name campaigns "
                "--scope read)"
            )
        if environ.get("EVENTLINE_CAMPAIGNS_DEAD_LETTER", "").strip():
            # Erasure and the cluster's hash slots need the one name the stream library gives it.
            raise ConfigError(
                "EVENTLINE_CAMPAIGNS_DEAD_LETTER is no longer read: the dead-letter stream is named after "
                "EVENTLINE_STREAM (see README, The event stream); unset it"
            )
        unsubscribe_url = env_str(environ, "EVENTLINE_UNSUBSCRIBE_URL", "")
        unsubscribe_secret = environ.get("EVENTLINE_UNSUBSCRIBE_SECRET", "")
        if unsubscribe_url and not unsubscribe_url.startswith(("https://", "http://")):
            raise ConfigError("EVENTLINE_UNSUBSCRIBE_URL must be an https:// URL (http:// for local tests)")
        if unsubscribe_url and len(unsubscribe_secret) < 16:
            raise ConfigError(
                "EVENTLINE_UNSUBSCRIBE_URL needs EVENTLINE_UNSUBSCRIBE_SECRET (16 characters or more)"
            )
        unsubscribe = (
            UnsubscribeLinks(
                unsubscribe_url, unsubscribe_secret, env_str(environ, "EVENTLINE_UNSUBSCRIBE_MAILTO", "")
            )
            if unsubscribe_url
            else None
        )
        segmentation_addr = channel_target(
            env_str(environ, "EVENTLINE_SEGMENTATION_ADDR", DEFAULT_SEGMENTATION_ADDR),
            "EVENTLINE_SEGMENTATION_ADDR",
        )
        default_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return cls(
            common=common,
            segmentation_addr=segmentation_addr,
            consumer_group=env_str(environ, "EVENTLINE_CAMPAIGNS_GROUP", "campaigns"),
            consumer_name=env_str(environ, "EVENTLINE_CAMPAIGNS_CONSUMER", default_name),
            read_batch=env_int(environ, "EVENTLINE_CAMPAIGNS_READ_BATCH", 200, minimum=1),
            batches_in_flight=env_int(environ, "EVENTLINE_CAMPAIGNS_BATCHES_IN_FLIGHT", 4, minimum=1),
            claim_idle_ms=env_int(environ, "EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS", 30_000),
            max_attempts=env_int(environ, "EVENTLINE_CAMPAIGNS_MAX_ATTEMPTS", 5, minimum=1),
            forget_consumer_ms=env_int(environ, "EVENTLINE_CAMPAIGNS_FORGET_CONSUMER_MS", 600_000, minimum=1),
            partition_lease_ms=env_int(
                environ, "EVENTLINE_CAMPAIGNS_PARTITION_LEASE_MS", 10_000, minimum=300
            ),
            ordered=env_bool(environ, "EVENTLINE_CAMPAIGNS_ORDERED", True),
            fanout_batch=env_int(environ, "EVENTLINE_CAMPAIGNS_FANOUT_BATCH", 1000, minimum=1),
            lease_s=env_float(environ, "EVENTLINE_CAMPAIGNS_LEASE_S", 60.0),
            send_attempts=env_int(environ, "EVENTLINE_CAMPAIGNS_SEND_ATTEMPTS", 3, minimum=1),
            send_concurrency=env_int(environ, "EVENTLINE_CAMPAIGNS_SEND_CONCURRENCY", 32, minimum=1),
            campaign_poll_s=env_float(environ, "EVENTLINE_CAMPAIGNS_POLL_S", 0.25),
            smtp_host=env_str(environ, "EVENTLINE_SMTP_HOST", ""),
            smtp_port=env_int(environ, "EVENTLINE_SMTP_PORT", 25),
            smtp_from=env_str(environ, "EVENTLINE_SMTP_FROM", "Eventline <no-reply@eventline.local>"),
            smtp_username=env_str(environ, "EVENTLINE_SMTP_USERNAME", ""),
            smtp_password=environ.get("EVENTLINE_SMTP_PASSWORD", ""),
            smtp_starttls=env_bool(environ, "EVENTLINE_SMTP_STARTTLS", False),
            smtp_connections=env_int(environ, "EVENTLINE_SMTP_CONNECTIONS", 8, minimum=1),
            sms_url=sms_url,
            push_url=push_url,
            provider_secret=secret,
            provider_timeout_s=env_float(environ, "EVENTLINE_PROVIDER_TIMEOUT_S", 5.0),
            sink_dir=env_str(environ, "EVENTLINE_CAMPAIGNS_SINK_DIR", ".eventline/messages"),
            message_id_domain=env_str(environ, "EVENTLINE_MESSAGE_ID_DOMAIN", "eventline.local"),
            render_workers=env_int(environ, "EVENTLINE_CAMPAIGNS_RENDER_WORKERS", 2, minimum=1),
            render_limits=Limits(
                steps=env_int(environ, "EVENTLINE_CAMPAIGNS_RENDER_STEPS", DEFAULT_LIMITS.steps, minimum=1),
                cpu_s=env_int(
                    environ,
                    "EVENTLINE_CAMPAIGNS_RENDER_CPU_MS",
                    round(DEFAULT_LIMITS.cpu_s * 1000),
                    minimum=1,
                )
                / 1000,
            ),
            render_memory_mb=env_int(environ, "EVENTLINE_CAMPAIGNS_RENDER_MEMORY_MB", 256, minimum=16),
            unsubscribe=unsubscribe,
            webhook_secret=environ.get("EVENTLINE_WEBHOOK_SECRET", ""),
            webhook_allow_private=env_bool(environ, "EVENTLINE_WEBHOOK_ALLOW_PRIVATE", False),
            suppression=SuppressionPolicy(
                soft_bounces=env_int(environ, "EVENTLINE_SUPPRESS_SOFT_BOUNCES", 3, minimum=1),
                soft_bounce_window_s=env_float(
                    environ, "EVENTLINE_SUPPRESS_SOFT_BOUNCE_WINDOW_S", 7 * 86400.0
                ),
            ),
        )
