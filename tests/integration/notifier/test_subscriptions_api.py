"""Subscriptions over HTTP: registration with a streaming token checked by the resolver, and clear 4xx."""

from collections.abc import Callable

import httpx
import pytest
from standardwebhooks import Webhook

from shared.tokens import generate_token
from tests.integration.notifier.support import Resolver, new_environment, rotate

HOOK = "http://127.0.0.1:9/hook"


def test_register_reregister_list_update_delete(
    start_notifier: Callable[..., httpx.Client], database_url: str, resolver: Resolver
) -> None:
    api = start_notifier(database_url, None)
    env, other = new_environment(resolver), new_environment(resolver)
    body = {"deployment_id": "svc-a", "url": HOOK, "action": "restart"}

    created = api.post("/v1/subscriptions", json=body, headers=env.auth())
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["environment_id"] == env.id
    assert (sub["deployment_id"], sub["url"], sub["action"]) == ("svc-a", HOOK, "restart")
    Webhook(sub["secret"])  # a Standard Webhooks secret

    owner = env.auth(slot=2, key=sub["management_key"])
    again = api.post("/v1/subscriptions", json={**body, "url": HOOK + "2", "action": "reload"}, headers=owner)
    assert again.status_code == 200
    assert again.json()["id"] == sub["id"]
    assert (again.json()["url"], again.json()["action"]) == (HOOK + "2", "reload")
    assert again.json()["secret"] == sub["secret"]

    api.post("/v1/subscriptions", json={**body, "deployment_id": "svc-b"}, headers=env.auth())
    api.post("/v1/subscriptions", json=body, headers=other.auth())
    listed = api.get("/v1/subscriptions", headers=env.auth()).json()
    assert sorted(s["deployment_id"] for s in listed) == ["svc-a", "svc-b"]
    assert all("secret" not in s for s in listed)

    patched = api.patch(f"/v1/subscriptions/{sub['id']}", json={"action": "restart"}, headers=owner)
    assert patched.status_code == 200
    assert patched.json()["action"] == "restart"

    # Another environment's token cannot see, change or delete it.
    assert api.get(f"/v1/subscriptions/{sub['id']}", headers=other.auth()).status_code == 404
    other_with_key = other.auth(key=sub["management_key"])
    assert api.delete(f"/v1/subscriptions/{sub['id']}", headers=other_with_key).status_code == 404

    assert api.delete(f"/v1/subscriptions/{sub['id']}", headers=owner).status_code == 204
    assert api.get(f"/v1/subscriptions/{sub['id']}", headers=env.auth()).status_code == 404
    assert [s["deployment_id"] for s in api.get("/v1/subscriptions", headers=env.auth()).json()] == ["svc-b"]


def _body(url: str = HOOK, action: str = "restart", **extra: object) -> dict[str, object]:
    return {"deployment_id": "d", "url": url, "action": action, **extra}


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (_body("ftp://127.0.0.1/x"), 422, "invalid_webhook_url", "http"),
        (_body("http://u:p@127.0.0.1/x"), 422, "invalid_webhook_url", "user name or password"),
        (_body("https://example.com/x"), 422, "invalid_webhook_url", "not allowed"),
        (_body("http://10.0.0.7/x"), 422, "invalid_webhook_url", "not allowed"),
        (_body("not a url"), 422, "invalid_webhook_url", "http"),
        (_body(action="reboot"), 422, "invalid_request", "action"),
        (_body(deployment_id=""), 422, "invalid_request", "deployment_id"),
        ({"url": HOOK, "action": "restart"}, 422, "invalid_request", "deployment_id"),
        (_body(extra=1), 422, "invalid_request", "extra"),
    ],
)
def test_bad_subscription_input_gets_a_clear_4xx(
    start_notifier: Callable[..., httpx.Client],
    sqlite_url: str,
    resolver: Resolver,
    body: dict[str, object],
    status: int,
    code: str,
    words: str,
) -> None:
    api = start_notifier(sqlite_url, None)
    env = new_environment(resolver)
    response = api.post("/v1/subscriptions", json=body, headers=env.auth())
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert words in response.json()["message"]
    assert "u:p@" not in response.text


def test_missing_malformed_unknown_and_deactivated_tokens_get_401(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None)
    env = new_environment(resolver)
    body = {"deployment_id": "d", "url": HOOK, "action": "restart"}
    unknown = generate_token()
    cases = {
        "missing_token": {},
        "invalid_token": {"authorization": "Bearer stk_not-a-token"},
    }
    for code, headers in cases.items():
        response = api.post("/v1/subscriptions", json=body, headers=headers)
        assert (response.status_code, response.json()["error"]) == (401, code)
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = api.post("/v1/subscriptions", json=body, headers={"authorization": f"Bearer {unknown}"})
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
    assert unknown not in response.text
    outgoing = env.auth(slot=1)
    rotate(resolver, env)  # Token 1 rotated out
    response = api.post("/v1/subscriptions", json=body, headers=outgoing)
    assert response.status_code == 401
    assert "deactivated" in response.json()["message"]
    assert api.post("/v1/subscriptions", json=body, headers=env.auth(slot=2)).status_code == 201


def test_the_api_serves_openapi_health_and_metrics(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str
) -> None:
    api = start_notifier(sqlite_url, None)
    paths = api.get("/openapi.json").json()["paths"]
    assert "/v1/subscriptions" in paths
    # Every error a route can answer is documented, with the JSON error body.
    for path, operations in paths.items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            for code in ("401", "422", "503"):
                assert code in operation["responses"], (method, path, code)
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]["$ref"]
                    assert schema.endswith("/ErrorBody"), (method, path, code)
    assert {"403", "409"} <= set(paths["/v1/subscriptions/{subscription_id}/acks"]["post"]["responses"])
    assert {"409", "429"} <= set(paths["/v1/deliveries/{delivery_id}/replay"]["post"]["responses"])
    assert api.get("/health/live").status_code == 200
    ready = api.get("/health/ready")
    assert ready.status_code == 200, ready.text
    metrics = api.get("/metrics").text
    assert "\nstreamtoken_notifier_queue_depth " in metrics
    assert "\nprocess_resident_memory_bytes " in metrics  # the process collector
    assert "\nnotifier_" not in metrics  # one namespace
