"""Finding 4: a subscription belongs to whoever created it, and ends with the streaming token that made it.

Every other holder of the environment's tokens (another app, a leaked token) may list subscriptions but
not read their secrets, change, delete, acknowledge or take them over by re-registering their deployment id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from services.notifier.store import Store
from tests.integration.notifier.support import Resolver, new_environment, revoke, rotate

HOOK = "http://127.0.0.1:9/hook"


def _create(api: httpx.Client, headers: dict[str, str], name: str = "victim") -> dict[str, Any]:
    body = {"deployment_id": name, "url": HOOK, "action": "restart"}
    response = api.post("/v1/subscriptions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden"
    assert "x-subscription-key" in response.json()["message"].lower()


def test_only_the_management_key_reads_the_secret_changes_deletes_acks_or_reregisters(
    start_notifier: Callable[..., httpx.Client], database_url: str, resolver: Resolver
) -> None:
    api = start_notifier(database_url, None)
    env = new_environment(resolver)
    sub = _create(api, env.auth())
    key, secret = sub["management_key"], sub["secret"]
    assert key.startswith("mk_")
    assert secret.startswith("whsec_")
    path = f"/v1/subscriptions/{sub['id']}"

    # The attack of the review: another app of the environment re-registers the victim's deployment id
    # with its own URL and gets the victim's secret back. Now it is refused, and nothing changed.
    attacker = env.auth(slot=2)
    takeover = {"deployment_id": "victim", "url": "http://127.0.0.1:1/", "action": "reload"}
    _forbidden(api.post("/v1/subscriptions", json=takeover, headers=attacker))
    _forbidden(api.post("/v1/subscriptions", json=takeover, headers=env.auth(slot=2, key="mk_wrong")))
    _forbidden(api.get(f"{path}/secret", headers=attacker))
    _forbidden(api.get(f"{path}/secret", headers=env.auth(slot=2, key=key + "x")))
    _forbidden(api.patch(path, json={"url": "http://127.0.0.1:1/"}, headers=attacker))
    _forbidden(api.patch(path, json={"enabled": False}, headers=attacker))
    _forbidden(api.delete(path, headers=attacker))
    _forbidden(api.post(f"{path}/acks", json={"generation": 1}, headers=attacker))
    for shown in (
        api.get(path, headers=attacker).json(),
        *api.get("/v1/subscriptions", headers=attacker).json(),
    ):
        assert "secret" not in shown
        assert "management_key" not in shown
        assert (shown["url"], shown["action"], shown["enabled"]) == (HOOK, "restart", True)
    assert secret not in api.get("/v1/subscriptions", headers=attacker).text

    # The owner, with its key (whichever valid token it holds), can do all of it.
    owner = env.auth(slot=2, key=key)
    assert api.get(f"{path}/secret", headers=owner).json() == {"id": sub["id"], "secret": secret}
    again = api.post("/v1/subscriptions", json={**takeover, "url": HOOK + "2"}, headers=owner)
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["secret"], again.json()["url"]) == (
        sub["id"],
        secret,
        HOOK + "2",
    )
    assert "management_key" not in again.json()
    assert api.patch(path, json={"action": "reload"}, headers=owner).json()["action"] == "reload"
    assert api.post(f"{path}/acks", json={"generation": 1}, headers=owner).status_code == 200
    assert api.delete(path, headers=owner).status_code == 204
    assert api.get(path, headers=owner).status_code == 404


def test_subscriptions_end_with_the_token_that_made_them(
    start_notifier: Callable[..., httpx.Client], database_url: str, resolver: Resolver
) -> None:
    api = start_notifier(database_url, None, deliver=False)
    store = Store.from_url(database_url)
    try:
        env = new_environment(resolver)
        leaked = env.token_1
        by_token_1 = _create(api, env.auth(slot=1), "made-with-token-1")
        by_token_2 = _create(api, env.auth(slot=2), "made-with-token-2")

        # Rotation: Token 1 is deactivated, Token 2 becomes Token 1. The subscription made with Token 2
        # keeps working; the one made with the outgoing Token 1 still gets this rotation's webhook (its
        # deployment must restart) and then ends, unless its owner renews it with a valid token.
        store.record_events([rotate(resolver, env)])
        subs = {s["deployment_id"]: s for s in api.get("/v1/subscriptions", headers=env.auth()).json()}
        assert subs["made-with-token-2"]["enabled"]
        assert not subs["made-with-token-1"]["enabled"]
        assert "token" in subs["made-with-token-1"]["disabled_reason"]
        claimed = store.claim_due(1e12, 100, 30, 0, 1)
        assert sorted(c.subscription_id for c in claimed) == sorted([by_token_1["id"], by_token_2["id"]])
        assert api.get("/v1/subscriptions", headers={"authorization": f"Bearer {leaked}"}).status_code == 401

        # The next rotation deactivates the token that made the other one: it gets that last webhook, and
        # the first one, ended already, gets nothing.
        store.record_events([rotate(resolver, env)])
        claimed = store.claim_due(1e12, 100, 30, 0, 1)
        assert [c.subscription_id for c in claimed] == [by_token_2["id"]]

        # Revocation replaces both tokens: an acknowledgement with the key and a new token renews it.
        store.record_events([revoke(resolver, env)])
        assert not api.get(f"/v1/subscriptions/{by_token_2['id']}", headers=env.auth()).json()["enabled"]
        renewed = api.post(
            f"/v1/subscriptions/{by_token_2['id']}/acks",
            json={"generation": env.generation},
            headers=env.auth(key=by_token_2["management_key"]),
        )
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["enabled"]
        store.record_events([rotate(resolver, env)])
        claimed = store.claim_due(1e12, 100, 30, 0, 1)
        assert by_token_2["id"] in {c.subscription_id for c in claimed}
        assert by_token_1["id"] not in {c.subscription_id for c in claimed}
    finally:
        store.dispose()


def test_an_old_record_consumed_late_does_not_end_a_subscription_of_a_newer_token(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None, deliver=False)
    store = Store.from_url(sqlite_url)
    try:
        env = new_environment(resolver)
        first = env.event()
        rotation = rotate(resolver, env)
        sub = _create(api, env.auth(slot=2), "new")  # made with a token of generation 2
        store.record_events([first, rotation])  # a consumer that lags behind reads generation 1, then 2
        assert api.get(f"/v1/subscriptions/{sub['id']}", headers=env.auth()).json()["enabled"]
    finally:
        store.dispose()
