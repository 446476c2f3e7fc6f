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
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.agent.domain import RELOAD, RESTART, REVOKED, ROTATED, ROTATION_DUE, WebhookReceived
from shared.errors import error_body
from shared.logs import get_logger

_log = get_logger(__name__)

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
    extra_paths: tuple[str, ...] = (),
) -> Starlette:
    """A bare Starlette app: ``POST /webhook`` (and ``extra_paths``: the advertised URL's path) and
    ``GET /health/live``; bodies over ``max_body`` → 413."""

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
        if isinstance(payload, dict) and payload.get("type") == ROTATION_DUE:
            # A warning: the rotation is coming. Logged for the operator; the child is left alone.
            _log.info(
                "rotation_due",
                webhook_id=request.headers.get("webhook-id", "")[:100],
                environment_id=str(payload.get("environment_id"))[:200],
                generation=payload.get("generation") if isinstance(payload.get("generation"), int) else None,
                due_at=str(payload.get("due_at"))[:40],
                forced_at=str(payload.get("forced_at"))[:40] if payload.get("forced_at") else None,
            )
            return JSONResponse({"status": "accepted"}, status_code=202)
        event = _event_from(request.headers.get("webhook-id", ""), payload, environment_id())
        if isinstance(event, str):
            return JSONResponse(error_body("invalid_webhook", event), status_code=400)
        if event is not None:
            on_webhook(event)
        return JSONResponse({"status": "accepted"}, status_code=202)

    paths = dict.fromkeys((WEBHOOK_PATH, *extra_paths))
    return Starlette(
        routes=[
            Route("/health/live", live, methods=["GET"]),
            *(Route(path, webhook, methods=["POST"]) for path in paths),
        ]
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


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def advertised_url(listen_host: str, port: int, advertise_url: str | None = None) -> str:
    """The webhook URL the agent registers: ``advertise_url`` (``{port}`` replaced by the bound port, and
    ``/webhook`` as the path when it has none), else ``http://<listen host>:<port>/webhook``."""
    if advertise_url is None:
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        return f"http://{host}:{port}{WEBHOOK_PATH}"
    parts = urlsplit(advertise_url.strip().replace("{port}", str(port)))
    if parts.path in ("", "/"):
        parts = parts._replace(path=WEBHOOK_PATH)
    return urlunsplit(parts)


def check_advertise_url(url: str) -> str | None:
    """Why ``url`` cannot be a webhook URL to advertise, or ``None``."""
    try:
        parts = urlsplit(url.strip().replace("{port}", "1"))
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return f"{url!r} is not a URL"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} must start with http:// or https://"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.username or parts.password or parts.fragment or parts.query:
        return f"{url!r} must not have a user, password, query or fragment"
    return None


def bind(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on ``host`` (port 0 = a free one), bound before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
