"""A recreated control topic (issue 10) on both brokers: the resolver notices, keeps answering from its last
good table while it replays the new topic into a new one, and swaps that in once caught up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from services.resolver.bootstrap import build_app
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from tests.integration.resolver.conftest import Record, produce, resolver_settings, wait_ready
from tests.support import wait_until
from tests.unit.resolver.factories import Env


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _whoami(url: str, token: str) -> int:
    return httpx.get(f"{url}/v1/whoami", headers=bearer(token)).status_code


def _health(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}/health/ready")
    return r.status_code, r.json()


def _before(dev: Env, prod: Env) -> list[Record]:
    """Five records: the old topic's positions lie beyond the end of the republished one."""
    records: list[Record] = [(dev.environment_id, dev.event()), (prod.environment_id, prod.event())]
    records += [(dev.environment_id, dev.rotate()) for _ in range(3)]
    return records


def test_restarted_embedded_broker_topic_recreated_is_replayed_into_a_new_table(
    embedded_broker_factory: Callable[..., Any], serve_app: Callable[..., str], topic_name: str
) -> None:
    broker = embedded_broker_factory()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=topic_name, topic_partitions=1)
    dev, prod = Env("acme-telemetry-dev"), Env("acme-telemetry-prod")
    first_dev_token = dev.token_1
    produce(kafka, _before(dev, prod))
    # The resolver does not create the topic itself here, so the gap between the restart and the
    # issuer's republish (topic missing) can be observed without racing anything.
    app = build_app(resolver_settings(kafka, degraded_after_seconds=1.0, rebuild_empty_grace_seconds=600))
    app.state.replica.create_topic = False
    url = serve_app(app)
    wait_ready(url)
    assert _whoami(url, dev.token_1) == 200

    broker.stop()
    # A supervisor restarts the broker after a back-off; the resolver has paused fetching by then (an
    # assigned librdkafka consumer fetching from the restarted broker crashes the process: see replica.py).
    wait_until(lambda: _health(url)[1]["consumer"] == "paused", 60, "fetching paused")
    assert _health(url)[1]["kafka"] == "down"
    broker.start()  # memory storage: no topic at all now; it comes back empty with a new id

    wait_until(lambda: _health(url)[1].get("problem") == "control topic missing", 60, "topic missing seen")
    code, body = _health(url)
    assert (code, body["status"]) == (503, "degraded")
    assert _whoami(url, dev.token_1) == 200  # the last good table keeps answering

    fresh = Env("acme-telemetry-new")
    republish: list[Record] = [(dev.environment_id, dev.event()), (prod.environment_id, prod.event())]
    produce(kafka, [*republish, (fresh.environment_id, fresh.event())])
    wait_until(lambda: _whoami(url, fresh.token_1) == 200, 60, "the new environment's token accepted")
    wait_until(lambda: _health(url)[1]["status"] == "ready", 30, "ready again after the rebuild")
    code, body = _health(url)
    assert code == 200
    assert body["environments"] == 3
    assert body["rebuilds"] == 1
    assert _whoami(url, dev.token_1) == 200
    assert _whoami(url, prod.token_1) == 200
    assert _whoami(url, first_dev_token) == 401
    metrics = httpx.get(f"{url}/metrics").text
    assert 'streamtoken_resolver_rebuilds_total{reason="topic recreated"} 1.0' in metrics


def test_deleted_and_recreated_topic_on_apache_kafka_is_replayed_into_a_new_table(
    kafka_settings: KafkaSettings, serve_app: Callable[..., str]
) -> None:
    from confluent_kafka.admin import AdminClient

    dev, prod = Env("acme-telemetry-dev"), Env("acme-telemetry-prod")
    first_dev_token = dev.token_1
    produce(kafka_settings, _before(dev, prod))
    app = build_app(
        resolver_settings(kafka_settings, degraded_after_seconds=1.0, rebuild_empty_grace_seconds=600)
    )
    app.state.replica.create_topic = False
    url = serve_app(app)
    wait_ready(url)

    admin = AdminClient(kafka_settings.librdkafka())
    admin.delete_topics([kafka_settings.topic], operation_timeout=30)[kafka_settings.topic].result()
    wait_until(lambda: _health(url)[1].get("problem") == "control topic missing", 60, "topic missing seen")
    assert _health(url)[0] == 503
    assert _whoami(url, dev.token_1) == 200

    wait_until(lambda: _recreate(kafka_settings), 60, "topic recreated")
    fresh = Env("acme-telemetry-new")
    republish: list[Record] = [(dev.environment_id, dev.event()), (prod.environment_id, prod.event())]
    produce(kafka_settings, [*republish, (fresh.environment_id, fresh.event())])
    wait_until(lambda: _whoami(url, fresh.token_1) == 200, 60, "the new environment's token accepted")
    wait_until(lambda: _health(url)[1]["status"] == "ready", 30, "ready again after the rebuild")
    code, body = _health(url)
    assert code == 200
    assert body["environments"] == 3
    assert body["rebuilds"] == 1
    assert _whoami(url, dev.token_1) == 200
    assert _whoami(url, prod.token_1) == 200
    assert _whoami(url, first_dev_token) == 401


def _recreate(kafka: KafkaSettings) -> bool:
    """Kafka deletes a topic asynchronously: creating it again fails until the deletion is done."""
    try:
        ensure_streaming_tokens_topic(kafka)
    except Exception:
        return False
    return True
