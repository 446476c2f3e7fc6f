"""A scheduled rotation's warning: the issuer's notice, sent once as a signed ``token.rotation_due`` webhook
to every enabled subscription, kept across a restart, refused without the internal key, never counted as a
rotation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from standardwebhooks import Webhook

from tests.integration.notifier.support import Receiver, Resolver, new_environment
from tests.support import wait_until

KEY = "the-notifiers-internal-key-for-notices"
INTERNAL = {"X-Streamtoken-Internal-Key": KEY}
NOTICE = {
    "kind": "rotation_due",
    "generation": 1,
    "due_at": "2026-12-09T09:00:00+00:00",
    "notice_id": "rotation-due-g1",
}


def test_a_notice_is_sent_once_signed_to_every_subscription_and_not_counted_as_a_rotation(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    sqlite_url: str,
    resolver: Resolver,
) -> None:
    receiver = Receiver()
    hooks = serve_app(receiver)
    receiver.fail_first["/b"] = (1, 503, None)  # retried like a rotation's delivery
    api = start_notifier(sqlite_url, None, internal_key=KEY)
    env, other = new_environment(resolver), new_environment(resolver)
    subs: dict[str, dict[str, Any]] = {}
    for name, action in (("a", "restart"), ("b", "reload")):
        body = {"deployment_id": name, "url": f"{hooks}/{name}", "action": action}
        created = api.post("/v1/subscriptions", json=body, headers=env.auth())
        assert created.status_code == 201, created.text
        subs[name] = created.json()
    body = {"deployment_id": "x", "url": f"{hooks}/x", "action": "restart"}
    assert api.post("/v1/subscriptions", json=body, headers=other.auth()).status_code == 201

    accepted = api.post(f"/v1/environments/{env.id}/notices", json=NOTICE, headers=INTERNAL)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() | {} == {
        "environment_id": env.id,
        "notice_id": "rotation-due-g1",
        "generation": 1,
        "queued": 2,
        "created": True,
    }
    wait_until(lambda: receiver.at("/a") and len(receiver.at("/b")) == 2, 30, "the notice at both")
    for name, sub in subs.items():
        request = receiver.at(f"/{name}")[-1]
        payload = Webhook(sub["secret"]).verify(request.body, request.headers)
        assert payload["type"] == "token.rotation_due"
        assert "action" not in payload  # nothing to restart or reload
        assert payload["environment_id"] == env.id
        assert payload["generation"] == 1
        assert payload["due_at"] == "2026-12-09T09:00:00+00:00"
        assert payload["deployment_id"] == name
    assert len(receiver.ids("/b")) == 1  # the retry had the same webhook-id
    assert receiver.at("/x") == []  # another environment hears nothing

    again = api.post(f"/v1/environments/{env.id}/notices", json=NOTICE, headers=INTERNAL)
    assert again.status_code == 202
    assert again.json()["created"] is False
    assert again.json()["queued"] == 2
    # a restarted notifier on the same database keeps the notice: the same id is still a repeat
    restarted = start_notifier(sqlite_url, None, internal_key=KEY)
    third = restarted.post(f"/v1/environments/{env.id}/notices", json=NOTICE, headers=INTERNAL)
    assert third.json()["created"] is False
    deliveries = api.get("/v1/deliveries", headers=env.auth()).json()
    assert sorted(d["event_type"] for d in deliveries) == ["token.rotation_due"] * 2
    assert all(d["status"] == "delivered" for d in deliveries)
    assert len(receiver.at("/a")) == 1  # never sent twice

    rotations = api.get(f"/v1/environments/{env.id}/rotations", headers=INTERNAL).json()
    assert all(r["notified"] == 0 for r in rotations["rotations"])  # a warning is no rotation


def test_notices_need_the_internal_key_and_a_valid_body(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None, internal_key=KEY)
    env = new_environment(resolver)
    path = f"/v1/environments/{env.id}/notices"
    for headers in ({}, {"X-Streamtoken-Internal-Key": "wrong"}, env.auth()):
        refused = api.post(path, json=NOTICE, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"
    for bad in (
        {**NOTICE, "kind": "rotated"},
        {**NOTICE, "generation": -1},
        {**NOTICE, "notice_id": "../x y"},
        {**NOTICE, "due_at": "2026-12-09T09:00:00"},
        {**NOTICE, "action": "restart"},
        {k: v for k, v in NOTICE.items() if k != "notice_id"},
    ):
        answer = api.post(
            path, content=json.dumps(bad), headers={**INTERNAL, "content-type": "application/json"}
        )
        assert answer.status_code == 422, (bad, answer.text)
        assert "error" in answer.json()
    without_key = start_notifier(sqlite_url, None)  # a notifier with no internal key sends no notices
    refused = without_key.post(path, json=NOTICE, headers=INTERNAL)
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert "/v1/environments/{environment_id}/notices" in api.get("/openapi.json").json()["paths"]
