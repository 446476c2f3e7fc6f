"""Test helpers for the notifier: the real resolver over a test-filled table, webhook receivers, producing.

Environments and their events come from :mod:`tests.factories` (the issuer's own domain).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from quixstreams import Application

from services.resolver.bootstrap import build_app as build_resolver
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.events import TokenStateChanged, encode_event, encode_key
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from tests.factories import Environment

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


class Resolver:
    """The real resolver (``services.resolver.bootstrap.build_app`` without Kafka) over a token table the
    test fills with the issuer's events, as its Kafka replica would: ``apply(event)`` is "the resolver has
    read this record". Serve ``app`` on loopback (the ``resolver_url`` fixture does)."""

    def __init__(self) -> None:
        self.table = TokenTable()
        settings = ResolverSettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), usage_enabled=False)
        self.app = build_resolver(settings, table=self.table, start_replica=False)

    def apply(self, *events: TokenStateChanged) -> None:
        for event in events:
            self.table.apply_event(event.environment_id, event)


def new_environment(resolver: Resolver) -> Environment:
    """A new environment (through the issuer's domain) that the resolver already knows."""
    env = Environment.create()
    resolver.apply(env.event())
    return env


def rotate(resolver: Resolver, env: Environment) -> TokenStateChanged:
    """Rotate ``env`` (the issuer's rule) and let the resolver read the event; the event."""
    event = env.rotate()
    resolver.apply(event)
    return event


def revoke(resolver: Resolver, env: Environment) -> TokenStateChanged:
    """Revoke ``env``'s tokens (both replaced) and let the resolver read the event; the event."""
    event = env.revoke()
    resolver.apply(event)
    return event


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
