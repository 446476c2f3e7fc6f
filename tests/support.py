"""Helpers the test suites (and the benchmarks) share: bounded polling and reading a topic from the start."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def broker_login(config: dict[str, Any], timeout: float = 8.0) -> str:
    """What the broker does with these client credentials: ``"accepted"`` (a metadata call answered),
    ``"refused"`` (the SASL handshake failed: said at once, where librdkafka alone would retry it until the
    timeout) or ``"no answer"`` (neither within ``timeout`` s, e.g. a client speaking the wrong protocol)."""
    import threading

    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused = threading.Event()

    def on_error(error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refused.set()

    admin = AdminClient({**config, "error_cb": on_error})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
        except KafkaException:
            admin.poll(0)  # serves the error callback
            if refused.is_set():
                return "refused"
            continue
        return "accepted"
    return "no answer"


@dataclass(frozen=True)
class Record:
    key: str | None
    value: bytes | None
    partition: int
    offset: int


def read_records(
    connection: dict[str, Any], topic: str, expected: int, timeout: float = 30.0, settle: float = 1.0
) -> list[Record]:
    """Every record of ``topic`` from the beginning of every partition, without a consumer group: read
    until ``expected`` arrived and ``settle`` s passed with nothing more, or ``timeout``; sorted by
    partition and offset."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **connection,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} never appeared")
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            if len(records) >= expected and quiet_until is None:
                quiet_until = time.monotonic() + settle
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            key = message.key()
            records.append(
                Record(
                    key.decode() if key is not None else None,
                    message.value(),
                    message.partition(),
                    message.offset(),
                )
            )
            if quiet_until is not None:
                quiet_until = time.monotonic() + settle
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))
