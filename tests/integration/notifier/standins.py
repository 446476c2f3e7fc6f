"""Test helpers for the notifier: a stand-in resolver, webhook receivers, environments and events.

``resolver_standin`` implements the resolver's ``GET /v1/whoami`` exactly as the BRIEF contract says, from
a dict of fingerprints. It stands in for the resolver team's service while both are built in parallel; the
lead can swap the real resolver in here (and only here).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quixstreams import Application

from shared.events import Change, ChangeType, TokenRef, TokenStateChanged, encode_event, encode_key
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.tokens import fingerprint, generate_token, new_token_id

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode() if body is not None else b""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class ResolverStandin:
    """ASGI app: ``GET /v1/whoami`` → ``{"environment_id","slot","token_id","generation"}`` or 401."""

    def __init__(self) -> None:
        self.identities: dict[str, dict[str, Any]] = {}
        self.calls = 0

    def add(self, token: str, environment_id: str, slot: int, token_id: str, generation: int) -> None:
        self.identities[fingerprint(token)] = {
            "environment_id": environment_id,
            "slot": slot,
            "token_id": token_id,
            "generation": generation,
        }

    def remove(self, token: str) -> None:
        self.identities.pop(fingerprint(token), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.calls += 1
        if scope["path"] != "/v1/whoami" or scope["method"] != "GET":
            await _json(send, 404, {"error": "not_found", "message": "no such route"})
            return
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode().partition(" ")
        identity = self.identities.get(fingerprint(token.strip())) if scheme.lower() == "bearer" else None
        if identity is None:
            await _json(send, 401, {"error": "unauthorized", "message": "unknown or deactivated token"})
            return
        await _json(send, 200, identity)


@dataclass
class Environment:
    """A test environment with its two tokens, registered with the stand-in resolver."""

    id: str
    token_1: str = field(default_factory=generate_token)
    token_2: str = field(default_factory=generate_token)
    token_ids: tuple[str, str] = field(default_factory=lambda: (new_token_id(), new_token_id()))
    generation: int = 1

    def register(self, resolver: ResolverStandin) -> Environment:
        resolver.add(self.token_1, self.id, 1, self.token_ids[0], self.generation)
        resolver.add(self.token_2, self.id, 2, self.token_ids[1], self.generation)
        return self

    def auth(self, slot: int = 1, key: str | None = None) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.token_1 if slot == 1 else self.token_2}"}
        if key is not None:
            headers["x-subscription-key"] = key
        return headers

    def rotate(self, resolver: ResolverStandin) -> TokenStateChanged:
        """Rotate as the issuer does (Token 1 out, Token 2 becomes Token 1, a new Token 2); the event."""
        resolver.remove(self.token_1)
        self.token_1, self.token_2 = self.token_2, generate_token()
        self.token_ids = (self.token_ids[1], new_token_id())
        self.generation += 1
        self.register(resolver)
        return self.event(self.generation)

    def revoke(self, resolver: ResolverStandin) -> TokenStateChanged:
        """Replace both tokens (an emergency revocation); the event."""
        resolver.remove(self.token_1)
        resolver.remove(self.token_2)
        self.token_1, self.token_2 = generate_token(), generate_token()
        self.token_ids = (new_token_id(), new_token_id())
        self.generation += 1
        self.register(resolver)
        return self.event(self.generation, ChangeType.REVOKED)

    def event(self, generation: int, change: ChangeType = ChangeType.ROTATED) -> TokenStateChanged:
        org, project, name = self.id.split("-")
        return TokenStateChanged(
            environment_id=self.id,
            org=org,
            project=project,
            environment=name,
            generation=generation,
            tokens=(
                TokenRef(slot=1, token_id=self.token_ids[0], fingerprint=fingerprint(self.token_1)),
                TokenRef(slot=2, token_id=self.token_ids[1], fingerprint=fingerprint(self.token_2)),
            ),
            change=Change(
                type=change, actor="pat:test", at=datetime.now(UTC), rotation_id=f"rot_{uuid.uuid4().hex[:8]}"
            ),
        )


def new_environment(resolver: ResolverStandin) -> Environment:
    suffix = uuid.uuid4().hex[:8]
    return Environment(id=f"acme-tele-e{suffix}").register(resolver)


def produce(kafka: KafkaSettings, *events: TokenStateChanged | str) -> None:
    """Publish events as the issuer's relay does: keyed by environment id, on ``kafka.topic``; a plain
    environment id publishes its tombstone (the environment was deleted)."""
    ensure_streaming_tokens_topic(kafka)
    app = Application(broker_address=kafka.connection_config(), consumer_group="test-producer")
    with app.get_producer() as producer:
        for event in events:
            if isinstance(event, str):
                producer.produce(kafka.topic, key=encode_key(event), value=None)
            else:
                producer.produce(kafka.topic, key=encode_key(event.environment_id), value=encode_event(event))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """ASGI webhook receiver recording every request; per-path behaviour set by the test.

    ``fail_first[path] = (n, status, retry_after)`` answers the first n requests with ``status``;
    ``always[path] = status`` answers every request with it; ``delay`` sleeps before answering.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[Received] = []
        self.fail_first: dict[str, tuple[int, int, str | None]] = {}
        self.always: dict[str, int] = {}
        self.delay = delay
        self._lock = threading.Lock()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def ids(self, path: str) -> set[str]:
        return {r.headers["webhook-id"] for r in self.at(path)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await _read_body(receive)
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.requests.append(Received(path, headers, body))
            seen = sum(1 for r in self.requests if r.path == path)
        if self.delay:
            await asyncio.sleep(self.delay)
        if path in self.always:
            await _json(send, self.always[path], {"ok": False})
            return
        if path in self.fail_first:
            count, status, retry_after = self.fail_first[path]
            if seen <= count:
                extra = [(b"retry-after", retry_after.encode())] if retry_after is not None else []
                await _json(send, status, {"ok": False}, extra)
                return
        await _json(send, 200, {"ok": True})
