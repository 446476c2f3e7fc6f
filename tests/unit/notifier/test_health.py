"""Readiness from what the consumer saw, librdkafka statistics, recreated/truncated topic detection, and
which database errors are a 503."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from services.notifier.consumer import EventConsumer, beyond_end, parse_stats
from services.notifier.delivery import NotifierMetrics
from services.notifier.health import (
    DATABASE_UNREACHABLE,
    JOINING,
    KAFKA_DOWN,
    NOT_JOINED,
    RECORDING_BLOCKED,
    TOPIC_MISSING,
    ConsumerView,
    HealthGauges,
    assess,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store import database_unavailable
from shared.kafka import KafkaSettings
from shared.web import short_reason

HEALTHY = ConsumerView(
    running=True,
    joined=True,
    ever_joined=True,
    assigned=(0, 2),
    brokers_up=1,
    lag=0,
    last_record_at=100.0,
    topic_missing=False,
    recording_blocked=False,
    failing=False,
    replays=0,
)


def test_a_joined_consumer_with_a_broker_and_a_database_is_ready() -> None:
    result = assess(True, HEALTHY, now=112.34)
    assert result.ready
    assert result.status == "ready"
    assert result.reason is None
    assert result.detail == {
        "status": "ready",
        "database": "ok",
        "consumer": "joined",
        "kafka": "ok",
        "partitions": [0, 2],
        "lag": 0,
        "last_record_age_seconds": 12.3,
        "replays": 0,
    }


@pytest.mark.parametrize(
    ("database", "change", "status", "reason"),
    [
        (False, {}, "degraded", DATABASE_UNREACHABLE),
        (True, {"brokers_up": 0}, "degraded", KAFKA_DOWN),
        (True, {"brokers_up": 0, "joined": False, "ever_joined": False}, "starting", KAFKA_DOWN),
        (True, {"joined": False}, "degraded", NOT_JOINED),
        (True, {"joined": False, "ever_joined": False}, "starting", JOINING),
        (True, {"topic_missing": True}, "degraded", TOPIC_MISSING),
        (True, {"recording_blocked": True}, "degraded", RECORDING_BLOCKED),
        (True, {"running": False}, "degraded", "consumer not running"),
        (False, {"brokers_up": 0}, "degraded", DATABASE_UNREACHABLE),  # the first problem is the reason
    ],
)
def test_each_problem_is_a_short_one_line_reason(
    database: bool, change: dict[str, Any], status: str, reason: str
) -> None:
    result = assess(database, replace(HEALTHY, **change), now=100.0)
    assert not result.ready
    assert (result.status, result.reason, result.detail["reason"]) == (status, reason, reason)
    assert short_reason(reason) == reason  # survives shared.web's cut unchanged


def test_no_consumer_is_reported_as_disabled_and_gauges_follow_the_assessment() -> None:
    assert assess(True, None).detail == {"status": "ready", "database": "ok", "consumer": "disabled"}
    registry = CollectorRegistry()
    gauges = HealthGauges(registry)
    down = replace(HEALTHY, brokers_up=0, replays=2, lag=None)
    gauges.update(assess(True, down, now=100.0), down, True)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("streamtoken_notifier_ready") == 0
    assert value("streamtoken_notifier_status", status="degraded") == 1
    assert value("streamtoken_notifier_kafka_brokers_up") == 0
    assert value("streamtoken_notifier_group_joined") == 1
    assert value("streamtoken_notifier_assigned_partitions") == 2
    assert value("streamtoken_notifier_consumer_lag") == -1
    assert value("streamtoken_notifier_last_record_age_seconds") == 0
    assert value("streamtoken_notifier_topic_replays_total") == 2
    gauges.update(assess(True, down, now=100.0), down, True)
    assert value("streamtoken_notifier_topic_replays_total") == 2  # counted once


def test_statistics_give_brokers_up_membership_and_lag() -> None:
    stats: dict[str, Any] = {
        "brokers": {
            "127.0.0.1:9092/bootstrap": {"nodeid": -1, "state": "UP"},
            "127.0.0.1:9092/1": {"nodeid": 1, "state": "UP"},
            "127.0.0.1:9093/2": {"nodeid": 2, "state": "CONNECT"},
        },
        "cgrp": {"state": "up", "join_state": "steady", "assignment_size": 2},
        "topics": {
            "tokens": {
                "partitions": {
                    "0": {"partition": 0, "consumer_lag": 3, "desired": True},
                    "1": {"partition": 1, "consumer_lag": -1, "desired": True},
                    "3": {"partition": 3, "consumer_lag": -1, "hi_offset": 0, "lo_offset": 0},
                    "4": {"partition": 4, "consumer_lag": -1, "hi_offset": 7, "app_offset": -1001},
                    "2": {"partition": 2, "consumer_lag": 4, "desired": False},
                    "-1": {"partition": -1, "consumer_lag": 9},
                }
            }
        },
    }
    assert parse_stats(stats, "tokens") == (1, True, 10)  # 3 + 0 (empty) + 7 (nothing consumed yet)
    stats["cgrp"] = {"state": "wait-coord", "join_state": "init"}
    for broker in stats["brokers"].values():
        broker["state"] = "DOWN"
    assert parse_stats(stats, "tokens") == (0, False, 10)
    assert parse_stats({}, "tokens") == (0, None, None)


def test_a_committed_position_beyond_the_end_means_truncated() -> None:
    assert beyond_end(10, 3)
    assert not beyond_end(3, 3)  # at the end: nothing new yet
    assert not beyond_end(-1001, 0)  # nothing committed
    assert not beyond_end(5, -1)  # end unknown


class FakeConsumer:
    def __init__(self, committed: dict[int, int], high: dict[int, int]) -> None:
        self._committed = committed
        self._high = high
        self.assigned: list[TopicPartition] | None = None
        self.seeks: list[tuple[int, int]] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._committed[tp.partition]) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, self._high[tp.partition]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))


def _consumer() -> EventConsumer:
    settings = NotifierSettings(database_url="sqlite://", consume=False)
    store: Any = None  # the topic checks never touch the store
    return EventConsumer(
        KafkaSettings(topic="tokens"), settings, store, NotifierMetrics(CollectorRegistry()), lambda _: None
    )


def test_a_changed_topic_id_replays_every_assigned_partition_from_the_beginning() -> None:
    consumer = _consumer()
    assert not consumer._note_topic_id("id-1")  # first sight
    assert not consumer._note_topic_id("id-1")
    assert consumer._note_topic_id("id-2")  # recreated
    assert consumer.replays == 1
    fake = FakeConsumer({0: 5, 1: 7}, {0: 9, 1: 9})
    consumer._on_assign(fake, [TopicPartition("tokens", 0), TopicPartition("tokens", 1)])
    assert fake.assigned is not None
    assert [(tp.partition, tp.offset) for tp in fake.assigned] == [
        (0, OFFSET_BEGINNING),
        (1, OFFSET_BEGINNING),
    ]
    assert consumer.assigned == (0, 1)
    assert consumer.joined
    # Once: the next assignment keeps the committed offsets.
    fake = FakeConsumer({0: 5, 1: 7}, {0: 9, 1: 9})
    consumer._on_assign(fake, [TopicPartition("tokens", 0), TopicPartition("tokens", 1)])
    assert fake.assigned is not None
    assert all(tp.offset != OFFSET_BEGINNING for tp in fake.assigned)


def test_an_assigned_partition_committed_beyond_its_end_is_replayed_the_others_are_not() -> None:
    consumer = _consumer()
    consumer._note_topic_id("id-1")
    fake = FakeConsumer({0: 50, 1: 2, 2: -1001}, {0: 3, 1: 9, 2: 0})
    parts = [TopicPartition("tokens", p) for p in (0, 1, 2)]
    consumer._on_assign(fake, parts)  # no broker request inside the rebalance callback
    assert fake.assigned == parts
    assert fake.seeks == []
    consumer._replay_beyond_end(fake)  # the consume loop's next turn
    assert fake.seeks == [(0, OFFSET_BEGINNING)]
    assert consumer.replays == 1
    consumer._replay_beyond_end(fake)  # checked once per assignment
    assert fake.seeks == [(0, OFFSET_BEGINNING)]


def _operational(message: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


def test_database_errors_that_mean_not_now_are_503_the_rest_stay_bugs() -> None:
    assert database_unavailable(_operational("database is locked")) == "locked"
    assert database_unavailable(_operational("database or disk is full")) == "full"
    assert database_unavailable(_operational("connection refused")) == "unreachable"
    assert database_unavailable(_operational("terminating connection due to administrator command")) == (
        "unreachable"
    )
    assert database_unavailable(IntegrityError("INSERT", {}, Exception("UNIQUE"))) is None
    assert database_unavailable(ProgrammingError("SELECT", {}, Exception("syntax"))) is None
    assert database_unavailable(ValueError("x")) is None
