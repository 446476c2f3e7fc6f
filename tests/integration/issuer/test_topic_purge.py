"""Purging an environment id deletes its topics at the session's real Apache Kafka (SECURITY_REVIEW.md
finding 9): the id re-created under other names finds none of the old environment's records."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from services.issuer.adapters.broker import BrokerAccessError, KafkaBrokerAccess
from shared.broker_access import RESOLVER_USER, broker_password
from shared.kafka_broker import ApacheKafkaBroker
from tests.integration.issuer.conftest import RunningIssuer
from tests.integration.issuer.test_broker_access import (
    _issuer_kafka,
    _wait,
    create_topics,
    produce_once,
    tenant_config,
)


def _token_config(kafka_broker: ApacheKafkaBroker, issuer: RunningIssuer, env_id: str) -> dict[str, Any]:
    """The librdkafka settings of the environment's Token 1 (its own SCRAM user), once the broker has it."""
    propagation = f"/v1/environments/{env_id}/streaming-tokens/propagation"
    _wait(lambda: issuer.member.get(propagation).json()["broker"] == "applied")
    token = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()["token_1"]
    return tenant_config(kafka_broker, token["token_id"], broker_password(token["token"]), "SCRAM-SHA-256")


def _topics(admin: AdminClient) -> set[str]:
    return set(admin.list_topics(timeout=30).topics)


def _read(config: dict[str, Any], topic: str, seconds: float = 5.0) -> tuple[list[bytes], set[int]]:
    """Values read from partition 0 of ``topic`` from the beginning, and the error codes seen; up to its
    end when it has one, else (no such topic, no access) for ``seconds``."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"{topic}-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    values: list[bytes] = []
    errors: set[int] = set()
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    break  # read to the end: nothing more is there
                errors.add(message.error().code())
            elif message.value() is not None:
                values.append(message.value())
    finally:
        consumer.close()
    return values, errors


def test_a_purge_deletes_the_topics_so_other_names_on_the_id_read_nothing_old(
    kafka_broker: ApacheKafkaBroker,
    database_url: str,
    topic_name: str,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(database_url, _issuer_kafka(kafka_broker, topic_name))  # the issuer's principal
    admin = AdminClient(kafka_broker.admin_settings().librdkafka())
    org = f"pt{uuid.uuid4().hex[:6]}"
    first = {"org": org, "project": "data-prod", "name": "eu"}
    other = {"org": f"{org}-data", "project": "prod", "name": "eu"}  # the same id
    env_id = issuer.admin.post("/v1/environments", json=first).json()["id"]
    assert env_id == f"{org}-data-prod-eu"
    neighbour = f"{env_id}x-f1"  # shares the characters, not the prefix across a '-'
    create_topics(admin, f"{env_id}-f1", neighbour)
    old = _token_config(kafka_broker, issuer, env_id)
    error, _ = produce_once(old, f"{env_id}-f1")
    assert error is None
    assert _read(old, f"{env_id}-f1")[0] == [b"v"]

    assert issuer.admin.delete(f"/v1/environments/{env_id}", params={"purge": "true"}).status_code == 204

    def purged_entry() -> dict[str, Any] | None:
        entries = issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id}).json()["entries"]
        return next((e for e in entries if e["action"] == "purge_topics"), None)

    entry = _wait(purged_entry)
    assert (entry["actor"], entry["detail"]) == ("system:relay", {"topics_deleted": 1})
    _wait(lambda: f"{env_id}-f1" not in _topics(admin))
    assert {neighbour, topic_name} <= _topics(admin)  # another name's topic and the control topic stay

    created = issuer.admin.post("/v1/environments", json=other)
    assert created.status_code == 201, created.text
    assert (created.json()["id"], created.json()["org"]) == (env_id, f"{org}-data")
    new = _token_config(kafka_broker, issuer, env_id)
    consumer = Consumer({**new, "group.id": f"{env_id}-probe"})
    try:
        shown = consumer.list_topics(timeout=30).topics
        assert not [t for t in shown if t.startswith(f"{env_id}-")]  # no topic of the old environment
        probe = consumer.list_topics(f"{env_id}-f1", timeout=30).topics[f"{env_id}-f1"]
        assert probe.error is not None
        assert probe.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    finally:
        consumer.close()
    values, _errors = _read(new, f"{env_id}-f1")
    assert values == []  # not one record of the old environment
    assert f"{env_id}-f1" not in _topics(admin)  # reading did not bring it back


def test_the_adapter_refuses_clearly_without_delete_on_topics(
    kafka_broker: ApacheKafkaBroker, topic_name: str
) -> None:
    kafka_broker.grant_services(topic_name)
    admin = AdminClient(kafka_broker.admin_settings().librdkafka())
    env_id = f"pt{uuid.uuid4().hex[:6]}-p-prod"
    create_topics(admin, f"{env_id}-f1", topic_name)  # the topic and the control topic (the relay's)
    access = KafkaBrokerAccess(kafka_broker.settings_for(RESOLVER_USER, topic=topic_name), timeout_s=15)
    try:  # the resolver's principal sees every topic (DESCRIBE) but may not delete one
        with pytest.raises(BrokerAccessError, match="TOPIC_AUTHORIZATION_FAILED"):
            access.delete_topics(f"{env_id}-")
    finally:
        access.close()
    assert f"{env_id}-f1" in _topics(admin)
