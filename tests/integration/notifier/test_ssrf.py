"""Finding 5 in the delivery path: the address connected to is the one checked, stored URLs are checked
again when sent, errors shown to clients are generic, and replay honours a disabled subscription."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.notifier.delivery import DeliveryEngine, NotifierMetrics, webhook_client
from services.notifier.domain import Action, DeliveryStatus, WebhookAddressPolicy
from services.notifier.settings import NotifierSettings
from services.notifier.store import Claimed, Store
from services.notifier.transport import AsyncioTransport
from tests.integration.notifier.support import Resolver, new_environment
from tests.integration.notifier.test_transport import OK, scripted_server


def _resolver(addresses: list[str]) -> Callable[[str, int], object]:
    async def resolve(host: str, port: int) -> list[str]:
        return addresses

    return resolve


def _client(policy: WebhookAddressPolicy, resolve: object | None = None) -> httpx.AsyncClient:
    transport = AsyncioTransport(4, 5.0, address_allowed=policy.allows, resolve=resolve)  # type: ignore[arg-type]
    return webhook_client(transport, 5.0, 4)


async def test_a_name_resolving_to_loopback_is_refused_before_any_connection() -> None:
    async with scripted_server(lambda n, _: OK) as server:
        port = server.url.rsplit(":", 1)[1]
        public_only = WebhookAddressPolicy.from_entries(("*",))
        for host in ("localhost", "2130706433", "127.1", "0x7f000001"):
            async with _client(public_only) as client:
                with pytest.raises(httpx.ConnectError, match="not allowed"):
                    await client.post(f"http://{host}:{port}/hook", content=b"x")
        # A name with a public and a loopback answer (a rebinding attempt) is refused as a whole.
        async with _client(public_only, _resolver(["93.184.216.34", "127.0.0.1"])) as client:
            with pytest.raises(httpx.ConnectError, match="not allowed"):
                await client.post(f"http://hooks.example.com:{port}/hook", content=b"x")
        assert server.connections == 0


async def test_the_checked_address_is_the_one_connected_to() -> None:
    async with scripted_server(lambda n, _: OK) as server:
        port = server.url.rsplit(":", 1)[1]
        policy = WebhookAddressPolicy.from_entries(("hooks.example.com", "127.0.0.0/8"))
        async with _client(policy, _resolver(["127.0.0.1"])) as client:
            response = await client.post(f"http://hooks.example.com:{port}/hook", content=b"x")
        assert response.status_code == 200
        assert server.connections == 1
        assert f"host: hooks.example.com:{port}".encode() in server.requests[0].lower()


def _engine(tmp_path: Path, transport: httpx.AsyncBaseTransport, **settings: object) -> DeliveryEngine:
    values: dict[str, object] = {"database_url": f"sqlite:///{tmp_path / 'n.db'}", **settings}
    notifier_settings = NotifierSettings(**values)  # type: ignore[arg-type]
    store = Store.from_url(str(values["database_url"]))
    metrics = NotifierMetrics(CollectorRegistry())
    return DeliveryEngine(store, notifier_settings, webhook_client(transport, 5.0, 4), metrics)


def _claimed(url: str) -> Claimed:
    return Claimed(
        "msg_1", "sub_1", "acme-a-b", Action.RELOAD, url, "whsec_" + "A" * 44, "{}", 0, 2, 0.0, float("inf")
    )


async def test_a_tightened_allow_list_applies_to_stored_urls(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    engine = _engine(tmp_path, httpx.MockTransport(answer), allowed_webhook_hosts=("hooks.example.com",))
    # Stored while 10.0.0.0/8 was allowed; the operator has since narrowed the list.
    result = await engine.attempt(_claimed("http://10.0.0.7:8080/hook"))
    assert result.status is DeliveryStatus.DISABLED
    assert result.disable_subscription
    assert sent == []
    result = await engine.attempt(_claimed("http://2130706433:8001/v1/admin/republish"))
    assert (result.status, sent) == (DeliveryStatus.DISABLED, [])


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})

    engine = _engine(tmp_path, httpx.MockTransport(answer), allowed_webhook_hosts=("hooks.example.com",))
    result = await engine.attempt(_claimed("http://hooks.example.com/hook"))
    assert result.status is DeliveryStatus.PENDING  # retried later, never followed
    assert sent == ["http://hooks.example.com/hook"]


async def test_last_error_says_what_failed_without_addresses_ports_or_os_messages(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens once the socket is closed
    policy = WebhookAddressPolicy.from_entries(("127.0.0.1",))
    transport = AsyncioTransport(4, 5.0, address_allowed=policy.allows)
    engine = _engine(tmp_path, transport, allowed_webhook_hosts=("127.0.0.1", "127.0.0.3"))
    refused = await engine.attempt(_claimed(f"http://127.0.0.1:{closed_port}/hook"))
    not_allowed = await engine.attempt(_claimed(f"http://127.0.0.3:{closed_port}/hook"))
    await engine.client.aclose()
    for result in (refused, not_allowed):
        assert result.status is DeliveryStatus.PENDING
        assert result.error
        for leak in ("127.0.0", "::1", str(closed_port), "Connect call failed", "Errno", "refused ("):
            assert leak not in result.error
    assert refused.error != not_allowed.error


def test_replay_honours_a_disabled_subscription(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None, deliver=False)
    store = Store.from_url(sqlite_url)
    try:
        env = new_environment(resolver)
        body = {"deployment_id": "d", "url": "http://127.0.0.1:9/hook", "action": "reload"}
        sub = api.post("/v1/subscriptions", json=body, headers=env.auth()).json()
        store.record_events([env.rotate()])
        (claimed,) = store.claim_due(1e12, 10, 30, 0, 1)
        from services.notifier.store import AttemptResult

        store.complete(
            [AttemptResult(claimed.id, sub["id"], DeliveryStatus.DEAD, 8, 1e12, 500, "HTTP 500")], 1e12
        )
        key = env.auth(key=sub["management_key"])
        assert (
            api.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": False}, headers=key).status_code
            == 200
        )
        refused = api.post(f"/v1/deliveries/{claimed.id}/replay", headers=env.auth())
        assert (refused.status_code, refused.json()["error"]) == (409, "subscription_disabled")
        assert api.get(f"/v1/deliveries/{claimed.id}", headers=env.auth()).json()["status"] == "dead"
        assert (
            api.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": True}, headers=key).status_code
            == 200
        )
        assert api.post(f"/v1/deliveries/{claimed.id}/replay", headers=env.auth()).status_code == 200
    finally:
        store.dispose()
