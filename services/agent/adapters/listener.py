"""The agent's webhook listener: verifies Standard Webhooks signatures and hands verified events on.

It answers at once (202) and lets the agent apply the rotation in the background; the notifier learns the
outcome from the agent's explicit acknowledgement (``POST /v1/subscriptions/{id}/acks``).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.agent.domain import RELOAD, RESTART, REVOKED, ROTATED, WebhookReceived
from shared.errors import error_body

WEBHOOK_PATH = "/webhook"
MAX_BODY = 64 * 1024  # a webhook body is a few hundred bytes; anything this large is not one


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or ``_TooLarge`` as soon as it (or its declared length) exceeds ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def build_listener(
    on_webhook: Callable[[WebhookReceived], None],
    secret: Callable[[], str | None],
    environment_id: Callable[[], str | None],
    max_body: int = MAX_BODY,
) -> Starlette:
    """A bare Starlette app: ``POST /webhook`` and ``GET /health/live``; bodies over ``max_body`` → 413."""

    async def live(_: Request) -> JSONResponse:
        return JSONResponse({"status": "live"})

    async def webhook(request: Request) -> JSONResponse:
        current = secret()
        if current is None:
            return JSONResponse(
                error_body("not_subscribed", "the agent has no subscription secret yet"), status_code=503
            )
        try:
            body = await _read_body(request, max_body)
        except _TooLarge:
            return JSONResponse(
                error_body("body_too_large", f"a webhook body is at most {max_body} bytes"), status_code=413
            )
        try:
            # ValueError: a malformed signature header or a body that is not UTF-8.
            Webhook(current).verify(body, dict(request.headers), json_parse=False)
        except (WebhookVerificationError, ValueError):
            return JSONResponse(
                error_body("invalid_signature", "the webhook signature does not verify"), status_code=401
            )
        try:
            payload: Any = json.loads(body)
        except ValueError:
            return JSONResponse(
                error_body("invalid_webhook", "the webhook body is not JSON"), status_code=400
            )
        event = _event_from(request.headers.get("webhook-id", ""), payload, environment_id())
        if isinstance(event, str):
            return JSONResponse(error_body("invalid_webhook", event), status_code=400)
        if event is not None:
            on_webhook(event)
        return JSONResponse({"status": "accepted"}, status_code=202)

    return Starlette(
        routes=[Route("/health/live", live, methods=["GET"]), Route(WEBHOOK_PATH, webhook, methods=["POST"])]
    )


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


def make_server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", log_level="warning")
    return _Server(config)
