"""The issuer's configuration: ``STREAMTOKEN_ISSUER_*`` variables, plus Kafka and runtime settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka import KafkaSettings
from shared.settings import RuntimeSettings


class IssuerSettings(BaseSettings):
    """Each field is the variable ``STREAMTOKEN_ISSUER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_ISSUER_", extra="ignore")

    host: str = Field("127.0.0.1", description="STREAMTOKEN_ISSUER_HOST: address to listen on")
    port: int = Field(8001, ge=1, le=65535, description="STREAMTOKEN_ISSUER_PORT")
    database_url: str | None = Field(
        None,
        description="STREAMTOKEN_ISSUER_DATABASE_URL: SQLAlchemy URL (sqlite:///... or "
        "postgresql+psycopg://...); default: issuer.db in STREAMTOKEN_DATA_DIR",
    )
    encryption_key: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_ISSUER_ENCRYPTION_KEY: Fernet keys (urlsafe base64 of 32 bytes) encrypting "
        "tokens at rest, separated by commas: the first encrypts, every one decrypts (key rotation: put the "
        "new key first, run `streamtoken admin reencrypt`, then drop the old one); required outside dev (in "
        "dev a key is generated in the data dir)",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_ISSUER_JWT_SECRET: HMAC secret of personal access tokens, at least 32 "
        "characters; required outside dev (in dev a secret is generated in the data dir)",
    )
    pat_ttl_days: int = Field(
        30, ge=1, le=365, description="STREAMTOKEN_ISSUER_PAT_TTL_DAYS: default lifetime of a minted PAT"
    )
    pat_max_ttl_days: int = Field(
        90,
        ge=1,
        le=365,
        description="STREAMTOKEN_ISSUER_PAT_MAX_TTL_DAYS: the longest lifetime a PAT may get",
    )
    pat_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="STREAMTOKEN_ISSUER_PAT_CACHE_TTL_S: how long a PAT's record is cached per replica; a "
        "revocation takes effect on every replica within this time",
    )
    ui_session_idle_s: float = Field(
        1800,
        ge=60,
        le=86400,
        description="STREAMTOKEN_ISSUER_UI_SESSION_IDLE_S: a page session unused this long ends",
    )
    ui_session_max_s: float = Field(
        43200,
        ge=60,
        le=7 * 86400,
        description="STREAMTOKEN_ISSUER_UI_SESSION_MAX_S: the longest a page session lasts (≤ its PAT)",
    )
    max_grace_tokens: int = Field(
        4,
        ge=1,
        le=64,
        description="STREAMTOKEN_ISSUER_MAX_GRACE_TOKENS: tokens in their grace period per environment at "
        "once; a rotation with a grace period beyond it is refused (409)",
    )
    audit_retention_days: float = Field(
        365,
        ge=0,
        description="STREAMTOKEN_ISSUER_AUDIT_RETENTION_DAYS: how long audit entries are kept (0: forever)",
    )
    relay_enabled: bool = Field(
        True, description="STREAMTOKEN_ISSUER_RELAY_ENABLED: run the outbox relay in this process"
    )
    relay_batch_size: int = Field(
        500, ge=1, le=10000, description="STREAMTOKEN_ISSUER_RELAY_BATCH_SIZE: outbox rows per publish"
    )
    relay_delivery_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="STREAMTOKEN_ISSUER_RELAY_DELIVERY_TIMEOUT_S: how long one publish waits for Kafka",
    )
    relay_backoff_max_s: float = Field(
        5.0, gt=0, le=300, description="STREAMTOKEN_ISSUER_RELAY_BACKOFF_MAX_S: cap of the retry back-off"
    )
    relay_poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="STREAMTOKEN_ISSUER_RELAY_POLL_INTERVAL_S: safety-net scan for rows committed by "
        "other replicas (commits in this process wake the relay at once)",
    )
    relay_topic_check_interval_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="STREAMTOKEN_ISSUER_RELAY_TOPIC_CHECK_INTERVAL_S: how often the relay asks the broker "
        "whether the control topic is still the one it published to (id, end offsets); also the Kafka "
        "health check while nothing is published",
    )
    outbox_stale_after_s: float = Field(
        30.0,
        gt=0,
        description="STREAMTOKEN_ISSUER_OUTBOX_STALE_AFTER_S: readiness is degraded while the oldest "
        "pending outbox row is older than this",
    )
    commit_read_back_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="STREAMTOKEN_ISSUER_COMMIT_READ_BACK_S: the longest a rotation or revocation whose "
        "COMMIT lost its PostgreSQL connection waits to read back whether it landed (landed: 200; not: "
        "503 database_unavailable); past it, 503 database_commit_unknown",
    )
    sqlite_busy_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="STREAMTOKEN_ISSUER_SQLITE_BUSY_TIMEOUT_S: how long a write waits for another "
        "process's lock on the SQLite file before the request fails with 503 database_locked",
    )
    republish_on_start: bool = Field(
        True,
        description="STREAMTOKEN_ISSUER_REPUBLISH_ON_START: republish every environment when the topic "
        "is missing or empty at start or after Kafka was unreachable (a broker that lost its data)",
    )
    outbox_retention_hours: float = Field(
        168,
        ge=0,
        description="STREAMTOKEN_ISSUER_OUTBOX_RETENTION_HOURS: how long published outbox rows are kept",
    )
    idempotency_ttl_hours: float = Field(
        24,
        gt=0,
        description="STREAMTOKEN_ISSUER_IDEMPOTENCY_TTL_HOURS: how long an Idempotency-Key replays a result",
    )
    broker_access: Literal["auto", "scram", "off"] = Field(
        "auto",
        description="STREAMTOKEN_ISSUER_BROKER_ACCESS: who makes the broker enforce streaming tokens. scram: "
        "the issuer keeps one SCRAM user and prefixed ACLs per valid token (needs Apache Kafka or another "
        "broker with SCRAM and an authorizer); off: nothing is enforced at the broker (Tansu); auto: scram "
        "when STREAMTOKEN_KAFKA_SECURITY_PROTOCOL is SASL_*, off otherwise",
    )
    broker_access_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="STREAMTOKEN_ISSUER_BROKER_ACCESS_TIMEOUT_S: how long one user/ACL admin call waits",
    )
    resolver_urls: str = Field(
        "",
        description="STREAMTOKEN_ISSUER_RESOLVER_URLS: comma-separated base URLs of the resolver replicas "
        "(http://host:port) whose GET /v1/environments/{id}/generation the propagation view polls; empty: "
        "the resolvers' state is 'unknown'",
    )
    resolver_internal_key: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_ISSUER_RESOLVER_INTERNAL_KEY: sent as X-Streamtoken-Internal-Key to the "
        "resolvers (their STREAMTOKEN_RESOLVER_INTERNAL_KEY)",
    )
    resolver_timeout_s: float = Field(
        1.0,
        gt=0,
        le=30,
        description="STREAMTOKEN_ISSUER_RESOLVER_TIMEOUT_S: how long one poll of one resolver waits",
    )
    # Usage per token (issue 12), folded from STREAMTOKEN_KAFKA_USAGE_TOPIC.
    usage_fold_enabled: bool = Field(
        True,
        description="STREAMTOKEN_ISSUER_USAGE_FOLD_ENABLED: fold the usage topic into the database in "
        "this process (with the relay)",
    )
    usage_group: str = Field(
        "streamtoken-issuer-usage",
        min_length=1,
        max_length=200,
        description="STREAMTOKEN_ISSUER_USAGE_GROUP: consumer group of the usage fold (the issuer's "
        "principal may read it: shared.broker_access.ISSUER_USAGE_GROUP)",
    )
    usage_window_s: int = Field(
        900,
        ge=60,
        le=30 * 86400,
        description="STREAMTOKEN_ISSUER_USAGE_WINDOW_S: clients shown per token are those seen within "
        "this window (default 15 minutes)",
    )
    usage_client_retention_hours: float = Field(
        168,
        gt=0,
        description="STREAMTOKEN_ISSUER_USAGE_CLIENT_RETENTION_HOURS: clients not seen for this long are "
        "forgotten (a token's last use is kept); bounds what --if-unused can list",
    )
    notifier_url: str = Field(
        "",
        description="STREAMTOKEN_ISSUER_NOTIFIER_URL: base URL of the notifier whose "
        "GET /v1/environments/{id}/rotations the progress view reads (and which sends scheduled "
        "rotations' warnings); empty: deployments are not shown",
    )
    notifier_internal_key: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_ISSUER_NOTIFIER_INTERNAL_KEY: sent as X-Streamtoken-Internal-Key to the "
        "notifier (its STREAMTOKEN_NOTIFIER_INTERNAL_KEY)",
    )
    notifier_timeout_s: float = Field(
        2.0, gt=0, le=30, description="STREAMTOKEN_ISSUER_NOTIFIER_TIMEOUT_S: one call to the notifier"
    )
    schedule_interval_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="STREAMTOKEN_ISSUER_SCHEDULE_INTERVAL_S: how often scheduled rotations are checked",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @field_validator("notifier_url")
    @classmethod
    def _check_notifier_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and (not value.startswith(("http://", "https://")) or value in {"http:/", "https:/"}):
            raise ValueError(
                f"STREAMTOKEN_ISSUER_NOTIFIER_URL: {value!r} is not an http(s) URL, e.g. http://127.0.0.1:8003"
            )
        return value

    @field_validator("resolver_urls")
    @classmethod
    def _check_resolver_urls(cls, value: str) -> str:
        for url in _split_urls(value):
            if not url.startswith(("http://", "https://")) or url in {"http://", "https://"}:
                raise ValueError(
                    f"STREAMTOKEN_ISSUER_RESOLVER_URLS: {url!r} is not an http(s) URL; give base URLs "
                    "separated by commas, e.g. http://127.0.0.1:8002,http://10.0.0.2:8002"
                )
        return value

    @model_validator(mode="after")
    def _check_pat_lifetimes(self) -> IssuerSettings:
        if self.pat_ttl_days > self.pat_max_ttl_days:
            raise ValueError(
                f"STREAMTOKEN_ISSUER_PAT_TTL_DAYS ({self.pat_ttl_days}) exceeds "
                f"STREAMTOKEN_ISSUER_PAT_MAX_TTL_DAYS ({self.pat_max_ttl_days})"
            )
        return self

    def resolver_url_list(self) -> list[str]:
        """The configured resolver base URLs, without trailing slashes or duplicates."""
        return _split_urls(self.resolver_urls)

    def resolved_database_url(self) -> str:
        return self.database_url or self.runtime.sqlite_url("issuer")


def _split_urls(value: str) -> list[str]:
    return list(dict.fromkeys(u.strip().rstrip("/") for u in value.split(",") if u.strip()))
