"""Prometheus metrics of one resolver (its own registry, so several can live in one process in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shared.web import register_process_collectors

STATUSES = ("loading", "ready", "rebuilding", "degraded")
SERVING_STATUSES = ("ready", "rebuilding")
PROBLEMS = ("no broker connection", "control topic missing", "replay failing")


class ResolverMetrics:
    """Lookups, hits, misses, table size, records applied, lag and readiness. Never a token."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or register_process_collectors(CollectorRegistry())
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
        self.usage_records = Counter(
            "streamtoken_resolver_usage_records",
            "Usage records published to the usage topic (one per token and tick with due clients)",
            registry=r,
        )
        self.usage_failures = Counter(
            "streamtoken_resolver_usage_publish_failures",
            "Usage publications the broker did not take (their uses are sent again at the next tick)",
            registry=r,
        )
        self.usage_pending = Gauge(
            "streamtoken_resolver_usage_pending_clients",
            "(token, client) pairs counted and not published yet",
            registry=r,
        )
        self.usage_overflow = Gauge(
            "streamtoken_resolver_usage_overflow_uses",
            "Uses counted under a token's '(more clients)' entry because too many clients were tracked",
            registry=r,
        )
        self.environments = Gauge(
            "streamtoken_resolver_table_environments", "Environments in the table", registry=r
        )
        self.fingerprints = Gauge(
            "streamtoken_resolver_table_fingerprints", "Token fingerprints in the table", registry=r
        )
        self.lag = Gauge(
            "streamtoken_resolver_lag_records",
            "Records between the replica's positions and the high watermarks seen in fetch responses",
            registry=r,
        )
        self.partition_lag = Gauge(
            "streamtoken_resolver_partition_lag_records",
            "Records between the replica's position and the high watermark, per partition",
            ["partition"],
            registry=r,
        )
        self.position = Gauge(
            "streamtoken_resolver_partition_position",
            "Next offset the replica reads, per partition (after the last applied batch)",
            ["partition"],
            registry=r,
        )
        self.last_applied_offset = Gauge(
            "streamtoken_resolver_last_applied_offset",
            "Offset of the last applied record (of its partition)",
            ["partition"],
            registry=r,
        )
        self.last_applied_timestamp = Gauge(
            "streamtoken_resolver_last_applied_record_timestamp_seconds",
            "Kafka timestamp of the last applied record (Unix seconds; its age is time() minus this)",
            registry=r,
        )
        self.last_applied_seconds_ago = Gauge(
            "streamtoken_resolver_last_applied_seconds_ago",
            "Seconds since the replica last applied a batch of records",
            registry=r,
        )
        self.broker_up = Gauge(
            "streamtoken_resolver_broker_up", "1 while librdkafka has a broker connection up", registry=r
        )
        self.consumer_paused = Gauge(
            "streamtoken_resolver_consumer_paused",
            "1 while fetching is paused (no broker, until the topic is seen again)",
            registry=r,
        )
        self.problem = Gauge(
            "streamtoken_resolver_degraded",
            "1 for the reason the resolver is degraded now (no broker connection, control topic missing, "
            "replay failing)",
            ["reason"],
            registry=r,
        )
        self.rebuilds = Counter(
            "streamtoken_resolver_rebuilds",
            "Replays of the whole topic into a new table (topic recreated, partitions changed, position "
            "beyond the end)",
            ["reason"],
            registry=r,
        )
        self.rebuild_seconds = Gauge(
            "streamtoken_resolver_rebuild_seconds",
            "Seconds the last rebuild took from its start to the swap (0 before any)",
            registry=r,
        )
        self.ready = Gauge(
            "streamtoken_resolver_ready",
            "1 when serving from a caught-up table (ready, or rebuilding from the last good one), else 0",
            registry=r,
        )
        self.status = Gauge(
            "streamtoken_resolver_status",
            "1 for the current status (loading, ready, rebuilding, degraded)",
            ["status"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "streamtoken_resolver_load_seconds", "Seconds from start to caught up (0 until then)", registry=r
        )

    def bind_table(self, environments: Callable[[], float], fingerprints: Callable[[], float]) -> None:
        self.environments.set_function(environments)
        self.fingerprints.set_function(fingerprints)

    def bind_usage(self, pending: Callable[[], float], overflow: Callable[[], float]) -> None:
        self.usage_pending.set_function(pending)
        self.usage_overflow.set_function(overflow)

    def set_status(self, status: str) -> None:
        for name in STATUSES:
            self.status.labels(name).set(1 if name == status else 0)
        self.ready.set(1 if status in SERVING_STATUSES else 0)

    def set_problem(self, problem: str | None) -> None:
        for name in PROBLEMS:
            self.problem.labels(name).set(1 if name == problem else 0)

    def observe(
        self,
        *,
        lags: Mapping[int, int],
        positions: Mapping[int, int],
        last: tuple[int, int, float | None, float] | None,
        broker_up: bool,
        paused: bool,
    ) -> None:
        """The replica's probe: lag and positions per partition, the last applied record, the broker."""
        for partition, lag in lags.items():
            self.partition_lag.labels(str(partition)).set(lag)
        for partition, position in positions.items():
            self.position.labels(str(partition)).set(position)
        if lags:
            self.lag.set(sum(lags.values()))
        if last is not None:
            partition, offset, timestamp, applied_at = last
            self.last_applied_offset.labels(str(partition)).set(offset)
            if timestamp is not None:
                self.last_applied_timestamp.set(timestamp)
            self.last_applied_seconds_ago.set(max(time.monotonic() - applied_at, 0.0))
        self.broker_up.set(1 if broker_up else 0)
        self.consumer_paused.set(1 if paused else 0)


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
