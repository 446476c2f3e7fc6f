"""Findings 6 and 11 at the notifier: bounded subscriptions, paginated lists, rotations counted in SQL,
rate-limited replay, bounded acknowledgements; finding 9: a deleted environment leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from services.notifier.domain import Action, DeliveryStatus, new_credentials
from services.notifier.store import AttemptResult, EnvironmentDeleted, Store
from shared.kafka import KafkaSettings
from tests.factories import Environment
from tests.integration.notifier.support import Resolver, new_environment, produce
from tests.support import wait_until

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.from_url(database_url)
    store.create_tables()
    yield store
    store.dispose()


def _sub(api: httpx.Client, headers: dict[str, str], name: str) -> httpx.Response:
    return api.post(
        "/v1/subscriptions", json={"deployment_id": name, "url": HOOK, "action": "reload"}, headers=headers
    )


def test_subscriptions_per_environment_are_capped(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None, max_subscriptions_per_environment=3)
    env, other = new_environment(resolver), new_environment(resolver)
    subs = [_sub(api, env.auth(), f"d{i}").json() for i in range(3)]
    refused = _sub(api, env.auth(), "d3")
    assert (refused.status_code, refused.json()["error"]) == (409, "too_many_subscriptions")
    assert _sub(api, other.auth(), "d0").status_code == 201  # another environment has its own quota
    owner = env.auth(key=subs[0]["management_key"])
    assert api.delete(f"/v1/subscriptions/{subs[0]['id']}", headers=owner).status_code == 204
    assert _sub(api, env.auth(), "d3").status_code == 201


def test_lists_are_paginated(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None)
    env = new_environment(resolver)
    created = [_sub(api, env.auth(), f"d{i}").json()["id"] for i in range(5)]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.get("/v1/subscriptions", params=params, headers=env.auth())
        assert page.status_code == 200
        assert len(page.json()) <= 2
        seen += [s["id"] for s in page.json()]
        cursor = page.headers.get("x-next-cursor")
        if not cursor:
            break
        params["cursor"] = cursor
    assert seen == created
    for bad in ({"limit": 0}, {"limit": 100_000}, {"cursor": "not-a-cursor"}):
        assert api.get("/v1/subscriptions", params=bad, headers=env.auth()).status_code == 422
    assert api.get("/v1/deliveries", params={"limit": 5000}, headers=env.auth()).status_code == 422


def test_rotation_progress_is_counted_in_sql_without_loading_deliveries(store: Store) -> None:
    env = Environment.create()
    # Made with Token 2, which the first rotation keeps (as Token 1): notified of both rotations.
    subs = [
        store.register(env.id, f"d{i}", HOOK, Action.RELOAD, 1, new_credentials(), env.token_ids[1])
        for i in range(4)
    ]
    store.record_events([env.rotate(), env.rotate()])
    claimed = store.claim_due(1e12, 100, 30, 0, 1)
    gen2 = [c for c in claimed if c.generation == 2]
    store.complete(
        [
            AttemptResult(gen2[0].id, gen2[0].subscription_id, DeliveryStatus.DELIVERED, 1, 1e12, 200, None),
            AttemptResult(gen2[1].id, gen2[1].subscription_id, DeliveryStatus.DEAD, 8, 1e12, 500, "HTTP 500"),
        ],
        1e12,
    )
    store.acknowledge(env.id, subs[0].subscription.id, 3, key=subs[0].management_key)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        progress = store.rotations(env.id, limit=10)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert [(p.generation, p.notified, p.acknowledged, p.pending, p.dead) for p in progress] == [
        (3, 0, 1, 4, 0),
        (2, 1, 1, 2, 1),
    ]
    reading_deliveries = [s for s in statements if "notifier_delivery" in s]
    assert reading_deliveries
    assert all("group by" in s for s in reading_deliveries)
    assert [p.generation for p in store.rotations(env.id, limit=1)] == [3]
    assert [p.generation for p in store.rotations(env.id, limit=10, before=3)] == [2]


def test_acknowledged_generations_are_bounded(
    start_notifier: Callable[..., httpx.Client], database_url: str, resolver: Resolver
) -> None:
    api = start_notifier(database_url, None)
    env = new_environment(resolver)
    sub = _sub(api, env.auth(), "d").json()
    path, owner = f"/v1/subscriptions/{sub['id']}/acks", env.auth(key=sub["management_key"])
    too_big = api.post(path, json={"generation": 100000000000000000000}, headers=owner)
    assert (too_big.status_code, too_big.json()["error"]) == (422, "invalid_request")
    ahead = api.post(path, json={"generation": 4611686018427387904}, headers=owner)
    assert (ahead.status_code, ahead.json()["error"]) == (409, "generation_ahead")
    assert api.get(f"/v1/subscriptions/{sub['id']}", headers=env.auth()).json()["acked_generation"] == 1
    assert api.post(path, json={"generation": env.generation}, headers=owner).status_code == 200


def test_replay_is_rate_limited(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None, deliver=False, replays_per_subscription_per_minute=1)
    store = Store.from_url(sqlite_url)
    try:
        env = new_environment(resolver)
        sub = _sub(api, env.auth(), "d").json()
        store.record_events([env.rotate()])
        (claimed,) = store.claim_due(1e12, 10, 30, 0, 1)
        dead = AttemptResult(claimed.id, sub["id"], DeliveryStatus.DEAD, 8, 1e12, 500, "HTTP 500")
        store.complete([dead], 1e12)
        assert api.post(f"/v1/deliveries/{claimed.id}/replay", headers=env.auth()).status_code == 200
        store.complete([dead], 1e12)
        limited = api.post(f"/v1/deliveries/{claimed.id}/replay", headers=env.auth())
        assert (limited.status_code, limited.json()["error"]) == (429, "too_many_replays")
        assert int(limited.headers["retry-after"]) >= 1
    finally:
        store.dispose()


def test_a_deleted_environment_leaves_no_subscriptions_or_deliveries(store: Store) -> None:
    env = Environment.create()
    store.register(env.id, "old", HOOK, Action.RELOAD, 1, new_credentials(), env.token_ids[0])
    store.record_events([env.rotate()])
    assert store.count_by_status(env.id)
    store.record_events([EnvironmentDeleted(env.id, deleted_at=None)])
    assert store.list_subscriptions(env.id, limit=100) == []
    assert store.count_by_status(env.id) == {}
    assert store.rotations(env.id, limit=10) == []
    assert store.current_generation(env.id) == 0


def test_a_tombstone_on_the_topic_deletes_the_environment_s_subscriptions(
    start_notifier: Callable[..., httpx.Client],
    database_url: str,
    kafka_settings: KafkaSettings,
    resolver: Resolver,
) -> None:
    api = start_notifier(database_url, kafka_settings)
    env, other = new_environment(resolver), new_environment(resolver)
    old = _sub(api, env.auth(), "old").json()
    _sub(api, other.auth(), "stays")
    produce(kafka_settings, env.rotate(), env.id)
    wait_until(
        lambda: api.get(f"/v1/subscriptions/{old['id']}", headers=env.auth()).status_code == 404,
        60,
        "the tombstone to delete the subscription",
    )
    assert api.get("/v1/subscriptions", headers=env.auth()).json() == []
    assert api.get("/v1/deliveries", headers=env.auth()).json() == []
    assert [s["deployment_id"] for s in api.get("/v1/subscriptions", headers=other.auth()).json()] == [
        "stays"
    ]
