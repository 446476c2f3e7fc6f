"""The webhook listener in-process (httpx.ASGITransport): signatures, bad bodies, events handed on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from standardwebhooks import Webhook

from services.agent.adapters.listener import (
    MAX_BODY,
    WEBHOOK_PATH,
    advertised_url,
    build_listener,
    check_advertise_url,
)
from services.agent.domain import WebhookReceived

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {
    "type": "streaming_tokens.rotated",
    "environment_id": "acme-telemetry-dev",
    "generation": 2,
    "action": "restart",
}


def signed(
    body: str, msg_id: str = "msg_1", secret: str = SECRET, at: datetime | None = None
) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def client(received: list[WebhookReceived], secret: str | None = SECRET) -> httpx.AsyncClient:
    app = build_listener(received.append, lambda: secret, lambda: "acme-telemetry-dev")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")


async def test_a_signed_webhook_is_accepted_and_handed_on() -> None:
    received: list[WebhookReceived] = []
    body = json.dumps(BODY)
    response = await client(received).post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert response.status_code == 202
    assert received == [WebhookReceived("msg_1", "streaming_tokens.rotated", "restart", 2)]


async def test_bad_missing_or_stale_signatures_are_401() -> None:
    received: list[WebhookReceived] = []
    http = client(received)
    body = json.dumps(BODY)
    other = "whsec_" + "B" * 32
    stale = datetime.now(UTC) - timedelta(minutes=10)
    for headers in (
        signed(body, secret=other),
        signed(body, at=stale),
        {**signed(body), "webhook-signature": "nonsense"},
        {},
        signed(body + " "),  # a body changed after signing
    ):
        response = await http.post(WEBHOOK_PATH, content=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {
            "error": "invalid_signature",
            "message": "the webhook signature does not verify",
        }
    assert received == []


async def test_signed_but_malformed_bodies_are_400() -> None:
    received: list[WebhookReceived] = []
    http = client(received)
    for body in (
        "not json",
        json.dumps({**BODY, "environment_id": "other"}),
        json.dumps({**BODY, "action": "x"}),
    ):
        assert (await http.post(WEBHOOK_PATH, content=body, headers=signed(body))).status_code == 400
    assert received == []


async def test_before_subscribing_there_is_no_secret_to_check_with() -> None:
    body = json.dumps(BODY)
    response = await client([], secret=None).post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert response.status_code == 503


async def test_a_body_over_the_cap_is_413_and_never_handed_on() -> None:
    received: list[WebhookReceived] = []
    http = client(received)
    big = json.dumps({**BODY, "padding": "x" * MAX_BODY})
    response = await http.post(WEBHOOK_PATH, content=big, headers=signed(big))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the cap holds while streaming
        for _ in range(5):
            yield b"x" * (MAX_BODY // 4)

    streamed = await http.post(WEBHOOK_PATH, content=chunks(), headers=signed("x"))
    assert streamed.status_code == 413
    assert received == []
    body = json.dumps(BODY)  # an ordinary one still passes
    assert (await http.post(WEBHOOK_PATH, content=body, headers=signed(body))).status_code == 202


@pytest.mark.parametrize(
    ("host", "port", "advertise", "expected"),
    [
        ("127.0.0.1", 8080, None, "http://127.0.0.1:8080/webhook"),
        ("::1", 8080, None, "http://[::1]:8080/webhook"),
        ("0.0.0.0", 8080, "http://10.42.3.4:{port}", "http://10.42.3.4:8080/webhook"),
        ("0.0.0.0", 8080, "https://agent-1.deploy.svc/", "https://agent-1.deploy.svc/webhook"),
        ("0.0.0.0", 9, "https://hooks.example.com/st/agent-1", "https://hooks.example.com/st/agent-1"),
    ],
)
def test_the_advertised_webhook_url(host: str, port: int, advertise: str | None, expected: str) -> None:
    assert advertised_url(host, port, advertise) == expected


@pytest.mark.parametrize(
    "url", ["ftp://agent/x", "http:///webhook", "http://agent:99999/", "http://u:p@agent/", "http://a/#f"]
)
def test_urls_that_cannot_be_advertised(url: str) -> None:
    assert check_advertise_url(url) is not None


def test_a_good_advertise_url_passes() -> None:
    assert check_advertise_url("http://10.42.3.4:{port}/webhook") is None
