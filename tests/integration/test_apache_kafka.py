"""The session's Apache Kafka itself: authenticated readiness, refused anonymous logins, and the least
privilege of our own services' principals (BROKER.md; ``shared.broker_access.service_grants``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from shared.broker_access import ISSUER_USER, NOTIFIER_USER, RESOLVER_USER
from shared.kafka import ensure_streaming_tokens_topic, ensure_topic
from shared.kafka_broker import ApacheKafkaBroker


def _produce(config: dict[str, Any], topic: str) -> KafkaError | None:
    producer = Producer({**config, "message.timeout.ms": 15000, "log_level": 0})
    results: list[KafkaError | None] = []
    producer.produce(topic, key=b"k", value=b"x", on_delivery=lambda err, _msg: results.append(err))
    deadline = time.monotonic() + 20
    while not results and time.monotonic() < deadline:
        producer.poll(0.1)
    assert results, topic
    return results[0]


def test_the_broker_was_ready_only_once_an_authenticated_call_answered(
    kafka_broker: ApacheKafkaBroker,
) -> None:
    assert kafka_broker.ready_after_s is not None
    admin = AdminClient(kafka_broker.admin_settings().librdkafka())
    assert admin.describe_cluster(request_timeout=10).result(15).nodes
    anonymous = {"bootstrap.servers": kafka_broker.bootstrap_servers, "security.protocol": "PLAINTEXT"}
    with pytest.raises(KafkaException):
        AdminClient({**anonymous, "socket.timeout.ms": 3000, "log_level": 0}).list_topics(timeout=5)
    wrong = {**kafka_broker.admin_settings().librdkafka(), "sasl.password": "wrong", "log_level": 0}
    with pytest.raises(KafkaException):
        AdminClient(wrong).list_topics(timeout=5)


def test_each_service_principal_may_do_only_its_part(
    kafka_broker: ApacheKafkaBroker, topic_name: str
) -> None:
    kafka_broker.grant_services(topic_name)
    issuer = kafka_broker.settings_for(ISSUER_USER, topic=topic_name)
    resolver = kafka_broker.settings_for(RESOLVER_USER, topic=topic_name)
    notifier = kafka_broker.settings_for(NOTIFIER_USER, topic=topic_name)
    ensure_streaming_tokens_topic(issuer)

    assert _produce(issuer.librdkafka(), topic_name) is None  # the issuer writes the control topic ...
    for reader in (resolver, notifier):  # ... the resolver and the notifier only read it
        error = _produce(reader.librdkafka(), topic_name)
        assert error is not None
        assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # The resolver creates tenants' topics (Portal API); the notifier and the issuer cannot.
    tenant_topic = f"acme-telemetry-{topic_name}-f1-data"
    assert ensure_topic(resolver, tenant_topic, 1, {"cleanup.policy": "delete"})
    for other in (issuer, notifier):
        with pytest.raises(KafkaException):
            ensure_topic(other, f"{tenant_topic}-{other.sasl_username}", 1, {"cleanup.policy": "delete"})
    # No service writes a tenant's topic.
    for service in (issuer, resolver, notifier):
        error = _produce(service.librdkafka(), tenant_topic)
        assert error is not None, service.sasl_username
    # Only the issuer manages users and ACLs (ALTER on the cluster).
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    binding = AclBinding(
        ResourceType.TOPIC, "x-", ResourcePatternType.PREFIXED, "User:tid_x", "*",
        AclOperation.READ, AclPermissionType.ALLOW,
    )  # fmt: skip
    for service in (resolver, notifier):
        admin = AdminClient({**service.librdkafka(), "log_level": 0})
        with pytest.raises(KafkaException) as refused:
            admin.create_acls([binding], request_timeout=10)[binding].result(15)
        assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    issuer_admin = AdminClient(issuer.librdkafka())
    issuer_admin.create_acls([binding], request_timeout=10)[binding].result(15)
    same = AclBindingFilter(
        ResourceType.TOPIC, "x-", ResourcePatternType.PREFIXED, "User:tid_x", "*",
        AclOperation.READ, AclPermissionType.ALLOW,
    )  # fmt: skip
    for result in issuer_admin.delete_acls([same], request_timeout=10).values():
        assert len(result.result(15)) == 1
