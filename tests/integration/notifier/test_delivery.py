"""Rotations on the real broker become signed webhooks on real loopback receivers, with retries and replay."""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from standardwebhooks import Webhook

from shared.kafka import KafkaSettings
from tests.factories import Environment
from tests.integration.notifier.support import Receiver, Resolver, new_environment, produce
from tests.support import wait_until


def _subscribe(
    api: httpx.Client, env: Environment, receiver_url: str, name: str, action: str
) -> dict[str, Any]:
    body = {"deployment_id": name, "url": f"{receiver_url}/{name}", "action": action}
    response = api.post("/v1/subscriptions", json=body, headers=env.auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_rotation_reaches_every_subscription_of_its_environment_and_none_of_another(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    database_url: str,
    kafka_settings: KafkaSettings,
    resolver: Resolver,
) -> None:
    receiver = Receiver()
    receiver_url = serve_app(receiver)
    api = start_notifier(database_url, kafka_settings)
    env, other = new_environment(resolver), new_environment(resolver)
    subs = {
        name: _subscribe(api, env, receiver_url, name, action)
        for name, action in [("a1", "restart"), ("a2", "reload"), ("a3", "restart")]
    }
    others = {name: _subscribe(api, other, receiver_url, name, "restart") for name in ("b1", "b2")}
    created = env.event()
    rotation = env.rotate()
    produce(kafka_settings, other.event(), rotation)

    wait_until(lambda: all(receiver.at(f"/{n}") for n in subs), 60, "every subscription of the environment")
    for name, sub in subs.items():
        (request,) = receiver.at(f"/{name}")
        payload = Webhook(sub["secret"]).verify(request.body, request.headers)
        assert payload == {
            "type": "streaming_tokens.rotated",
            "environment_id": env.id,
            "generation": 2,
            "rotation_id": rotation.change.rotation_id,
            "action": sub["action"],
            "subscription_id": sub["id"],
            "deployment_id": name,
            "token_ids": {"token_1": env.token_ids[0], "token_2": env.token_ids[1]},
            "occurred_at": rotation.change.at.isoformat(),
        }
        for token in (env.token_1, env.token_2):
            assert token not in request.body.decode()

    # The same record again (a re-consumption) and an older generation change nothing; the other
    # environment's rotation reaches only its own subscriptions.
    produce(kafka_settings, rotation, created, other.rotate())
    wait_until(lambda: all(receiver.at(f"/{n}") for n in others), 60, "the other environment's subscriptions")
    time.sleep(0.5)
    assert sorted(r.path for r in receiver.requests) == ["/a1", "/a2", "/a3", "/b1", "/b2"]
    for name, sub in others.items():
        (request,) = receiver.at(f"/{name}")
        assert Webhook(sub["secret"]).verify(request.body, request.headers)["environment_id"] == other.id

    progress = api.get("/v1/rotations", headers=env.auth()).json()
    assert progress["subscriptions"] == 3
    (latest,) = [r for r in progress["rotations"] if r["generation"] == 2]
    assert latest == {
        "generation": 2,
        "rotation_id": rotation.change.rotation_id,
        "notified": 3,
        "acknowledged": 0,
        "pending": 0,
        "dead": 0,
    }
    assert api.get(f"/v1/environments/{other.id}/rotations", headers=env.auth()).status_code == 403


def test_retries_dead_letters_replay_and_gone(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    resolver: Resolver,
) -> None:
    receiver = Receiver()
    receiver_url = serve_app(receiver)
    api = start_notifier(sqlite_url, kafka_settings, max_attempts=4)
    env = new_environment(resolver)
    flaky = _subscribe(api, env, receiver_url, "flaky", "reload")
    down = _subscribe(api, env, receiver_url, "down", "reload")
    gone = _subscribe(api, env, receiver_url, "gone", "reload")
    receiver.fail_first["/flaky"] = (2, 503, "0")
    receiver.always["/down"] = 500
    receiver.always["/gone"] = 410
    produce(kafka_settings, env.rotate())

    wait_until(lambda: len(receiver.at("/flaky")) == 3, 60, "the flaky receiver's third attempt")
    attempts = receiver.at("/flaky")
    assert len({r.headers["webhook-id"] for r in attempts}) == 1  # one message, retried
    Webhook(flaky["secret"]).verify(attempts[-1].body, attempts[-1].headers)

    def dead() -> list[dict[str, Any]]:
        return list(api.get("/v1/deliveries", params={"status": "dead"}, headers=env.auth()).json())

    wait_until(lambda: len(dead()) == 1, 60, "the always-failing delivery to end dead")
    (dead_delivery,) = dead()
    assert dead_delivery["subscription_id"] == down["id"]
    assert dead_delivery["attempts"] == 4
    assert dead_delivery["last_status_code"] == 500
    assert len(receiver.at("/down")) == 4

    wait_until(
        lambda: not api.get(f"/v1/subscriptions/{gone['id']}", headers=env.auth()).json()["enabled"],
        30,
        "410 to disable the subscription",
    )
    assert len(receiver.at("/gone")) == 1

    # Replaying while it still fails is not a success; once it recovers, a replay delivers it, once.
    del receiver.always["/down"]
    replayed = api.post(f"/v1/deliveries/{dead_delivery['id']}/replay", headers=env.auth())
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "pending"
    wait_until(lambda: len(receiver.at("/down")) == 5, 30, "the replayed delivery")
    last = receiver.at("/down")[-1]
    assert last.headers["webhook-id"] == dead_delivery["id"]
    Webhook(down["secret"]).verify(last.body, last.headers)
    wait_until(
        lambda: (
            api.get(f"/v1/deliveries/{dead_delivery['id']}", headers=env.auth()).json()["status"]
            == "delivered"
        ),
        10,
        "the replay to be recorded",
    )
    again = api.post(f"/v1/deliveries/{dead_delivery['id']}/replay", headers=env.auth())
    assert (again.status_code, again.json()["error"]) == (409, "not_replayable")
    assert api.post("/v1/deliveries/msg_nope/replay", headers=env.auth()).status_code == 404

    (rotation,) = api.get("/v1/rotations", headers=env.auth()).json()["rotations"]
    assert (rotation["notified"], rotation["pending"], rotation["dead"]) == (2, 0, 0)


def test_restarts_are_staggered_until_acknowledged_and_progress_shows_acks(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    database_url: str,
    kafka_settings: KafkaSettings,
    resolver: Resolver,
) -> None:
    receiver = Receiver()
    receiver_url = serve_app(receiver)
    api = start_notifier(database_url, kafka_settings, restart_concurrency=1, restart_ack_timeout_seconds=30)
    env = new_environment(resolver)
    restarts = [_subscribe(api, env, receiver_url, f"x{i}", "restart") for i in range(3)]
    _subscribe(api, env, receiver_url, "reloader", "reload")
    produce(kafka_settings, env.rotate())

    def restarted() -> list[str]:
        return [r.path for r in receiver.requests if r.path.startswith("/x")]

    wait_until(
        lambda: len(restarted()) == 1 and bool(receiver.at("/reloader")), 60, "one restart and the reload"
    )
    time.sleep(1.0)  # the limit holds the other two back
    assert len(restarted()) == 1

    keys = {sub["id"]: sub["management_key"] for sub in restarts}
    for expected in (2, 3):
        told = {json.loads(r.body)["subscription_id"] for r in receiver.requests if r.path.startswith("/x")}
        for sub_id in told:
            ack = api.post(
                f"/v1/subscriptions/{sub_id}/acks", json={"generation": 2}, headers=env.auth(key=keys[sub_id])
            )
            assert ack.status_code == 200
            assert ack.json()["acked_generation"] == 2
        wait_until(lambda n=expected: len(restarted()) == n, 30, f"restart number {expected}")  # type: ignore[misc]
        time.sleep(0.3)
        assert len(restarted()) == expected
    assert len(set(restarted())) == 3

    (rotation,) = api.get("/v1/rotations", headers=env.auth()).json()["rotations"]
    assert (rotation["notified"], rotation["acknowledged"], rotation["pending"]) == (4, 2, 0)
    bad = api.post(
        f"/v1/subscriptions/{restarts[0]['id']}/acks",
        json={"generation": 0},
        headers=env.auth(key=restarts[0]["management_key"]),
    )
    assert bad.status_code == 422
