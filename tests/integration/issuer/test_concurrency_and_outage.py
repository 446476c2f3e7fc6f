"""Concurrent rotations keep generations gap-free; a broker outage loses no rotation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import sqlalchemy as sa

from shared.broker import EmbeddedBroker
from shared.events import TokenStateChanged, decode_event
from shared.kafka import KafkaSettings
from tests.integration.issuer.conftest import RunningIssuer, read_topic

ENV = {"org": "acme", "project": "telemetry", "name": "prod"}
ENV_ID = "acme-telemetry-prod"
TOKENS = f"/v1/environments/{ENV_ID}/streaming-tokens"
ROTATIONS = 20


def test_twenty_concurrent_rotations_are_serialised(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    start = threading.Barrier(ROTATIONS)
    headers = dict(issuer.admin.headers)

    def rotate(_: int) -> httpx.Response:
        with httpx.Client(base_url=issuer.url, headers=headers, timeout=60.0) as client:
            start.wait(30)
            return client.post(f"{TOKENS}/rotate")

    with ThreadPoolExecutor(ROTATIONS) as pool:
        responses = list(pool.map(rotate, range(ROTATIONS)))

    assert [r.status_code for r in responses] == [200] * ROTATIONS, [r.text for r in responses][:3]
    generations = sorted(r.json()["generation"] for r in responses)
    assert generations == list(range(2, ROTATIONS + 2))  # unique and gap-free
    by_generation = {r.json()["generation"]: r.json() for r in responses}
    for generation in range(3, ROTATIONS + 2):  # each promoted the Token 2 of the one before
        assert by_generation[generation]["token_1"] == by_generation[generation - 1]["token_2"]

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            valid = connection.execute(
                sa.text("SELECT slot FROM streaming_token WHERE environment_id = :e AND state <> 'ended'"),
                {"e": ENV_ID},
            ).all()
            outbox = connection.execute(
                sa.text("SELECT generation FROM outbox WHERE environment_id = :e ORDER BY id"), {"e": ENV_ID}
            ).all()
    finally:
        engine.dispose()
    assert sorted(row[0] for row in valid) == [1, 2]  # exactly two valid tokens at the end
    assert [row[0] for row in outbox] == list(range(1, ROTATIONS + 2))  # one event per change, in order
    final = issuer.admin.get(TOKENS).json()
    assert final["generation"] == ROTATIONS + 1
    assert final["token_2"] == by_generation[ROTATIONS + 1]["token_2"]

    records = read_topic(kafka_settings, expected=ROTATIONS + 1)
    events = [decode_event(r.value) for r in records]
    assert [e.generation for e in events if e] == list(range(1, ROTATIONS + 2))  # one each, in order
    assert len({r.partition for r in records}) == 1


def test_broker_outage_loses_no_rotation(
    database_url: str,
    topic_name: str,
    embedded_broker_factory: Callable[..., EmbeddedBroker],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    broker = embedded_broker_factory()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=topic_name, topic_partitions=3)
    issuer = issuer_factory(
        database_url, kafka, settings={"relay_delivery_timeout_s": 2.0, "usage_fold_enabled": False}
    )  # fold off on Tansu: see test_broker_and_database_faults.py
    names = [f"env{i}" for i in range(5)]
    for name in names:
        assert issuer.admin.post("/v1/environments", json={**ENV, "name": name}).status_code == 201
    assert len(read_topic(kafka, expected=len(names), settle=0)) == len(names)

    broker.stop()
    for _ in range(10):
        for name in names:
            response = issuer.admin.post(f"/v1/environments/acme-telemetry-{name}/streaming-tokens/rotate")
            assert response.status_code == 200, response.text  # the API works while Kafka is down
    relay = issuer.app.relay
    deadline = time.monotonic() + 30
    while relay.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert relay.failures > 0
    while "streamtoken_issuer_outbox_depth 50.0" not in issuer.anonymous.get("/metrics").text:
        assert time.monotonic() < deadline, "the outbox depth metric never showed the 50 pending rotations"
        time.sleep(0.2)
    assert issuer.admin.get("/health/ready").json()["kafka"].startswith("retrying")

    embedded_broker_factory(port=broker.port)  # a fresh broker: empty, the topic is gone
    latest = {
        f"acme-telemetry-{name}": issuer.admin.get(
            f"/v1/environments/acme-telemetry-{name}/streaming-tokens"
        ).json()
        for name in names
    }
    # The 50 pending rotations. The relay found the topic missing and queued a republish, but every
    # environment's newest state was among those pending rows already, so it added no record.
    records = read_topic(kafka, expected=50, timeout=60)
    seen: dict[str, list[int]] = {}
    last: dict[str, TokenStateChanged] = {}
    for record in records:
        event = decode_event(record.value)
        assert event is not None
        assert record.key is not None
        seen.setdefault(record.key, []).append(event.generation)
        last[record.key] = event
    assert set(seen) == set(latest)
    for env_id, state in latest.items():
        assert state["generation"] == 11
        assert set(range(2, 12)) <= set(seen[env_id]), env_id  # no rotation lost
        assert seen[env_id] == sorted(seen[env_id])  # in order per environment
        newest = last[env_id]
        assert newest.generation == 11
        fingerprints = {(t.slot, t.fingerprint) for t in newest.tokens}
        assert fingerprints == {
            (1, state["token_1"]["fingerprint"]),
            (2, state["token_2"]["fingerprint"]),
        }
    # Healthy again once the relay's next control-topic check answers (within about a second of publishing).
    deadline = time.monotonic() + 30
    while (kafka_health := issuer.admin.get("/health/ready").json()["kafka"]) != "ok":
        assert time.monotonic() < deadline, kafka_health
        time.sleep(0.2)
