"""An unmodified quixstreams Application given only Quix__Sdk__Token and Quix__Portal__Api."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shared.kafka import KafkaSettings
from tests.integration.resolver.conftest import grant_broker_access, produce, wait_ready
from tests.support import read_records
from tests.unit.resolver.factories import Env


def _read_topic(
    kafka: KafkaSettings, topic: str, expected: int, timeout: float = 20.0, settle: float = 0.2
) -> list[Any]:
    """Read a Kafka topic directly (no group), from the beginning of every partition: its JSON values (an
    app's records are objects, a state changelog's are the stored values)."""
    records = read_records(kafka.librdkafka(), topic, expected, timeout, settle=settle)
    return [json.loads(r.value) for r in records if r.value is not None]


def _app(kafka: KafkaSettings, group: str, **extra: Any) -> Any:
    from quixstreams import Application

    return Application(
        consumer_group=group,
        auto_offset_reset="earliest",
        consumer_extra_config=kafka.consumer_group_tuning(),
        request_timeout=10,
        topic_create_timeout=30,
        **extra,
    )


def _produce_and_consume(kafka: KafkaSettings, label: str) -> list[dict[str, Any]]:
    """The same application code for every environment: it only knows the short name ``f1-data``."""
    app = _app(kafka, "f1-telemetry")
    topic = app.topic("f1-data", value_serializer="json", value_deserializer="json")
    with app.get_producer() as producer:
        for lap in range(3):
            message = topic.serialize(key=f"car-{lap}", value={"lap": lap, "env": label})
            producer.produce(topic=topic.name, key=message.key, value=message.value)
    received: list[dict[str, Any]] = []
    with app.get_consumer() as consumer:
        consumer.subscribe([topic.name])
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                received.append(json.loads(msg.value()))
    assert topic.name.endswith("-f1-data")
    return received


def test_same_code_runs_in_dev_and_prod(
    kafka_settings: KafkaSettings,
    start_resolver: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    dev, prod = Env(f"acme{suffix}-telemetry-dev"), Env(f"acme{suffix}-telemetry-prod")
    produce(kafka_settings, [(dev.environment_id, dev.event()), (prod.environment_id, prod.event())])
    grant_broker_access(kafka_settings, dev, prod)
    url = start_resolver()
    wait_ready(url)
    monkeypatch.delenv("Quix__Broker__Address", raising=False)
    monkeypatch.delenv("Quix__Workspace__Id", raising=False)
    monkeypatch.setenv("Quix__Portal__Api", url)
    for env, label in ((dev, "dev"), (prod, "prod")):
        monkeypatch.setenv("Quix__Sdk__Token", env.token_1)
        received = _produce_and_consume(kafka_settings, label)
        assert sorted(r["lap"] for r in received) == [0, 1, 2]
        assert {r["env"] for r in received} == {label}
    for env, label in ((dev, "dev"), (prod, "prod")):
        landed = _read_topic(kafka_settings, f"{env.environment_id}-f1-data", 3)
        assert sorted(v["lap"] for v in landed) == [0, 1, 2]
        assert {v["env"] for v in landed} == {label}


def test_stateful_app_with_changelog_topic_runs(
    kafka_settings: KafkaSettings,
    start_resolver: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    env = Env(f"acme{uuid.uuid4().hex[:6]}-telemetry-dev")
    produce(kafka_settings, [(env.environment_id, env.event())])
    grant_broker_access(kafka_settings, env)
    url = start_resolver()
    wait_ready(url)
    monkeypatch.delenv("Quix__Broker__Address", raising=False)
    monkeypatch.setenv("Quix__Portal__Api", url)
    monkeypatch.setenv("Quix__Sdk__Token", env.token_1)

    app = _app(kafka_settings, "lap-counter", state_dir=str(tmp_path / "state"))
    source = app.topic("laps", value_serializer="json", value_deserializer="json")
    with app.get_producer() as producer:
        for lap in range(5):
            message = source.serialize(key="car-1", value={"lap": lap})
            producer.produce(topic=source.name, key=message.key, value=message.value)

    totals: list[int] = []

    def count(value: dict[str, Any], state: Any) -> dict[str, Any]:
        total = int(state.get("total", 0)) + 1
        state.set("total", total)
        totals.append(total)
        return {"total": total}

    sdf = app.dataframe(source)
    sdf = sdf.apply(count, stateful=True)
    app.run(count=5, timeout=30)
    assert totals == [1, 2, 3, 4, 5]
    changelog = f"{env.environment_id}-changelog__lap-counter--laps--default"
    # The state store flushes the final count per key to the changelog: one record, not one per update
    # (the app has finished: what is on the topic is all there is; a second's quiet settles it).
    landed = _read_topic(kafka_settings, changelog, 1, settle=1.0)
    assert landed[-1] == 5
