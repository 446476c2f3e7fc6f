"""The replica against the real broker: replay, readiness, propagation of rotations, restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from services.resolver.metrics import ResolverMetrics
from services.resolver.replica import Status, TableReplica
from services.resolver.table import EnvironmentState, TokenTable, tokens_of
from shared.events import TokenStateChanged
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from tests.integration.resolver.conftest import Record, produce, wait_ready
from tests.support import wait_until
from tests.unit.resolver.factories import Env


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rotation_refuses_old_token_1_and_keeps_promoted_token(
    kafka_settings: KafkaSettings, start_resolver: Callable[..., str]
) -> None:
    dev, prod = Env("acme-telemetry-dev"), Env("acme-telemetry-prod")
    produce(kafka_settings, [(dev.environment_id, dev.event()), (prod.environment_id, prod.event())])
    url = start_resolver()
    wait_ready(url)
    who = httpx.get(f"{url}/v1/whoami", headers=bearer(dev.token_1)).json()
    assert who == {"environment_id": dev.environment_id, "slot": 1, "token_id": dev.id_1, "generation": 1}

    old_1, promoted = dev.token_1, dev.token_2
    produce(kafka_settings, [(dev.environment_id, dev.rotate())])
    wait_until(
        lambda: httpx.get(f"{url}/v1/whoami", headers=bearer(old_1)).status_code == 401,
        10,
        "old Token 1 refused",
    )
    refused = httpx.get(f"{url}/v1/topics/f1-data", headers=bearer(old_1))
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_token"
    assert old_1 not in refused.text
    who = httpx.get(f"{url}/v1/whoami", headers=bearer(promoted)).json()
    assert who == {"environment_id": dev.environment_id, "slot": 1, "token_id": dev.id_1, "generation": 2}
    assert httpx.get(f"{url}/v1/whoami", headers=bearer(dev.token_2)).json()["slot"] == 2
    # The other environment is untouched.
    assert httpx.get(f"{url}/v1/whoami", headers=bearer(prod.token_1)).status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'streamtoken_resolver_status{status="ready"} 1.0' in metrics
    assert "streamtoken_resolver_table_environments 2.0" in metrics


def test_empty_topic_is_ready(kafka_settings: KafkaSettings, start_resolver: Callable[..., str]) -> None:
    ensure_streaming_tokens_topic(kafka_settings)
    url = start_resolver()
    wait_ready(url, 15)
    body = httpx.get(f"{url}/health/ready").json()
    assert body["status"] == "ready"
    assert body["environments"] == 0


def _history(n_envs: int) -> tuple[list[Record], dict[str, TokenStateChanged]]:
    """Creates, rotations, stale re-sends and deletions; returns the records and the expected final state."""
    envs = [Env(f"org{i % 7}-proj-env{i}") for i in range(n_envs)]
    records: list[Record] = []
    final: dict[str, TokenStateChanged] = {}
    for env in envs:
        first = env.event()
        records.append((env.environment_id, first))
        final[env.environment_id] = first
    for i, env in enumerate(envs):
        if i % 3 == 0:
            event = env.rotate()
            records.append((env.environment_id, event))
            records.append((env.environment_id, final[env.environment_id]))  # stale, must be ignored
            final[env.environment_id] = event
        if i % 10 == 1:
            records.append((env.environment_id, None))
            del final[env.environment_id]
    return records, final


def _expected(final: dict[str, TokenStateChanged]) -> dict[str, EnvironmentState]:
    return {k: EnvironmentState(k, e.generation, tokens_of(e)) for k, e in final.items()}


async def _replay(kafka: KafkaSettings) -> TokenTable:
    table = TokenTable()
    replica = TableReplica(table, kafka, ResolverMetrics(), probe_interval_seconds=0.2)
    await replica.start()
    try:
        for _ in range(300):
            if replica.status is Status.READY:
                break
            await asyncio.sleep(0.05)
        assert replica.status is Status.READY
    finally:
        await replica.stop()
    return table


def test_restarted_replica_rebuilds_exactly_the_same_table(kafka_settings: KafkaSettings) -> None:
    records, final = _history(3000)
    produce(kafka_settings, records, linger_ms=50)  # multi-record batches (ListOffsets is wrong on Tansu)
    expected = _expected(final)
    first = asyncio.run(_replay(kafka_settings))
    second = asyncio.run(_replay(kafka_settings))
    assert {s.environment_id: s for s in first.environments()} == expected
    assert {s.environment_id: s for s in second.environments()} == expected
    assert first.fingerprint_count == second.fingerprint_count == 2 * len(expected)


def test_health_ready_is_503_while_a_large_topic_loads(
    kafka_settings: KafkaSettings, start_resolver: Callable[..., str]
) -> None:
    envs = [Env(f"big-proj-e{i}") for i in range(200)]
    template = [(e.environment_id, e.event()) for e in envs]
    # 200 environments re-sent with rising generations: 100k records to replay.
    records: list[Record] = []
    for generation in range(1, 501):
        for key, event in template:
            records.append((key, event.model_copy(update={"generation": generation})))
    total = produce(kafka_settings, records, linger_ms=50)
    url = start_resolver()
    seen: list[tuple[int, dict[str, object]]] = []

    def observe() -> bool:
        r = httpx.get(f"{url}/health/ready")
        seen.append((r.status_code, r.json()))
        return r.status_code == 200

    wait_until(observe, 60, "ready after loading")
    loading = [body for code, body in seen if code == 503]
    assert loading, "never observed the loading state"
    assert all(body["status"] == "loading" for body in loading)
    assert int(str(loading[0]["records"])) < total
    ready = seen[-1][1]
    assert ready["records"] == total
    assert ready["environments"] == 200
    generation = httpx.get(f"{url}/v1/whoami", headers=bearer(envs[0].token_1)).json()["generation"]
    assert generation == 500


def test_broker_loss_is_degraded_and_lookups_keep_working(
    embedded_broker_factory: Callable[..., Any], serve_app: Callable[..., str], topic_name: str
) -> None:
    from services.resolver.bootstrap import build_app
    from tests.integration.resolver.conftest import resolver_settings

    broker = embedded_broker_factory()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=topic_name, topic_partitions=1)
    env = Env("acme-telemetry-dev")
    produce(kafka, [(env.environment_id, env.event())])
    url = serve_app(build_app(resolver_settings(kafka, degraded_after_seconds=1.0)))
    wait_ready(url)
    broker.stop()
    wait_until(lambda: httpx.get(f"{url}/health/ready").json()["status"] == "degraded", 30, "degraded status")
    assert httpx.get(f"{url}/health/ready").status_code == 503
    who = httpx.get(f"{url}/v1/whoami", headers=bearer(env.token_1))
    assert who.status_code == 200
    assert 'streamtoken_resolver_status{status="degraded"} 1.0' in httpx.get(f"{url}/metrics").text
