"""Loopback stand-ins for the issuer and the notifier, implementing exactly the BRIEF's contract.

Small FastAPI apps served with ``serve_app`` (real HTTP on 127.0.0.1); the agent under test is a real
``streamtoken run`` process talking to them. The notifier signs webhooks with ``standardwebhooks``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from standardwebhooks import Webhook

from shared.tokens import fingerprint, generate_token, new_token_id


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else None


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


@dataclass
class Slot:
    token: str = field(default_factory=generate_token, repr=False)
    token_id: str = field(default_factory=new_token_id)

    def public(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "token": self.token,
            "fingerprint": fingerprint(self.token),
            "created_at": datetime.now(UTC).isoformat(),
        }


class IssuerStandIn:
    """One environment with Token 1 and Token 2; ``rotate()`` as the seeds describe it."""

    def __init__(self, environment_id: str = "acme-telemetry-dev", pat: str = "pat-admin") -> None:
        self.environment_id = environment_id
        self.pat = pat
        self.generation = 1
        self.token_1 = Slot()
        self.token_2 = Slot()
        self.reads = 0
        self.created: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def rotate(self) -> None:
        with self._lock:
            self.token_1, self.token_2 = self.token_2, Slot()
            self.generation += 1

    def valid_tokens(self) -> set[str]:
        return {self.token_1.token, self.token_2.token}

    def state(self) -> dict[str, Any]:
        return {
            "environment_id": self.environment_id,
            "generation": self.generation,
            "token_1": self.token_1.public(),
            "token_2": self.token_2.public(),
        }

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/environments")
        async def create(request: Request) -> JSONResponse:
            if _bearer(request) != self.pat:
                return _error(401, "unauthorized", "invalid or missing personal access token")
            body = await request.json()
            env_id = f"{body['org']}-{body['project']}-{body['name']}"
            if env_id in self.created:
                return _error(409, "conflict", f"environment {env_id!r} already exists")
            self.created[env_id] = {**body, "id": env_id, "generation": 1}
            return JSONResponse(self.created[env_id], status_code=201)

        @app.get("/v1/environments/{env_id}")
        async def show(env_id: str, request: Request) -> JSONResponse:
            if _bearer(request) != self.pat:
                return _error(401, "unauthorized", "invalid or missing personal access token")
            if env_id not in self.created:
                return _error(404, "not_found", f"environment {env_id} does not exist")
            return JSONResponse(self.created[env_id])

        @app.get("/v1/environments/{env_id}/streaming-tokens")
        async def tokens(env_id: str, request: Request) -> JSONResponse:
            if _bearer(request) != self.pat:
                return _error(401, "unauthorized", "invalid or missing personal access token")
            if env_id != self.environment_id:
                return _error(404, "not_found", f"environment {env_id} does not exist")
            with self._lock:
                self.reads += 1
                return JSONResponse(self.state())

        return app


@dataclass
class Subscription:
    id: str
    environment_id: str
    deployment_id: str
    url: str
    action: str
    secret: str = field(repr=False)

    def public(self) -> dict[str, Any]:
        return {
            k: getattr(self, k) for k in ("id", "environment_id", "deployment_id", "url", "action", "secret")
        }


class NotifierStandIn:
    """Subscriptions, acknowledgements and signed webhooks; Bearer must be a valid token of the issuer."""

    def __init__(self, issuer: IssuerStandIn) -> None:
        self.issuer = issuer
        self.subscriptions: dict[str, Subscription] = {}
        self.acks: list[tuple[str, int, str]] = []  # (subscription id, generation, bearer token)
        self.deleted: list[str] = []
        self.refuse_hosts = False  # answer 422 as a notifier whose allowed webhook hosts exclude the agent
        self.subscribe_delay = 0.0  # seconds a subscribe request takes (to stop the agent meanwhile)
        self.subscribe_started = threading.Event()

    def _authorised(self, request: Request) -> bool:
        return _bearer(request) in self.issuer.valid_tokens()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/subscriptions")
        async def subscribe(request: Request) -> JSONResponse:
            if not self._authorised(request):
                return _error(401, "unauthorized", "invalid streaming token")
            body = await request.json()
            self.subscribe_started.set()
            if self.refuse_hosts:
                return _error(422, "webhook_host_not_allowed", "the webhook host 127.0.0.1 is not allowed")
            await asyncio.sleep(self.subscribe_delay)
            if body.get("action") not in ("restart", "reload") or not body.get("url"):
                return _error(422, "invalid_request", "bad subscription")
            for existing in self.subscriptions.values():
                if existing.deployment_id == body["deployment_id"]:
                    existing.url, existing.action = body["url"], body["action"]
                    return JSONResponse(existing.public(), status_code=200)
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            sub = Subscription(
                "sub_" + uuid.uuid4().hex[:12],
                self.issuer.environment_id,
                body["deployment_id"],
                body["url"],
                body["action"],
                secret,
            )
            self.subscriptions[sub.id] = sub
            return JSONResponse(sub.public(), status_code=201)

        @app.post("/v1/subscriptions/{sub_id}/acks")
        async def ack(sub_id: str, request: Request) -> Response:
            if not self._authorised(request):
                return _error(401, "unauthorized", "invalid streaming token")
            if sub_id not in self.subscriptions:
                return _error(404, "not_found", "no such subscription")
            body = await request.json()
            self.acks.append((sub_id, int(body["generation"]), _bearer(request) or ""))
            return Response(status_code=204)

        @app.delete("/v1/subscriptions/{sub_id}")
        async def delete(sub_id: str, request: Request) -> Response:
            if not self._authorised(request):
                return _error(401, "unauthorized", "invalid streaming token")
            if self.subscriptions.pop(sub_id, None) is None:
                return _error(404, "not_found", "no such subscription")
            self.deleted.append(sub_id)
            return Response(status_code=204)

        return app

    def only_subscription(self) -> Subscription:
        (sub,) = self.subscriptions.values()
        return sub

    def payload(
        self, sub: Subscription, kind: str = "streaming_tokens.rotated", action: str | None = None
    ) -> dict[str, Any]:
        return {
            "type": kind,
            "environment_id": self.issuer.environment_id,
            "generation": self.issuer.generation,
            "rotation_id": "rot_" + uuid.uuid4().hex[:8],
            "action": action or sub.action,
            "subscription_id": sub.id,
            "deployment_id": sub.deployment_id,
            "token_ids": {"token_1": self.issuer.token_1.token_id, "token_2": self.issuer.token_2.token_id},
            "occurred_at": datetime.now(UTC).isoformat(),
        }

    def send(
        self,
        sub: Subscription,
        payload: dict[str, Any],
        *,
        webhook_id: str | None = None,
        secret: str | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        """POST a Standard Webhooks request to the subscriber, as the notifier does."""
        body = json.dumps(payload)
        msg_id = webhook_id or "msg_" + uuid.uuid4().hex
        now = datetime.now(UTC)
        signed = Webhook(secret or sub.secret).sign(msg_id, now, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature if signature is not None else signed,
        }
        return httpx.post(sub.url, content=body, headers=headers, timeout=10)
