"""A scheduled rotation's warning (``token.rotation_due``): verified, logged, never a rotation."""

from __future__ import annotations

import json

import structlog

from services.agent.adapters.listener import WEBHOOK_PATH
from services.agent.domain import WebhookReceived
from tests.unit.agent.test_listener import SECRET, client, signed

WARNING = {
    "type": "token.rotation_due",
    "kind": "rotation_due",
    "environment_id": "acme-telemetry-dev",
    "generation": 3,
    "due_at": "2026-12-09T09:00:00+00:00",
    "notice_id": "rotation-due-g3",
}


async def test_a_rotation_due_warning_is_logged_and_never_a_restart() -> None:
    received: list[WebhookReceived] = []
    body = json.dumps(WARNING)
    with structlog.testing.capture_logs() as logs:
        response = await client(received).post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert response.status_code == 202
    assert received == []  # nothing reaches the state machine: no restart, no reload
    (line,) = [entry for entry in logs if entry["event"] == "rotation_due"]
    assert line["environment_id"] == "acme-telemetry-dev"
    assert line["generation"] == 3
    assert line["due_at"] == "2026-12-09T09:00:00+00:00"


async def test_a_rotation_due_warning_with_a_bad_signature_is_refused() -> None:
    received: list[WebhookReceived] = []
    body = json.dumps(WARNING)
    headers = signed(body, secret="whsec_" + "A" * 32)
    with structlog.testing.capture_logs() as logs:
        response = await client(received, SECRET).post(WEBHOOK_PATH, content=body, headers=headers)
    assert response.status_code == 401
    assert not [entry for entry in logs if entry["event"] == "rotation_due"]
