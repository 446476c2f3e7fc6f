"""Prometheus metrics of one resolver (its own registry, so several can live in one process in tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

STATUSES = ("loading", "ready", "degraded")


class ResolverMetrics:
    """Lookups, hits, misses, table size, records applied, lag and readiness. Never a token."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Lookups are counted with plain ints (the hot path runs on the event loop thread only) and
        # exported at scrape time: a prometheus_client Counter takes a lock on every increment.
        self.lookup_counts = {"hit": 0, "miss": 0, "malformed": 0, "missing": 0}
        r.register(_LookupCollector(self.lookup_counts))
        self.records = Counter(
            "streamtoken_resolver_records",
            "Records read from the streaming-tokens topic by outcome",
            ["outcome"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "streamtoken_resolver_quota_refusals",
            "Topic creates refused for an environment's quota, by quota (topics, partitions)",
            ["quota"],
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


class _LookupCollector(Collector):
    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "streamtoken_resolver_lookups",
            "Token checks by result: hit; refused as miss (unknown or deactivated), malformed (refused "
            "without lookup) or missing (no bearer token)",
            labels=["result"],
        )
        for result, count in self._counts.items():
            family.add_metric([result], count)
        yield family
