"""Notifier configuration: ``STREAMTOKEN_NOTIFIER_*`` variables, plus Kafka and runtime settings."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.notifier.domain import WebhookAddressPolicy
from shared.kafka import KafkaSettings
from shared.settings import RuntimeSettings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class NotifierSettings(BaseSettings):
    """Where the notifier listens, what it stores where, and how it delivers webhooks. Each field is the
    variable ``STREAMTOKEN_NOTIFIER_<FIELD>``; ``kafka`` and ``runtime`` read the shared
    ``STREAMTOKEN_KAFKA_*`` and ``STREAMTOKEN_ENV``/``_DATA_DIR``/``_LOG_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_NOTIFIER_", extra="ignore")

    host: str = Field("127.0.0.1", description="STREAMTOKEN_NOTIFIER_HOST: address the HTTP API binds to")
    port: int = Field(8003, ge=1, le=65535, description="STREAMTOKEN_NOTIFIER_PORT")
    database_url: str | None = Field(
        None,
        description="STREAMTOKEN_NOTIFIER_DATABASE_URL: SQLAlchemy URL; default SQLite in the data dir",
    )
    resolver_url: str = Field(
        "http://127.0.0.1:8002",
        description="STREAMTOKEN_NOTIFIER_RESOLVER_URL: resolver whose GET /v1/whoami checks tokens",
    )
    internal_key: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_NOTIFIER_INTERNAL_KEY: lets the issuer read any environment's rotations "
        "(X-Streamtoken-Internal-Key; its STREAMTOKEN_ISSUER_NOTIFIER_INTERNAL_KEY)",
    )
    resolver_internal_key: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_NOTIFIER_RESOLVER_INTERNAL_KEY: sent with whoami so the resolver counts "
        "the use for the notifier's caller (its STREAMTOKEN_RESOLVER_INTERNAL_KEY)",
    )
    whoami_cache_seconds: float = Field(
        5.0, ge=0, description="STREAMTOKEN_NOTIFIER_WHOAMI_CACHE_SECONDS: how long a token check is reused"
    )
    allowed_webhook_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        LOOPBACK_HOSTS,
        description=(
            "STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS: comma-separated host names, '*.suffix' patterns, "
            "IP addresses or CIDR networks a webhook URL may point at; '*' allows any public host"
        ),
    )
    allowed_webhook_networks: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_NETWORKS: comma-separated CIDR networks that webhook hosts "
            "may resolve to besides public addresses (IP and CIDR entries of ALLOWED_WEBHOOK_HOSTS count too)"
        ),
    )
    whoami_cache_entries: int = Field(
        10_000,
        ge=1,
        description="STREAMTOKEN_NOTIFIER_WHOAMI_CACHE_ENTRIES: token checks kept, valid and refused each",
    )
    max_subscriptions_per_environment: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="STREAMTOKEN_NOTIFIER_MAX_SUBSCRIPTIONS_PER_ENVIRONMENT: more are refused with 409",
    )
    replays_per_subscription_per_minute: int = Field(
        6,
        ge=0,
        description="STREAMTOKEN_NOTIFIER_REPLAYS_PER_SUBSCRIPTION_PER_MINUTE: replays of one subscription's "
        "deliveries in any minute, per notifier replica (0: no limit)",
    )
    replays_per_environment_per_minute: int = Field(
        60,
        ge=0,
        description="STREAMTOKEN_NOTIFIER_REPLAYS_PER_ENVIRONMENT_PER_MINUTE: replays in one environment in "
        "any minute, per notifier replica (0: no limit)",
    )
    consumer_group: str = Field("notifier", description="STREAMTOKEN_NOTIFIER_CONSUMER_GROUP")
    consume: bool = Field(True, description="STREAMTOKEN_NOTIFIER_CONSUME: run the Kafka consumer")
    deliver: bool = Field(True, description="STREAMTOKEN_NOTIFIER_DELIVER: run the delivery workers")
    workers: int = Field(
        256,
        ge=1,
        le=2000,
        description=(
            "STREAMTOKEN_NOTIFIER_WORKERS: concurrent webhook requests (and the most connections kept open)"
        ),
    )
    http_transport: Literal["asyncio", "httpcore"] = Field(
        "asyncio",
        description=(
            "STREAMTOKEN_NOTIFIER_HTTP_TRANSPORT: the connection pool under the webhook httpx.AsyncClient: "
            "asyncio (a lean keep-alive HTTP/1.1 pool, the fastest) or httpcore (httpx's own)"
        ),
    )
    claim_batch: int = Field(
        256, ge=1, le=10000, description="STREAMTOKEN_NOTIFIER_CLAIM_BATCH: due deliveries claimed at once"
    )
    poll_interval_seconds: float = Field(
        0.2, gt=0, description="STREAMTOKEN_NOTIFIER_POLL_INTERVAL_SECONDS: idle wait between claims"
    )
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description=(
            "STREAMTOKEN_NOTIFIER_LEASE_SECONDS: a claimed delivery is due again after this long if its "
            "claimer died; keep it above the request timeout"
        ),
    )
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="STREAMTOKEN_NOTIFIER_REQUEST_TIMEOUT_SECONDS: one webhook request"
    )
    max_attempts: int = Field(
        8, ge=1, le=100, description="STREAMTOKEN_NOTIFIER_MAX_ATTEMPTS: after these the delivery is dead"
    )
    retry_base_seconds: float = Field(
        2.0, ge=0, description="STREAMTOKEN_NOTIFIER_RETRY_BASE_SECONDS: first back-off step"
    )
    retry_max_seconds: float = Field(
        600.0,
        ge=0,
        description="STREAMTOKEN_NOTIFIER_RETRY_MAX_SECONDS: cap of one back-off (and Retry-After)",
    )
    restart_concurrency: int = Field(
        1,
        ge=0,
        description=(
            "STREAMTOKEN_NOTIFIER_RESTART_CONCURRENCY: per environment, how many 'restart' notifications may "
            "be in flight (sent and not yet acknowledged) at once; 0 means no limit"
        ),
    )
    restart_ack_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description=(
            "STREAMTOKEN_NOTIFIER_RESTART_ACK_TIMEOUT_SECONDS: a delivered 'restart' stops counting as in "
            "flight after this long without an acknowledgement"
        ),
    )
    consumer_batch: int = Field(
        500,
        ge=1,
        le=10000,
        description="STREAMTOKEN_NOTIFIER_CONSUMER_BATCH: records recorded per transaction",
    )

    topic_check_interval_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "STREAMTOKEN_NOTIFIER_TOPIC_CHECK_INTERVAL_SECONDS: how often the consumer compares the control "
            "topic's id with the one it consumes (a recreated topic is replayed from the beginning)"
        ),
    )
    database_busy_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description=(
            "STREAMTOKEN_NOTIFIER_DATABASE_BUSY_TIMEOUT_SECONDS: SQLite only, how long a statement waits "
            "for a lock held by another connection before it fails (the API answers 503)"
        ),
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @field_validator("allowed_webhook_hosts", "allowed_webhook_networks", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_webhook_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry[:60]!r} is not a CIDR network such as 10.0.0.0/8") from None
        return value

    def address_policy(self) -> WebhookAddressPolicy:
        """The addresses webhook connections may go to: public ones and the listed networks."""
        return WebhookAddressPolicy.from_entries(self.allowed_webhook_hosts, self.allowed_webhook_networks)

    @model_validator(mode="after")
    def _lease_covers_a_request(self) -> NotifierSettings:
        if self.lease_seconds <= self.request_timeout_seconds:
            raise ValueError(
                "STREAMTOKEN_NOTIFIER_LEASE_SECONDS must be larger than "
                "STREAMTOKEN_NOTIFIER_REQUEST_TIMEOUT_SECONDS, or a slow request would be sent twice"
            )
        return self

    def resolved_database_url(self) -> str:
        return self.database_url or self.runtime.sqlite_url("notifier")
