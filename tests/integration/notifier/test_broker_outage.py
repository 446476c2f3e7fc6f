"""The notifier and its broker: honest readiness when the broker goes away, and a recreated control topic
(an empty Tansu after a restart; on Apache Kafka, a topic deleted and created again) replayed from the
beginning without sending any rotation twice.

Nothing here waits for a fixed time: every wait polls for a state, with a generous bound."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.broker import EmbeddedBroker
from shared.events import TokenStateChanged
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.kafka_broker import ApacheKafkaBroker
from tests.factories import Environment
from tests.integration.notifier.support import Receiver, Resolver, new_environment, produce, rotate
from tests.support import wait_until

FAST = {"topic_check_interval_seconds": 0.5, "lease_seconds": 30}


def _ready(api: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = api.get("/health/ready")
    return response.status_code, dict(response.json())


def _wait_ready(api: httpx.Client, what: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status, detail = _ready(api)
        return detail if status == 200 else None

    detail: dict[str, Any] = wait_until(ready, 90, what, interval=0.2)
    return detail


def _metric(api: httpx.Client, name: str) -> float | None:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _tansu_settings(broker: EmbeddedBroker, topic: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=topic, topic_partitions=3)


def test_readiness_turns_degraded_without_a_broker_and_ready_again_with_one(
    start_notifier: Callable[..., httpx.Client],
    embedded_broker_factory: Callable[..., EmbeddedBroker],
    sqlite_url: str,
    topic_name: str,
) -> None:
    broker = embedded_broker_factory()
    api = start_notifier(sqlite_url, _tansu_settings(broker, topic_name), **FAST)
    detail = _wait_ready(api, "the notifier to join its group")
    assert (detail["status"], detail["consumer"], detail["kafka"], detail["database"]) == (
        "ready",
        "joined",
        "ok",
        "ok",
    )
    assert detail["partitions"] == [0, 1, 2]
    assert "reason" not in detail
    wait_until(lambda: _metric(api, "streamtoken_notifier_group_joined") == 1, 30, "the joined gauge")
    assert _metric(api, "streamtoken_notifier_assigned_partitions") == 3

    broker.stop()

    def degraded() -> dict[str, Any] | None:
        status, detail = _ready(api)
        return detail if status == 503 and detail.get("status") == "degraded" else None

    # Within librdkafka's own error callbacks and statistics: no sleep here, only a bound.
    detail = wait_until(degraded, 60, "readiness to turn degraded without a broker", interval=0.2)
    assert detail["reason"] == "no connection to Kafka"
    assert detail["kafka"] == "down"
    assert detail["database"] == "ok"
    wait_until(lambda: _metric(api, "streamtoken_notifier_ready") == 0, 30, "the ready gauge to drop")
    assert _metric(api, "streamtoken_notifier_kafka_brokers_up") == 0
    assert _metric(api, 'streamtoken_notifier_status{status="degraded"}') == 1

    # A new, empty broker on the same port: the notifier creates its topic again and rejoins by itself.
    embedded_broker_factory(port=broker.port)
    detail = _wait_ready(api, "the notifier to be ready on the new broker")
    assert (detail["consumer"], detail["kafka"]) == ("joined", "ok")
    wait_until(lambda: _metric(api, "streamtoken_notifier_ready") == 1, 30, "the ready gauge to rise")


# --- a recreated control topic ----------------------------------------------------------------------


def _generations(receiver: Receiver, path: str) -> list[int]:
    return sorted(json.loads(r.body)["generation"] for r in receiver.at(path))


def _settled(api: httpx.Client, env: Environment) -> bool:
    """The replay happened, the consumer is caught up, and nothing is pending."""
    status, detail = _ready(api)
    if status != 200 or detail.get("replays", 0) < 1 or detail.get("lag") != 0:
        return False
    pending = api.get("/v1/deliveries", params={"status": "pending"}, headers=env.auth())
    return pending.status_code == 200 and pending.json() == []


def _replay_scenario(
    api: httpx.Client,
    receiver: Receiver,
    receiver_url: str,
    resolver: Resolver,
    publish: Callable[..., None],
    recreate: Callable[[], None],
) -> None:
    """Rotations 2 and 3, the topic recreated, then the issuer's republish of rotation 3 (the same event)
    followed by rotations 4 and 5: every subscription gets 2, 3, 4, 5 exactly once.

    The deployments acknowledge each rotation with their newest token (as the agent does), so their
    subscriptions stay with a valid token."""
    _wait_ready(api, "the notifier to join its group")
    env = new_environment(resolver)
    names = [f"d{i}" for i in range(4)]
    subs: dict[str, dict[str, Any]] = {}
    for name in names:
        body = {"deployment_id": name, "url": f"{receiver_url}/{name}", "action": "reload"}
        response = api.post("/v1/subscriptions", json=body, headers=env.auth(slot=2))
        assert response.status_code == 201, response.text
        subs[name] = response.json()

    def acknowledge(generation: int) -> None:
        for sub in subs.values():
            response = api.post(
                f"/v1/subscriptions/{sub['id']}/acks",
                json={"generation": generation},
                headers=env.auth(slot=2, key=sub["management_key"]),
            )
            assert response.status_code == 200, response.text

    def received(*generations: int) -> bool:
        return all(_generations(receiver, f"/{n}") == list(generations) for n in names)

    events: list[TokenStateChanged] = []
    for generation in (2, 3):
        events.append(rotate(resolver, env))
        publish(events[-1])
        expected = tuple(range(2, generation + 1))
        wait_until(lambda: received(*expected), 60, f"rotation {generation}")  # noqa: B023
        acknowledge(generation)

    recreate()
    # The republish of the current state (rotation 3, same event id) comes first on the new topic: a
    # consumer still at its old position would skip what follows it; one that replays sees it again.
    publish(events[-1], rotate(resolver, env), rotate(resolver, env))
    wait_until(lambda: received(2, 3, 4, 5), 90, "rotations 4 and 5 after the topic was recreated")
    wait_until(lambda: _settled(api, env), 90, "the replay to finish with nothing pending", interval=0.2)

    for name in names:
        requests = receiver.at(f"/{name}")
        assert _generations(receiver, f"/{name}") == [2, 3, 4, 5], name  # nothing sent twice, raw count
        assert len({r.headers["webhook-id"] for r in requests}) == 4
    assert Counter(json.loads(r.body)["generation"] for r in receiver.requests) == {
        2: 4,
        3: 4,
        4: 4,
        5: 4,
    }
    progress = api.get("/v1/rotations", headers=env.auth()).json()["rotations"]
    assert [(r["generation"], r["notified"], r["pending"]) for r in progress] == [
        (5, 4, 0),
        (4, 4, 0),
        (3, 4, 0),
        (2, 4, 0),
    ]
    assert (_metric(api, "streamtoken_notifier_topic_replays_total") or 0) >= 1


def test_a_restarted_tansu_with_an_empty_topic_is_replayed_and_nothing_is_sent_twice(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    embedded_broker_factory: Callable[..., EmbeddedBroker],
    resolver: Resolver,
    sqlite_url: str,
    topic_name: str,
) -> None:
    receiver = Receiver()
    receiver_url = serve_app(receiver)
    broker = embedded_broker_factory()
    kafka = _tansu_settings(broker, topic_name)
    api = start_notifier(sqlite_url, kafka, **FAST)

    def recreate() -> None:
        broker.stop()
        embedded_broker_factory(port=broker.port)  # memory storage: the topic is gone
        ensure_streaming_tokens_topic(kafka)

    _replay_scenario(api, receiver, receiver_url, resolver, lambda *e: produce(kafka, *e), recreate)


def _recreate_on_kafka(admin: KafkaSettings) -> None:
    from confluent_kafka.admin import AdminClient

    client = AdminClient(admin.librdkafka())
    old = client.list_topics(admin.topic, timeout=10).topics[admin.topic]
    assert old.error is None
    client.delete_topics([admin.topic], operation_timeout=30)[admin.topic].result(30)

    def created() -> bool:
        # Deletion finishes in the background; the notifier may also create the topic again itself.
        try:
            ensure_streaming_tokens_topic(admin, timeout=10)
        except Exception:
            return False
        topic = client.list_topics(admin.topic, timeout=10).topics.get(admin.topic)
        return topic is not None and topic.error is None and len(topic.partitions) == admin.topic_partitions

    wait_until(created, 60, "the topic to be created again", interval=0.2)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_deleted_and_recreated_kafka_topic_is_replayed_and_nothing_is_sent_twice(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    kafka_broker: ApacheKafkaBroker,
    kafka_settings: KafkaSettings,
    resolver: Resolver,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    url = str(request.getfixturevalue(f"{database}_url"))
    receiver = Receiver()
    receiver_url = serve_app(receiver)
    api = start_notifier(url, kafka_settings, **FAST)
    admin = kafka_broker.admin_settings(topic=kafka_settings.topic, topic_partitions=3)
    _replay_scenario(
        api,
        receiver,
        receiver_url,
        resolver,
        lambda *e: produce(kafka_settings, *e),
        lambda: _recreate_on_kafka(admin),
    )
