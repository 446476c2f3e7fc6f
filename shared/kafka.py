"""Kafka connection settings shared by the services (pydantic-settings, secrets as ``SecretStr``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import STREAMING_TOKENS
from shared.usage import USAGE_TOPIC

if TYPE_CHECKING:
    from quixstreams.kafka.configuration import ConnectionConfig


class KafkaSettings(BaseSettings):
    """Where Kafka is and how to authenticate; each field is a ``STREAMTOKEN_KAFKA_*`` variable."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS: host:port[,host:port]"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="STREAMTOKEN_KAFKA_SECURITY_PROTOCOL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="STREAMTOKEN_KAFKA_SASL_MECHANISM"
    )
    sasl_username: str | None = Field(None, description="STREAMTOKEN_KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = Field(None, description="STREAMTOKEN_KAFKA_SASL_PASSWORD")
    ssl_ca_location: str | None = Field(None, description="STREAMTOKEN_KAFKA_SSL_CA_LOCATION: CA bundle path")
    topic: str = Field(STREAMING_TOKENS, description="STREAMTOKEN_KAFKA_TOPIC: the compacted token topic")
    topic_partitions: int = Field(3, ge=1, le=1000, description="STREAMTOKEN_KAFKA_TOPIC_PARTITIONS")
    usage_topic: str = Field(
        USAGE_TOPIC,
        min_length=1,
        max_length=249,
        description="STREAMTOKEN_KAFKA_USAGE_TOPIC: the compacted topic of token usage (resolver -> issuer)",
    )
    replication_factor: int = Field(1, ge=1, le=10, description="STREAMTOKEN_KAFKA_REPLICATION_FACTOR")
    session_timeout_ms: int = Field(
        6000, ge=1000, description="consumer-group session timeout; small values keep group joins fast"
    )

    def librdkafka(self) -> dict[str, Any]:
        """The connection part of a librdkafka (confluent-kafka) configuration."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config

    def environment(self) -> dict[str, str]:
        """These settings as the ``STREAMTOKEN_KAFKA_*`` variables of a child process."""
        values = {
            "BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "SECURITY_PROTOCOL": self.security_protocol,
            "SASL_MECHANISM": self.sasl_mechanism,
            "SASL_USERNAME": self.sasl_username,
            "SASL_PASSWORD": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "SSL_CA_LOCATION": self.ssl_ca_location,
            "TOPIC": self.topic,
            "TOPIC_PARTITIONS": str(self.topic_partitions),
            "USAGE_TOPIC": self.usage_topic,
            "REPLICATION_FACTOR": str(self.replication_factor),
            "SESSION_TIMEOUT_MS": str(self.session_timeout_ms),
        }
        return {f"STREAMTOKEN_KAFKA_{k}": v for k, v in values.items() if v is not None}

    def consumer_group_tuning(self) -> dict[str, Any]:
        return {
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(self.session_timeout_ms // 3, 300),
        }

    def connection_config(self) -> ConnectionConfig:
        """The same settings as a quixstreams ``ConnectionConfig``."""
        from quixstreams.kafka.configuration import ConnectionConfig

        return ConnectionConfig.from_librdkafka_dict(self.librdkafka())


def ensure_topic(
    settings: KafkaSettings,
    name: str,
    partitions: int,
    config: dict[str, str],
    timeout: float = 15.0,
) -> bool:
    """Create topic ``name`` unless it exists; True if this call created it."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.librdkafka())
    if name in admin.list_topics(timeout=timeout).topics:
        return False
    futures = admin.create_topics(
        [
            NewTopic(
                name, num_partitions=partitions, replication_factor=settings.replication_factor, config=config
            )
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        futures[name].result(timeout)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    return True


def ensure_streaming_tokens_topic(settings: KafkaSettings, timeout: float = 15.0) -> bool:
    """Create the compacted ``streaming-tokens`` topic (``settings.topic``) unless it exists."""
    from shared.topics import STREAMING_TOKENS_CONFIG

    return ensure_topic(settings, settings.topic, settings.topic_partitions, STREAMING_TOKENS_CONFIG, timeout)


def ensure_usage_topic(settings: KafkaSettings, timeout: float = 15.0) -> bool:
    """Create the compacted usage topic (``settings.usage_topic``, keyed by token id) unless it exists."""
    from shared.usage import USAGE_TOPIC_CONFIG, USAGE_TOPIC_PARTITIONS

    return ensure_topic(settings, settings.usage_topic, USAGE_TOPIC_PARTITIONS, USAGE_TOPIC_CONFIG, timeout)
