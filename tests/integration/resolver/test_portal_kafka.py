"""Portal API topic calls on the real broker: created as asked, described as the broker has them."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from shared.kafka import KafkaSettings, ensure_topic
from shared.topics import kafka_topic_config
from tests.integration.resolver.conftest import produce, wait_ready
from tests.unit.resolver.factories import Env


def test_topics_are_created_and_described_as_the_broker_has_them(
    kafka_settings: KafkaSettings, start_resolver: Callable[..., str]
) -> None:
    from confluent_kafka.admin import AdminClient

    env = Env(f"acme{uuid.uuid4().hex[:6]}-telemetry-dev")
    ws = env.environment_id
    produce(kafka_settings, [(ws, env.event())])
    # A topic that already exists with another partition count than a client would ask for.
    ensure_topic(kafka_settings, f"{ws}-preexisting", 5, kafka_topic_config("delete", 3600000, 1000))
    url = start_resolver()
    wait_ready(url)
    h = {"Authorization": f"Bearer {env.token_1}"}
    with httpx.Client(base_url=url, headers=h) as client:
        pre = client.get(f"/{ws}/topics/preexisting").json()
        assert pre["configuration"] == {
            "partitions": 5,
            "replicationFactor": 1,
            "retentionInMinutes": 60,
            "retentionInBytes": 1000,
            "cleanupPolicy": "Delete",
        }
        assert pre["status"] == "Ready"
        body = {
            "name": "f1-data",
            "configuration": {
                "partitions": 3,
                "replicationFactor": 1,
                "retentionInMinutes": 120,
                "retentionInBytes": None,
                "cleanupPolicy": "compact",
            },
        }
        created = client.post(f"/{ws}/topics", json=body)
        assert created.status_code == 201
        assert created.json()["id"] == f"{ws}-f1-data"
        duplicate = client.post(f"/{ws}/topics", json=body)
        assert duplicate.status_code == 200
        listed = {t["id"]: t for t in client.get(f"/{ws}/topics").json()}
        assert set(listed) == {f"{ws}-preexisting", f"{ws}-f1-data"}
        assert listed[f"{ws}-f1-data"]["status"] == "Ready"
        assert listed[f"{ws}-f1-data"]["configuration"]["cleanupPolicy"] == "Compact"
        assert listed[f"{ws}-f1-data"]["configuration"]["retentionInMinutes"] == 120
    metadata = AdminClient(kafka_settings.librdkafka()).list_topics(timeout=10)
    assert len(metadata.topics[f"{ws}-f1-data"].partitions) == 3


def test_quotas_count_what_the_broker_holds(
    kafka_settings: KafkaSettings, start_resolver: Callable[..., str]
) -> None:
    """Topics made on the broker without the Portal API count against the environment's quota too, and a
    refused create leaves nothing on the broker."""
    from confluent_kafka.admin import AdminClient

    env = Env(f"acme{uuid.uuid4().hex[:6]}-telemetry-dev")
    ws = env.environment_id
    produce(kafka_settings, [(ws, env.event())])
    ensure_topic(kafka_settings, f"{ws}-direct", 4, kafka_topic_config("delete", 3600000, 1000))
    url = start_resolver(max_topics_per_environment=3, max_partitions_per_environment=7)
    wait_ready(url)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {env.token_1}"}) as client:
        over = client.post(f"/{ws}/topics", json={"name": "big", "configuration": {"partitions": 4}})
        assert over.status_code == 403
        assert over.json()["error"] == "quota_exceeded"
        assert "4 of 7 partitions" in over.json()["message"]
        assert (
            client.post(f"/{ws}/topics", json={"name": "a", "configuration": {"partitions": 2}}).status_code
            == 201
        )
        assert (
            client.post(f"/{ws}/topics", json={"name": "b", "configuration": {"partitions": 1}}).status_code
            == 201
        )
        full = client.post(f"/{ws}/topics", json={"name": "c", "configuration": {"partitions": 1}})
        assert full.status_code == 403
        assert "3 topics" in full.json()["message"]
        forever = client.post(
            f"/{ws}/topics", json={"name": "d", "configuration": {"retentionInMinutes": -1}}
        )
        assert forever.status_code == 400
    topics = AdminClient(kafka_settings.librdkafka()).list_topics(timeout=10).topics
    assert {f"{ws}-direct", f"{ws}-a", f"{ws}-b"} <= set(topics)
    assert not {f"{ws}-big", f"{ws}-c", f"{ws}-d"} & set(topics)
