"""Rebuilding after a recreated or truncated topic, and honest health, without a broker (issue 10)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from confluent_kafka import TopicPartition
from prometheus_client import generate_latest

from services.resolver.bootstrap import build_app
from services.resolver.metrics import ResolverMetrics
from services.resolver.replica import (
    BEYOND_END,
    RECREATED,
    TOPIC_MISSING,
    Status,
    TableReplica,
)
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable, tokens_of
from shared.events import encode_event
from shared.kafka import KafkaSettings
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin, bearer
from tests.unit.resolver.test_bulk_apply import FakeMessage


def _replica(
    table: TokenTable,
    *,
    rebuild_empty_grace_seconds: float = 60.0,
    on_swap: Callable[[TokenTable], None] | None = None,
) -> TableReplica:
    replica = TableReplica(
        table,
        KafkaSettings(bootstrap_servers="127.0.0.1:9", topic="streaming-tokens"),
        ResolverMetrics(),
        rebuild_empty_grace_seconds=rebuild_empty_grace_seconds,
        on_swap=on_swap,
    )
    replica._loaded = True
    replica._refresh_status()
    return replica


def _status(replica: TableReplica) -> Status:
    """``replica.status`` read afresh: mypy keeps an asserted ``replica.status`` narrowed across calls."""
    return replica.status


def _table_with(*envs: Env) -> TokenTable:
    table = TokenTable()
    for env in envs:
        event = env.event()
        table.apply(env.environment_id, event.generation, tokens_of(event))
    return table


def _metrics_text(replica: TableReplica) -> str:
    return generate_latest(replica.metrics.registry).decode()


async def test_rebuilding_is_ready_and_lookups_keep_answering() -> None:
    dev = Env("acme-telemetry-dev")
    settings = ResolverSettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    app = build_app(
        settings,
        table=_table_with(dev),
        admin=FakeAdmin(),
        start_replica=False,
        status=lambda: Status.REBUILDING,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as client:
        ready = await client.get("/health/ready")
        assert (ready.status_code, ready.json()["status"]) == (200, "rebuilding")
        assert (await client.get("/v1/whoami", headers=bearer(dev.token_1))).status_code == 200
        assert (await client.get("/v1/topics/f1-data", headers=bearer(dev.token_1))).status_code == 200
        view = (await client.get(f"/v1/environments/{dev.environment_id}/generation")).json()
        assert view == {"environment_id": dev.environment_id, "generation": 1, "ready": True}


def test_a_position_going_backwards_asks_for_a_rebuild() -> None:
    replica = _replica(TokenTable())
    replica._track([TopicPartition("streaming-tokens", 0, 10), TopicPartition("streaming-tokens", 1, 4)])
    replica._track([TopicPartition("streaming-tokens", 0, 12), TopicPartition("streaming-tokens", 1, -1001)])
    assert replica._rebuild_reason is None
    replica._track([TopicPartition("streaming-tokens", 0, 3)])  # librdkafka reset it to a shorter log's end
    assert replica._rebuild_reason == BEYOND_END


def test_the_rebuilt_table_is_filled_by_the_bulk_path_and_swapped_in_at_once() -> None:
    dev, fresh = Env("acme-telemetry-dev"), Env("acme-telemetry-new")
    live = _table_with(dev)
    swapped: list[TokenTable] = []
    replica = _replica(live, on_swap=swapped.append, rebuild_empty_grace_seconds=600)
    replica._building = TokenTable()
    replica._rebuild_started = (RECREATED, time.monotonic())
    replica._refresh_status()
    assert replica.status is Status.REBUILDING
    assert replica.snapshot()["rebuild"]["reason"] == RECREATED
    assert not replica._may_swap()  # the recreated topic is still empty: keep the last good table

    dev.rotate()
    records = [(dev.environment_id, dev.event()), (fresh.environment_id, fresh.event())]
    replica._apply([FakeMessage(k.encode(), encode_event(e), n) for n, (k, e) in enumerate(records)])
    assert replica.table is live  # lookups still read the old table
    assert live.generation(dev.environment_id) == 1
    assert live.generation(fresh.environment_id) is None
    assert replica._may_swap()

    replica._swap()
    replica._loaded = True
    replica._refresh_status()
    assert swapped == [replica.table]
    assert replica.table is not live
    assert replica.table.generation(dev.environment_id) == 2
    assert replica.table.generation(fresh.environment_id) == 1
    assert _status(replica) is Status.READY
    assert "rebuild" not in replica.snapshot()


def test_an_empty_recreated_topic_replaces_the_table_after_the_grace() -> None:
    replica = _replica(_table_with(Env("acme-telemetry-dev")), rebuild_empty_grace_seconds=0)
    replica._building = TokenTable()
    replica._rebuild_started = (RECREATED, time.monotonic())
    assert replica._may_swap()


def test_degraded_says_why_in_health_and_gauges() -> None:
    replica = _replica(_table_with(Env("acme-telemetry-dev")))
    assert replica.status is Status.READY
    replica._topic_missing = True
    replica._refresh_status()
    detail = replica.snapshot()
    assert (detail["status"], detail["problem"]) == ("degraded", TOPIC_MISSING)
    text = _metrics_text(replica)
    assert 'streamtoken_resolver_degraded{reason="control topic missing"} 1.0' in text
    assert 'streamtoken_resolver_degraded{reason="no broker connection"} 0.0' in text
    assert "streamtoken_resolver_ready 0.0" in text

    replica._topic_missing = False
    replica._broker_seen_at = time.monotonic() - 60  # longer than degraded_after_seconds
    replica._broker_up = False
    replica._refresh_status()
    detail = replica.snapshot()
    assert (detail["problem"], detail["kafka"]) == ("no broker connection", "down")
    assert detail["kafka_silent_seconds"] >= 60

    replica._broker_seen_at, replica._broker_up = time.monotonic(), True
    replica._refresh_status()
    assert replica.status is Status.READY
    assert "problem" not in replica.snapshot()
    assert 'streamtoken_resolver_degraded{reason="control topic missing"} 0.0' in _metrics_text(replica)


def test_lag_positions_and_the_last_applied_record_are_reported() -> None:
    replica = _replica(TokenTable())
    replica._partitions = [TopicPartition("streaming-tokens", 0), TopicPartition("streaming-tokens", 1)]
    replica._positions = {0: 7, 1: 2}
    replica._lags = {0: 3, 1: 0}
    replica._lag = 3
    replica._last = (0, 6, time.time() - 5, time.monotonic() - 1)
    detail = replica.snapshot()
    assert detail["lag"] == 3
    assert detail["partitions"] == {"0": {"position": 7, "lag": 3}, "1": {"position": 2, "lag": 0}}
    assert detail["last_applied"]["partition"] == 0
    assert detail["last_applied"]["offset"] == 6
    assert detail["last_applied"]["record_age_seconds"] >= 5
    assert detail["last_applied"]["applied_seconds_ago"] >= 1
    replica.metrics.observe(
        lags=replica._lags, positions=replica._positions, last=replica._last, broker_up=True, paused=False
    )
    text = _metrics_text(replica)
    assert 'streamtoken_resolver_partition_lag_records{partition="0"} 3.0' in text
    assert "streamtoken_resolver_lag_records 3.0" in text
    assert 'streamtoken_resolver_partition_position{partition="1"} 2.0' in text
    assert 'streamtoken_resolver_last_applied_offset{partition="0"} 6.0' in text
    assert "streamtoken_resolver_broker_up 1.0" in text
    assert "streamtoken_resolver_last_applied_record_timestamp_seconds" in text
