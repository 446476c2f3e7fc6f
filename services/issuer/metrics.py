"""Prometheus metrics of one issuer instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.web import register_process_collectors

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class IssuerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or register_process_collectors(CollectorRegistry())
        self.changes = Counter(
            "streamtoken_issuer_changes",
            "Environment changes committed, by type (created, rotated, revoked, deleted)",
            ["type"],
            registry=self.registry,
        )
        self.rotations = Counter(
            "streamtoken_issuer_rotations", "Token rotations committed", registry=self.registry
        )
        self.outbox_depth = Gauge(
            "streamtoken_issuer_outbox_depth",
            "Outbox rows not yet acknowledged by Kafka",
            registry=self.registry,
        )
        self.oldest_pending_age = Gauge(
            "streamtoken_issuer_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row not yet acknowledged by Kafka (0: none pending)",
            registry=self.registry,
        )
        self.last_publish_success = Gauge(
            "streamtoken_issuer_last_publish_success_timestamp_seconds",
            "Unix time of the last record Kafka acknowledged (0: none yet)",
            registry=self.registry,
        )
        self.kafka_up = Gauge(
            "streamtoken_issuer_kafka_up",
            "1 while the relay's last Kafka call (publish or topic check) succeeded, else 0",
            registry=self.registry,
        )
        self.broker_access_up = Gauge(
            "streamtoken_issuer_broker_access_up",
            "1 while the broker's users and ACLs can be managed (or broker access is off), 0 while failing",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "streamtoken_issuer_database_up",
            "1 while the relay's last database call succeeded, else 0",
            registry=self.registry,
        )
        self.topic_republishes = Counter(
            "streamtoken_issuer_topic_republishes",
            "Republishes queued because the control topic was missing, empty, recreated or truncated",
            ["reason"],
            registry=self.registry,
        )
        self.published = Counter(
            "streamtoken_issuer_outbox_published", "Outbox rows acknowledged by Kafka", registry=self.registry
        )
        self.publish_failures = Counter(
            "streamtoken_issuer_outbox_publish_failures",
            "Publish attempts that Kafka did not acknowledge",
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "streamtoken_issuer_publish_latency_seconds",
            "Time from an outbox row's commit to Kafka's acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
