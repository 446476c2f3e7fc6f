"""The token is the key to the broker (issue 9): on the real stack (issuer, resolver, notifier as processes,
each as its own principal) and the session's Apache Kafka, a client configured with the credentials the
Portal API gave its token reaches its own environment and nothing else, and loses the broker when its token
is rotated out or revoked. Clients here are plain confluent-kafka ones and unmodified quixstreams apps."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shared.broker_access import broker_password
from tests.e2e.harness import RunningStack, wait_for
from tests.support import broker_login

# What quixstreams accepts in the broker answer (PORTAL_API.md).
ALLOWED_KEYS = {"bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.username", "sasl.password"}


def _portal_settings(stack: RunningStack, token: str, environment_id: str) -> dict[str, Any]:
    response = stack.client("resolver", token).get(
        f"/workspaces/{environment_id}/broker/librdkafka", headers={"X-Version": "2.0"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _client_config(portal: dict[str, Any]) -> dict[str, Any]:
    """The Portal answer as a confluent-kafka configuration (``ssl.ca.cert`` is base64 PEM, as quixstreams
    decodes it)."""
    config = {k: v for k, v in portal.items() if k != "ssl.ca.cert"}
    config["ssl.ca.pem"] = base64.b64decode(portal["ssl.ca.cert"]).decode("ascii")
    return {**config, "socket.timeout.ms": 10000, "log_level": 0}


def _propagated(stack: RunningStack, environment_id: str) -> Callable[[], bool]:
    def check() -> bool:
        response = stack.issuer.get(f"/v1/environments/{environment_id}/streaming-tokens/propagation")
        return response.status_code == 200 and response.json()["broker"] == "applied"

    return check


def _resolves(stack: RunningStack, token: str) -> Callable[[], bool]:
    return lambda: stack.whoami(token) == 200


def _environment(stack: RunningStack, name: str) -> tuple[str, dict[str, Any]]:
    environment_id = stack.create_environment(name)
    wait_for(f"{environment_id} applied at the broker", _propagated(stack, environment_id), timeout=60)
    tokens = stack.tokens(environment_id)
    for slot in ("token_1", "token_2"):
        wait_for("the resolver to learn the token", _resolves(stack, tokens[slot]["token"]))
    return environment_id, tokens


def _create_topic(stack: RunningStack, token: str, environment_id: str, name: str) -> str:
    response = stack.client("resolver", token).post(
        f"/{environment_id}/topics",
        headers={"X-Version": "2.0"},
        json={"name": name, "configuration": {"partitions": 1, "replicationFactor": None,
                                              "retentionInMinutes": None, "retentionInBytes": None,
                                              "cleanupPolicy": None}},
    )  # fmt: skip
    assert response.status_code in {200, 201}, response.text
    return str(response.json()["id"])


def _produce(
    config: dict[str, Any], topic: str, value: bytes = b"x", timeout: float = 20.0
) -> KafkaError | None:
    """Produce one record with an idempotent producer; the delivery error, or None when acknowledged."""
    producer = Producer({**config, "enable.idempotence": True, "message.timeout.ms": int(timeout * 1000)})
    try:
        return _produce_with(producer, topic, value, timeout)
    finally:
        producer.flush(0)


def _produce_with(producer: Producer, topic: str, value: bytes, timeout: float = 20.0) -> KafkaError | None:
    results: list[KafkaError | None] = []
    producer.produce(topic, value=value, on_delivery=lambda err, _msg: results.append(err))
    deadline = time.monotonic() + timeout + 5
    while not results and time.monotonic() < deadline:
        producer.poll(0.1)
    assert results, f"no delivery report for {topic}"
    return results[0]


def _first_error(consumer: Consumer, timeout: float = 30.0) -> KafkaError | None:
    """The first error the consumer reports (as a message error or an exception), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = consumer.poll(0.5)
        except KafkaException as exc:
            return exc.args[0]
        if message is not None and message.error() is not None:
            return message.error()
    return None


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Kafka clients to close at the end of the test."""
    clients: list[Any] = []
    yield clients
    for client in clients:
        if isinstance(client, Consumer):
            client.close()
        else:
            client.flush(0)


def test_a_token_reaches_only_its_own_environment_at_the_broker(e2e_stack: RunningStack) -> None:
    dev_id, dev = _environment(e2e_stack, "dev")
    prod_id, prod = _environment(e2e_stack, "prod")
    dev_1, prod_1 = dev["token_1"], prod["token_1"]
    portal = _portal_settings(e2e_stack, dev_1["token"], dev_id)
    assert set(portal) <= ALLOWED_KEYS | {"ssl.ca.cert"}
    assert portal["security.protocol"] == "SASL_SSL"
    assert portal["sasl.mechanism"] == "SCRAM-SHA-256"
    assert portal["sasl.username"] == dev_1["token_id"]
    assert portal["sasl.password"] == broker_password(dev_1["token"])
    assert b"BEGIN CERTIFICATE" in base64.b64decode(portal["ssl.ca.cert"])
    # Another environment's workspace gives no credentials.
    assert (
        e2e_stack.client("resolver", dev_1["token"])
        .get(f"/workspaces/{prod_id}/broker/librdkafka")
        .status_code
        == 403
    )

    config = _client_config(portal)
    dev_topic = _create_topic(e2e_stack, dev_1["token"], dev_id, "f1-data")
    prod_topic = _create_topic(e2e_stack, prod_1["token"], prod_id, "f1-data")
    control_topic = e2e_stack.env["STREAMTOKEN_KAFKA_TOPIC"]

    assert _produce(config, dev_topic) is None
    # Prod's topic and the control topic: refused by the broker's authorizer.
    for topic in (prod_topic, control_topic):
        error = _produce(config, topic)
        assert error is not None
        assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, error)
    forged = json.dumps({"environment_id": prod_id, "generation": 2**62}).encode()
    assert _produce(config, control_topic, forged) is not None

    # Reading prod's topic or the control topic (no group involved) is refused: the broker does not even
    # describe them to dev's principal, and no record arrives.
    for topic in (prod_topic, control_topic):
        reader = Consumer({**config, "group.id": f"{dev_id}-reader", "enable.auto.commit": False})
        try:
            metadata = reader.list_topics(topic, timeout=10).topics[topic]
            assert metadata.error is not None, topic
            assert metadata.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, metadata.error)
            with pytest.raises(KafkaException):
                reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            reader.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                message = reader.poll(0.5)
                assert message is None or message.error() is not None, topic
        finally:
            reader.close()

    # A consumer group of prod, or one of our services', is refused even on dev's own topic.
    for group in (f"{prod_id}-telemetry", "notifier", dev_id):
        consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
        try:
            consumer.subscribe([dev_topic])
            error = _first_error(consumer)
        finally:
            consumer.close()
        assert error is not None, group
        assert error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, (group, error)
    # ... while dev's own group reads dev's topic.
    own = Consumer({**config, "group.id": f"{dev_id}-telemetry", "auto.offset.reset": "earliest"})
    try:
        own.subscribe([dev_topic])
        deadline, received = time.monotonic() + 30, None
        while received is None and time.monotonic() < deadline:
            message = own.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                received = message.value()
        assert received == b"x"
    finally:
        own.close()

    # Exactly-once under prod's transactional id is refused; under dev's own it works.
    foreign = Producer({**config, "transactional.id": f"{prod_id}-{uuid.uuid4().hex}"})
    with pytest.raises(KafkaException) as refused:
        foreign.init_transactions(20)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    mine = Producer({**config, "transactional.id": f"{dev_id}-{uuid.uuid4().hex}"})
    mine.init_transactions(20)
    mine.begin_transaction()
    mine.produce(dev_topic, value=b"in a transaction")
    mine.commit_transaction(20)

    # No topic creation at the broker (topics are made through the Portal API), no cluster operation.
    admin = AdminClient(config)
    created = admin.create_topics([NewTopic(f"{dev_id}-direct", 1, 1)], request_timeout=15)
    with pytest.raises(KafkaException) as denied:
        created[f"{dev_id}-direct"].result(20)
    assert denied.value.args[0].code() in {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }

    # No credentials, or a wrong password: no connection at all.
    anonymous = {k: v for k, v in config.items() if not k.startswith("sasl.")}
    # (a SASL listener says nothing to a client that skips SASL: no answer, where a login takes < 1 s)
    assert broker_login({**anonymous, "security.protocol": "SSL"}, timeout=3) != "accepted"
    assert broker_login({**config, "sasl.password": broker_password(prod_1["token"])}) == "refused"
    assert broker_login({**config, "sasl.username": prod_1["token_id"]}) == "refused"


def test_rotation_and_revoke_cut_the_old_tokens_off_at_the_broker(
    e2e_stack: RunningStack, closing: list[Any]
) -> None:
    env_id, before = _environment(e2e_stack, "cutoff")
    old_1, old_2 = before["token_1"], before["token_2"]
    old_config = _client_config(_portal_settings(e2e_stack, old_1["token"], env_id))
    topic = _create_topic(e2e_stack, old_1["token"], env_id, "f1-data")

    producer = Producer({**old_config, "enable.idempotence": True, "message.timeout.ms": 15000})
    closing.append(producer)
    assert _produce_with(producer, topic, b"before") is None
    consumer = Consumer({**old_config, "group.id": f"{env_id}-readers", "auto.offset.reset": "earliest"})
    closing.append(consumer)
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    first = None
    while first is None and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            first = message.value()
    assert first == b"before"

    rotated = e2e_stack.issuer.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
    assert rotated.status_code == 200, rotated.text
    wait_for("the rotation applied at the broker", _propagated(e2e_stack, env_id), timeout=60)

    # The open producer and consumer of the deactivated token fail on their next request.
    error = _produce_with(producer, topic, b"after")
    assert error is not None
    assert error.code() in {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._MSG_TIMED_OUT}, error
    consumer_error = _first_error(consumer)
    assert consumer_error is not None
    assert consumer_error.code() in {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }, consumer_error
    # Its new connections are refused: the SCRAM user is gone.
    assert broker_login(old_config) == "refused"

    # The promoted Token 1 (the old Token 2) and the new Token 2 work.
    after = rotated.json()
    assert after["token_1"]["token_id"] == old_2["token_id"]
    new_2 = after["token_2"]
    wait_for("the resolver to learn the new Token 2", lambda: e2e_stack.whoami(new_2["token"]) == 200)
    for token in (old_2, new_2):
        config = _client_config(_portal_settings(e2e_stack, token["token"], env_id))
        assert _produce(config, topic) is None, token["token_id"]

    # Revoke: both tokens lose the broker.
    configs = [_client_config(_portal_settings(e2e_stack, t["token"], env_id)) for t in (old_2, new_2)]
    revoked = e2e_stack.issuer.post(f"/v1/environments/{env_id}/streaming-tokens/revoke")
    assert revoked.status_code == 200, revoked.text
    wait_for("the revocation applied at the broker", _propagated(e2e_stack, env_id), timeout=60)
    for config in configs:
        assert broker_login(config) == "refused"
    fresh = revoked.json()["token_1"]
    wait_for("the resolver to learn the new Token 1", lambda: e2e_stack.whoami(fresh["token"]) == 200)
    assert _produce(_client_config(_portal_settings(e2e_stack, fresh["token"], env_id)), topic) is None


def test_an_unmodified_quixstreams_app_runs_exactly_once_with_its_portal_credentials(
    e2e_stack: RunningStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """quixstreams with only Quix__Sdk__Token and Quix__Portal__Api: a stateful transform under
    exactly-once (transactional id ``{env}-…``, group ``{env}-…``, changelog topic via the Portal API)."""
    from quixstreams import Application

    env_id, tokens = _environment(e2e_stack, "eos")
    monkeypatch.delenv("Quix__Broker__Address", raising=False)
    monkeypatch.delenv("Quix__Workspace__Id", raising=False)
    monkeypatch.setenv("Quix__Portal__Api", e2e_stack.urls["resolver"])
    monkeypatch.setenv("Quix__Sdk__Token", tokens["token_1"]["token"])

    app = Application(
        consumer_group="lap-totals",
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=str(tmp_path / "state"),
        request_timeout=15,
        topic_create_timeout=60,
    )
    laps = app.topic("laps", value_serializer="json", value_deserializer="json")
    totals = app.topic("lap-totals", value_serializer="json", value_deserializer="json")
    with app.get_producer() as producer:
        for lap in range(5):
            message = laps.serialize(key="car-44", value={"lap": lap})
            producer.produce(topic=laps.name, key=message.key, value=message.value)

    def count(value: dict[str, Any], state: Any) -> dict[str, Any]:
        total = int(state.get("total", 0)) + 1
        state.set("total", total)
        return {"lap": value["lap"], "total": total}

    app.dataframe(laps).apply(count, stateful=True).to_topic(totals)
    app.run(count=5, timeout=60)
    assert laps.name == f"{env_id}-laps"
    assert totals.name == f"{env_id}-lap-totals"

    # What the transactions committed, read with the app's own credentials (read_committed).
    config = _client_config(_portal_settings(e2e_stack, tokens["token_1"]["token"], env_id))
    reader = Consumer(
        {**config, "group.id": f"{env_id}-check", "auto.offset.reset": "earliest",
         "isolation.level": "read_committed"}
    )  # fmt: skip
    try:
        reader.subscribe([totals.name])
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while len(seen) < 5 and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                seen.append(json.loads(message.value())["total"])
    finally:
        reader.close()
    assert seen == [1, 2, 3, 4, 5]
