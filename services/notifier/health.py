"""What the notifier can do right now: readiness and the ``streamtoken_notifier_*`` gauges.

:func:`assess` turns the store's answer and a :class:`ConsumerView` (what the consumer thread last saw:
group membership, assignment, broker connections, lag, the last record) into the readiness detail. Its
reasons are a few plain words (``shared.web.short_reason`` cuts any text to its leading words anyway): the
public endpoint says *what* is wrong, the log says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

# Reasons: short, no ':', '(', ';' (short_reason would cut there).
DATABASE_UNREACHABLE = "database unreachable"
CONSUMER_NOT_RUNNING = "consumer not running"
CONSUMER_RESTARTING = "consumer restarting after a failure"
RECORDING_BLOCKED = "recording blocked by the database"
KAFKA_DOWN = "no connection to Kafka"
TOPIC_MISSING = "control topic missing"
JOINING = "joining the consumer group"
NOT_JOINED = "not in the consumer group"


@dataclass(frozen=True, slots=True)
class ConsumerView:
    """A snapshot of the consumer thread's state (see ``EventConsumer.view``)."""

    running: bool
    joined: bool
    ever_joined: bool
    assigned: tuple[int, ...]
    brokers_up: int | None  # brokers librdkafka is connected to (None: not known yet)
    lag: int | None
    last_record_at: float | None  # time.time() when the last record was consumed
    topic_missing: bool
    recording_blocked: bool
    failing: bool  # the last consumer run failed; it is being retried
    replays: int  # control-topic replays from the beginning (recreated or truncated topic)


@dataclass(frozen=True, slots=True)
class Assessment:
    ready: bool
    status: str  # ready | starting | degraded
    reason: str | None
    detail: dict[str, Any]


def assess(database_ok: bool, consumer: ConsumerView | None, now: float | None = None) -> Assessment:
    """The readiness of a notifier whose store answered ``database_ok`` and whose consumer is ``consumer``
    (None when consuming is disabled). The first problem found is the reason."""
    now = time.time() if now is None else now
    detail: dict[str, Any] = {"database": "ok" if database_ok else "unreachable"}
    reason: str | None = None
    status = "ready"
    if not database_ok:
        reason, status = DATABASE_UNREACHABLE, "degraded"
    if consumer is None:
        detail["consumer"] = "disabled"
    else:
        up = consumer.brokers_up
        kafka = "unknown" if up is None else ("ok" if up > 0 else "down")
        if consumer.running and consumer.joined:
            state = "joined"
        elif consumer.running and not consumer.ever_joined:
            state = "joining"
        else:
            state = "not_joined" if consumer.running else "stopped"
        detail.update(
            consumer=state,
            kafka=kafka,
            partitions=list(consumer.assigned),
            lag=consumer.lag,
            last_record_age_seconds=(
                None if consumer.last_record_at is None else round(max(now - consumer.last_record_at, 0), 1)
            ),
            replays=consumer.replays,
        )
        problem: tuple[str, str] | None = None
        if not consumer.running:
            problem = (CONSUMER_NOT_RUNNING, "degraded")
        elif consumer.recording_blocked:
            problem = (RECORDING_BLOCKED, "degraded")
        elif kafka == "down":
            problem = (KAFKA_DOWN, "degraded" if consumer.ever_joined else "starting")
        elif consumer.topic_missing:
            problem = (TOPIC_MISSING, "degraded")
        elif consumer.failing:
            problem = (CONSUMER_RESTARTING, "degraded" if consumer.ever_joined else "starting")
        elif not consumer.joined:
            problem = (NOT_JOINED, "degraded") if consumer.ever_joined else (JOINING, "starting")
        if problem is not None and reason is None:
            reason, status = problem
        elif problem is not None:
            status = "degraded"
    detail = {"status": status, **({"reason": reason} if reason else {}), **detail}
    return Assessment(status == "ready", status, reason, detail)


class HealthGauges:
    """``streamtoken_notifier_*``: the same facts as ``/health/ready``, for Prometheus."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ready = Gauge(
            "streamtoken_notifier_ready", "1 when /health/ready answers ready", registry=registry
        )
        self.status = Gauge(
            "streamtoken_notifier_status",
            "1 for the current readiness status (ready, starting, degraded)",
            ["status"],
            registry=registry,
        )
        self.database_up = Gauge(
            "streamtoken_notifier_database_up", "1 when the store answers", registry=registry
        )
        self.kafka_brokers_up = Gauge(
            "streamtoken_notifier_kafka_brokers_up",
            "Kafka brokers the consumer is connected to (-1 before it knows)",
            registry=registry,
        )
        self.group_joined = Gauge(
            "streamtoken_notifier_group_joined",
            "1 while the consumer is a member of its group",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "streamtoken_notifier_assigned_partitions",
            "Control-topic partitions assigned to this replica",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streamtoken_notifier_consumer_lag",
            "Records of the assigned partitions not consumed yet (-1 when unknown)",
            registry=registry,
        )
        self.last_record_age = Gauge(
            "streamtoken_notifier_last_record_age_seconds",
            "Seconds since the consumer last consumed a record (-1 before the first)",
            registry=registry,
        )
        self.topic_replays = Counter(
            "streamtoken_notifier_topic_replays",
            "Replays of the control topic from the beginning (it was recreated or truncated)",
            registry=registry,
        )
        self._replays_seen = 0

    def update(self, assessment: Assessment, consumer: ConsumerView | None, database_ok: bool) -> None:
        self.ready.set(1 if assessment.ready else 0)
        for status in ("ready", "starting", "degraded"):
            self.status.labels(status).set(1 if assessment.status == status else 0)
        self.database_up.set(1 if database_ok else 0)
        if consumer is None:
            return
        self.kafka_brokers_up.set(-1 if consumer.brokers_up is None else consumer.brokers_up)
        self.group_joined.set(1 if consumer.joined else 0)
        self.assigned_partitions.set(len(consumer.assigned))
        self.consumer_lag.set(-1 if consumer.lag is None else consumer.lag)
        age = assessment.detail.get("last_record_age_seconds")
        self.last_record_age.set(-1 if age is None else age)
        if consumer.replays > self._replays_seen:
            self.topic_replays.inc(consumer.replays - self._replays_seen)
            self._replays_seen = consumer.replays
