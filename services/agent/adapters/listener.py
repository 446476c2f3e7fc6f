"""The agent's webhook listener: verifies Standard Webhooks signatures and hands verified events on.

It answers at once (202) and lets the agent apply the rotation in the background; the notifier learns the
outcome from the agent's explicit acknowledgement (``POST /v1/subscriptions/{id}/acks``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from standardwebhooks import Webhook, WebhookVerificationError

from services.agent.domain import RELOAD, RESTART, REVOKED, ROTATED, WebhookReceived
from shared.web import error_body

WEBHOOK_PATH = "/webhook"


def build_listener(
    on_webhook: Callable[[WebhookReceived], None],
    secret: Callable[[], str | None],
    environment_id: Callable[[], str | None],
) -> FastAPI:
    app = FastAPI(title="streamtoken agent webhook listener", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.post(WEBHOOK_PATH)
    async def webhook(request: Request) -> JSONResponse:
        current = secret()
        if current is None:
            return JSONResponse(
                error_body("not_subscribed", "the agent has no subscription secret yet"), status_code=503
            )
        body = await request.body()
        try:
            payload: Any = Webhook(current).verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError):
            return JSONResponse(
                error_body("invalid_signature", "the webhook signature does not verify"), status_code=401
            )
        event = _event_from(request.headers.get("webhook-id", ""), payload, environment_id())
        if isinstance(event, str):
            return JSONResponse(error_body("invalid_webhook", event), status_code=400)
        if event is not None:
            on_webhook(event)
        return JSONResponse({"status": "accepted"}, status_code=202)

    return app


def _event_from(webhook_id: str, payload: Any, environment_id: str | None) -> WebhookReceived | str | None:
    """The event a verified payload means, ``None`` for a type the agent ignores, or why it is malformed."""
    if not isinstance(payload, dict):
        return "the webhook body is not a JSON object"
    kind = payload.get("type")
    if kind not in (ROTATED, REVOKED):
        return None
    if environment_id is not None and payload.get("environment_id") != environment_id:
        return "the webhook is for another environment"
    action = payload.get("action", RESTART)
    if action not in (RESTART, RELOAD):
        return "the webhook's action is neither restart nor reload"
    generation = payload.get("generation")
    if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
        return "the webhook's generation is not an integer"
    return WebhookReceived(webhook_id, str(kind), action, generation)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the agent owns SIGINT/SIGTERM/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on loopback (port 0 = a free one), bound before the server starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def make_server(app: FastAPI) -> uvicorn.Server:
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", log_level="warning")
    return _Server(config)
