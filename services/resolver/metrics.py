"""Prometheus metrics of one resolver (its own registry, so several can live in one process in tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

STATUSES = ("loading", "ready", "degraded")


class ResolverMetrics:
    """Lookups, hits, misses, table size, records applied, lag and readiness. Never a token."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.lookups = Counter(
            "streamtoken_resolver_lookups",
            "Token lookups by result: hit, miss (unknown or deactivated), malformed (refused without lookup)",
            ["result"],
            registry=r,
        )
        self.hits = self.lookups.labels("hit")
        self.misses = self.lookups.labels("miss")
        self.malformed = self.lookups.labels("malformed")
        self.records = Counter(
            "streamtoken_resolver_records",
            "Records read from the streaming-tokens topic by outcome",
            ["outcome"],
            registry=r,
        )
        self.topics_created = Counter(
            "streamtoken_resolver_topics_created", "Kafka topics created through the Portal API", registry=r
        )
        self.environments = Gauge(
            "streamtoken_resolver_table_environments", "Environments in the table", registry=r
        )
        self.fingerprints = Gauge(
            "streamtoken_resolver_table_fingerprints", "Token fingerprints in the table", registry=r
        )
        self.lag = Gauge(
            "streamtoken_resolver_lag_records",
            "Records between the replica's position and the high watermark seen in fetch responses",
            registry=r,
        )
        self.ready = Gauge("streamtoken_resolver_ready", "1 when caught up and serving, else 0", registry=r)
        self.status = Gauge(
            "streamtoken_resolver_status",
            "1 for the current status (loading, ready, degraded)",
            ["status"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "streamtoken_resolver_load_seconds", "Seconds from start to caught up (0 until then)", registry=r
        )

    def bind_table(self, environments: Callable[[], float], fingerprints: Callable[[], float]) -> None:
        self.environments.set_function(environments)
        self.fingerprints.set_function(fingerprints)

    def set_status(self, status: str) -> None:
        for name in STATUSES:
            self.status.labels(name).set(1 if name == status else 0)
        self.ready.set(1 if status == "ready" else 0)
