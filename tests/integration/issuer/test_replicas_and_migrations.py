"""Several issuer replicas share one PostgreSQL database; migrations keep data; an empty topic is refilled."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import sqlalchemy as sa

from services.issuer.adapters import migrate
from services.issuer.adapters.db import make_engine
from shared.events import decode_event
from shared.kafka import KafkaSettings
from tests.integration.issuer.conftest import RunningIssuer, read_topic

ENV = {"org": "acme", "project": "telemetry"}


def test_two_replicas_publish_each_environment_in_order(
    postgres_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    first = issuer_factory(postgres_url, kafka_settings)
    second = issuer_factory(postgres_url, kafka_settings)
    names = ["a", "b", "c"]
    for name in names:
        assert first.admin.post("/v1/environments", json={**ENV, "name": name}).status_code == 201
    headers = [dict(first.admin.headers), dict(second.admin.headers)]
    urls = [first.url, second.url]

    def rotate(i: int) -> int:
        replica = i % 2
        name = names[i % len(names)]
        with httpx.Client(base_url=urls[replica], headers=headers[replica], timeout=60) as client:
            response = client.post(f"/v1/environments/acme-telemetry-{name}/streaming-tokens/rotate")
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(rotate, range(30))) == {200}

    records = read_topic(kafka_settings, expected=3 + 30)
    by_env: dict[str, list[int]] = {}
    for record in records:
        event = decode_event(record.value)
        assert event is not None
        assert record.key is not None
        by_env.setdefault(record.key, []).append(event.generation)
    # Publishing is at-least-once (a retry after an unacknowledged delivery may repeat a record), but each
    # environment's records are in order and its newest state comes last.
    assert set(by_env) == {f"acme-telemetry-{n}" for n in names}
    for env_id, generations in by_env.items():
        assert sorted(set(generations)) == list(range(1, 12)), (env_id, generations)
        assert generations == sorted(generations), (env_id, generations)


def test_migrations_are_idempotent_and_keep_data(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json={**ENV, "name": "prod"}).status_code == 201
    engine = make_engine(database_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.upgrade(engine)  # what a restart or a second replica does
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM environment")).scalar_one() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM streaming_token")).scalar_one() == 2
    finally:
        engine.dispose()
    restarted = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert restarted.admin.get("/v1/environments/acme-telemetry-prod/streaming-tokens").status_code == 200


def test_an_issuer_starting_on_an_empty_topic_republishes_everything(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[[str], str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings)
    for name in ("prod", "dev"):
        assert issuer.admin.post("/v1/environments", json={**ENV, "name": name}).status_code == 201
    issuer.admin.post("/v1/environments/acme-telemetry-prod/streaming-tokens/rotate")
    issuer.admin.delete("/v1/environments/acme-telemetry-dev")
    assert len(read_topic(kafka_settings, expected=4, settle=0)) == 4
    issuer.app.relay.stop()  # the old instance is gone (SQLite: one relay per database file)

    fresh = kafka_settings.model_copy(update={"topic": topic_factory("fresh")})
    issuer_factory(sqlite_url, fresh)  # a restart against a broker that lost the topic
    records = read_topic(fresh, expected=2)
    events = {r.key: decode_event(r.value) for r in records}
    assert {key: (event.generation if event else None) for key, event in events.items()} == {
        "acme-telemetry-prod": 2,
        "acme-telemetry-dev": None,  # deleted: a tombstone
    }


def test_housekeeping_forgets_published_rows_and_old_idempotency_keys(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    from datetime import UTC, datetime, timedelta

    issuer = issuer_factory(sqlite_url, kafka_settings)
    assert issuer.admin.post("/v1/environments", json={**ENV, "name": "prod"}).status_code == 201
    rotate = "/v1/environments/acme-telemetry-prod/streaming-tokens/rotate"
    first = issuer.admin.post(rotate, headers={"Idempotency-Key": "k"}).json()
    read_topic(kafka_settings, expected=2, settle=0)
    store = issuer.app.store
    deadline = time.monotonic() + 10
    while store.pending_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert store.purge(later, later) == (2, 1, 0)
    assert store.purge(later, later) == (0, 0, 0)
    again = issuer.admin.post(rotate, headers={"Idempotency-Key": "k"}).json()
    assert again["generation"] == first["generation"] + 1  # the key expired: a new rotation


def test_topic_emptiness_is_read_by_a_consumer(kafka_settings: KafkaSettings) -> None:
    from services.issuer.adapters.kafka import KafkaTopicAdmin, QuixPublisher
    from services.issuer.ports import OutboxMessage

    admin = KafkaTopicAdmin(kafka_settings)
    assert admin.ensure_topic() is True
    assert admin.ensure_topic() is False
    assert admin.is_empty() is True
    publisher = QuixPublisher(kafka_settings, delivery_timeout_s=5)
    try:
        from datetime import UTC, datetime

        (delivery,) = publisher.publish(
            [OutboxMessage(1, "acme-telemetry-prod", 1, b"{}", datetime.now(UTC))]
        )
        assert delivery.error is None
    finally:
        publisher.close()
    assert admin.is_empty() is False
