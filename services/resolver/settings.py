"""Resolver settings: ``STREAMTOKEN_RESOLVER_*`` (plus ``STREAMTOKEN_KAFKA_*`` and the runtime settings)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka import KafkaSettings
from shared.settings import RuntimeSettings


class ResolverSettings(BaseSettings):
    """Every field is the environment variable ``STREAMTOKEN_RESOLVER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_RESOLVER_", extra="ignore")

    host: str = Field("127.0.0.1", description="STREAMTOKEN_RESOLVER_HOST: address to listen on")
    port: int = Field(8002, ge=1, le=65535, description="STREAMTOKEN_RESOLVER_PORT")

    # What clients are told about Kafka (Portal API `broker/librdkafka`, built by `broker.PublicBroker`);
    # the credentials are always the caller's own token's (shared.broker_access), never configured here.
    public_bootstrap_servers: str | None = Field(
        None,
        description="STREAMTOKEN_RESOLVER_PUBLIC_BOOTSTRAP_SERVERS: Kafka bootstrap given to clients "
        "(default: the resolver's own)",
    )
    public_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        None, description="STREAMTOKEN_RESOLVER_PUBLIC_SECURITY_PROTOCOL (default: the resolver's own)"
    )
    public_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None,
        description="STREAMTOKEN_RESOLVER_PUBLIC_SASL_MECHANISM (default SCRAM-SHA-256 with SASL_*)",
    )
    public_ca_location: str | None = Field(
        None,
        description="STREAMTOKEN_RESOLVER_PUBLIC_CA_LOCATION: PEM file handed to clients as ssl.ca.cert "
        "(default: STREAMTOKEN_KAFKA_SSL_CA_LOCATION); read once at start",
    )

    # The propagation view (`GET /v1/environments/{id}/generation`); unset = open (docs/resolver.md).
    internal_key: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_RESOLVER_INTERNAL_KEY: when set, the propagation endpoint requires it in "
        "the X-Streamtoken-Internal-Key header",
    )

    # Replay and readiness.
    fetch_max_wait_ms: int = Field(
        20, ge=1, le=5000, description="STREAMTOKEN_RESOLVER_FETCH_MAX_WAIT_MS: long-poll bound (latency)"
    )
    degraded_after_seconds: float = Field(
        15.0, gt=0, description="STREAMTOKEN_RESOLVER_DEGRADED_AFTER_SECONDS: no fetch answer for this long"
    )
    probe_interval_seconds: float = Field(
        2.0, gt=0, description="STREAMTOKEN_RESOLVER_PROBE_INTERVAL_SECONDS: status/lag/partitions check"
    )
    rebuild_empty_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="STREAMTOKEN_RESOLVER_REBUILD_EMPTY_GRACE_SECONDS: a recreated topic still empty this "
        "long after the rebuild began replaces a table that holds environments (until then the last good "
        "table keeps answering while the issuer republishes)",
    )

    # Portal API topic creation.
    metadata_cache_seconds: float = Field(
        2.0, ge=0, description="STREAMTOKEN_RESOLVER_METADATA_CACHE_SECONDS: cache of broker topic metadata"
    )
    admin_timeout_seconds: float = Field(15.0, gt=0, description="STREAMTOKEN_RESOLVER_ADMIN_TIMEOUT_SECONDS")
    default_partitions: int = Field(2, ge=1, description="STREAMTOKEN_RESOLVER_DEFAULT_PARTITIONS")
    max_partitions: int = Field(256, ge=1, description="STREAMTOKEN_RESOLVER_MAX_PARTITIONS")
    default_retention_minutes: int = Field(
        10080, ge=1, description="STREAMTOKEN_RESOLVER_DEFAULT_RETENTION_MINUTES"
    )
    default_retention_bytes: int = Field(
        52428800, ge=-1, description="STREAMTOKEN_RESOLVER_DEFAULT_RETENTION_BYTES"
    )
    default_cleanup_policy: Literal["delete", "compact", "delete,compact"] = Field(
        "delete", description="STREAMTOKEN_RESOLVER_DEFAULT_CLEANUP_POLICY"
    )

    # Quotas: what one environment may take of the shared broker (counted from the broker's metadata).
    max_topics_per_environment: int = Field(
        100,
        ge=1,
        description="STREAMTOKEN_RESOLVER_MAX_TOPICS_PER_ENVIRONMENT: topics an environment may have",
    )
    max_partitions_per_environment: int = Field(
        512,
        ge=1,
        description="STREAMTOKEN_RESOLVER_MAX_PARTITIONS_PER_ENVIRONMENT: of all its topics together",
    )
    max_retention_minutes: int = Field(
        43200, ge=1, description="STREAMTOKEN_RESOLVER_MAX_RETENTION_MINUTES: largest retentionInMinutes"
    )
    max_retention_bytes: int = Field(
        1024**3,
        ge=1,
        description="STREAMTOKEN_RESOLVER_MAX_RETENTION_BYTES: largest retentionInBytes (per partition)",
    )
    allow_infinite_retention: bool = Field(
        False,
        description="STREAMTOKEN_RESOLVER_ALLOW_INFINITE_RETENTION: accept -1 (unlimited) retention",
    )

    # Logs of refused tokens (anyone can mint well-formed ones): at most this many lines a minute.
    refused_log_per_minute: int = Field(
        60, ge=0, description="STREAMTOKEN_RESOLVER_REFUSED_LOG_PER_MINUTE: token_refused lines a minute"
    )

    # Usage per token (issue 12): published to STREAMTOKEN_KAFKA_USAGE_TOPIC, folded by the issuer.
    usage_enabled: bool = Field(
        True,
        description="STREAMTOKEN_RESOLVER_USAGE_ENABLED: count every authenticated use of a token (lookups, "
        "Portal API, whoami, heartbeats) and publish it to the usage topic",
    )
    usage_interval_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="STREAMTOKEN_RESOLVER_USAGE_INTERVAL_SECONDS: at most one usage record per token and "
        "client this often (a new client is published at the next tick)",
    )
    usage_tick_seconds: float = Field(
        1.0, gt=0, le=60, description="STREAMTOKEN_RESOLVER_USAGE_TICK_SECONDS: how often due usage is sent"
    )
    usage_max_clients: int = Field(
        100_000,
        ge=1,
        description="STREAMTOKEN_RESOLVER_USAGE_MAX_CLIENTS: (token, client) pairs kept between "
        "publications; further clients of a token are counted under one '(more clients)' entry",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, exclude=True)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, exclude=True)

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> Self:
        if self.default_partitions > self.max_partitions:
            raise ValueError("STREAMTOKEN_RESOLVER_DEFAULT_PARTITIONS is above ..._MAX_PARTITIONS")
        if self.default_retention_minutes > self.max_retention_minutes:
            raise ValueError(
                "STREAMTOKEN_RESOLVER_DEFAULT_RETENTION_MINUTES is above ..._MAX_RETENTION_MINUTES"
            )
        if self.default_retention_bytes == -1 and not self.allow_infinite_retention:
            raise ValueError(
                "STREAMTOKEN_RESOLVER_DEFAULT_RETENTION_BYTES is -1 (unlimited) but "
                "STREAMTOKEN_RESOLVER_ALLOW_INFINITE_RETENTION is off"
            )
        if self.default_retention_bytes > self.max_retention_bytes:
            raise ValueError("STREAMTOKEN_RESOLVER_DEFAULT_RETENTION_BYTES is above ..._MAX_RETENTION_BYTES")
        return self
