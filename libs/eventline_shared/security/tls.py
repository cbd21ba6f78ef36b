"""Transport security: the TLS material and the keys a service presents, from the environment.

TLS is on when EVENTLINE_TLS_CERT and EVENTLINE_TLS_KEY are set; with
EVENTLINE_TLS_CLIENT_CA too, clients must present a certificate signed by that
CA (mutual TLS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from eventline_shared.environment import ConfigError, env_bool, env_float, env_str


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

