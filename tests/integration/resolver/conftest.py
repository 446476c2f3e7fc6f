"""Helpers for resolver integration tests: produce ``shared.events`` records, run a resolver, wait for it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest

from services.resolver.bootstrap import build_app
from services.resolver.settings import ResolverSettings
from shared.broker_access import broker_password
from shared.events import TokenStateChanged, encode_event, encode_key
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from tests.support import wait_until
from tests.unit.resolver.factories import Env

Record = tuple[str, TokenStateChanged | None]


def produce(kafka: KafkaSettings, records: Iterable[Record], linger_ms: int = 5) -> int:
    """Produce records keyed by environment id (``None`` = tombstone) and wait for every delivery."""
    from confluent_kafka import Producer

    ensure_streaming_tokens_topic(kafka)
    producer = Producer({**kafka.librdkafka(), "linger.ms": linger_ms, "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err: Any, _: Any) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    for key, event in records:
        value = None if event is None else encode_event(event)
        while True:
            try:
                producer.produce(kafka.topic, key=encode_key(key), value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0, "records not delivered in time"
    assert not failures, failures
    return count


def grant_broker_access(kafka: KafkaSettings, *envs: Env) -> None:
    """Make the broker's SCRAM users and ACLs match these environments' tokens, as the issuer's relay does
    before it publishes their state (the tests here produce that state themselves)."""
    from services.issuer.adapters.broker import KafkaBrokerAccess

    access = KafkaBrokerAccess(kafka)
    try:
        for env in envs:
            tokens = [(env.id_1, broker_password(env.token_1)), (env.id_2, broker_password(env.token_2))]
            access.sync_environment(env.environment_id, tokens)
    finally:
        access.close()


def wait_ready(url: str, timeout: float = 30.0) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{url}/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout, "resolver ready")


def resolver_settings(kafka: KafkaSettings, **extra: Any) -> ResolverSettings:
    return ResolverSettings(kafka=kafka, probe_interval_seconds=0.2, metadata_cache_seconds=0.5, **extra)


@pytest.fixture
def start_resolver(serve_app: Callable[..., str], kafka_settings: KafkaSettings) -> Callable[..., str]:
    """``url = start_resolver()``: a resolver on this test's topic, served on loopback (not yet ready)."""

    def start(**extra: Any) -> str:
        return serve_app(build_app(resolver_settings(kafka_settings, **extra)))

    return start
