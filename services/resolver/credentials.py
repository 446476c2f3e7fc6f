"""What the Portal API's ``broker/librdkafka`` tells a client about Kafka: the public connection, fixed at
start, plus the caller's own token's broker credentials (``shared.broker_access``), computed per request.

There is no shared login: ``sasl.username`` is the caller's token id and ``sasl.password`` is
``broker_password(<the caller's token>)``, so a client only ever learns the key its own token already is.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from services.resolver.settings import ResolverSettings
from shared.broker_access import broker_password, tenant_user

DEFAULT_SASL_MECHANISM = "SCRAM-SHA-256"  # what Telegraf's outputs.quix hard-codes (BROKER.md)
_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class PublicBrokerError(ValueError):
    """The public broker settings cannot be served (an unreadable or non-PEM CA file)."""


@dataclass(frozen=True)
class PublicBroker:
    """The connection part every client of this deployment gets; ``for_token`` adds the caller's own login."""

    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str | None  # set exactly when the protocol is SASL_*
    ca_pem_base64: str | None  # set only when the protocol uses TLS and a CA file is configured

    @classmethod
    def from_settings(cls, settings: ResolverSettings) -> PublicBroker:
        """Resolve the defaults (the resolver's own connection) and read the CA file once."""
        protocol = settings.public_security_protocol or settings.kafka.security_protocol
        mechanism = None
        if protocol.startswith("SASL_"):
            mechanism = settings.public_sasl_mechanism or DEFAULT_SASL_MECHANISM
        ca = None
        location = settings.public_ca_location or settings.kafka.ssl_ca_location
        if protocol in _TLS_PROTOCOLS and location:
            ca = base64.b64encode(_read_ca(Path(location))).decode("ascii")
        return cls(
            bootstrap_servers=settings.public_bootstrap_servers or settings.kafka.bootstrap_servers,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            ca_pem_base64=ca,
        )

    @property
    def enforced(self) -> bool:
        """Whether the broker can tell tokens apart: only a SASL protocol carries a per-token login. On a
        PLAINTEXT broker (the Tansu fallback) or TLS without SASL, broker-side enforcement is off."""
        return self.sasl_mechanism is not None

    def for_token(self, token_id: str, token: str) -> dict[str, str]:
        """The flat librdkafka dict for the holder of ``token`` (whose table entry has ``token_id``); only
        keys quixstreams accepts (PORTAL_API.md)."""
        config = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = tenant_user(token_id)
            config["sasl.password"] = broker_password(token)
        if self.ca_pem_base64 is not None:
            config["ssl.ca.cert"] = self.ca_pem_base64
        return config


def _read_ca(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise PublicBrokerError(f"cannot read the CA file {str(path)!r}: {exc.strerror or exc}") from None
    if _PEM_CERTIFICATE not in pem:
        raise PublicBrokerError(f"the CA file {str(path)!r} holds no PEM certificate")
    return pem
