"""The real issuer, resolver and notifier for the agent's tests, without Kafka.

The issuer runs on SQLite without its relay; :meth:`RealServices.relay` plays the relay's part in process:
it takes the issuer's own outbox records (the very events it would publish to ``streaming-tokens``) and
applies them to the resolver's table and the notifier's store, as their Kafka consumers would. The notifier
(``consume=False``) then signs and delivers the webhooks itself. :class:`WebhookSender` is the one thing
made by hand: webhooks a test signs (or forges) with a subscription's secret, to try the agent's checks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from services.issuer.bootstrap import IssuerApp
from services.issuer.bootstrap import build_app as build_issuer
from services.notifier.bootstrap import build_app as build_notifier
from services.notifier.store import Store
from services.resolver.bootstrap import build_app as build_resolver
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.events import decode_event
from shared.kafka import KafkaSettings
from shared.settings import RuntimeSettings
from tests.conftest import loopback_servers
from tests.integration.issuer.conftest import make_settings
from tests.integration.notifier.conftest import fast_settings


class Observed:
    """An ASGI wrapper around a real service: counts its requests by (method, path), and can hold back the
    POST requests to one path for a while (a slow service) — the service itself is untouched."""

    def __init__(self, app: Any, *, slow_path: str | None = None, delay: float = 0.0) -> None:
        self.app = app
        self.slow_path = slow_path
        self.delay = delay
        self.requests: list[tuple[str, str, str]] = []  # method, path, the bearer credential
        self.slow_started = threading.Event()
        self.lock = threading.Lock()

    def count(self, method: str, path_end: str, bearer: str | None = None) -> int:
        """Requests of ``method`` to a path ending in ``path_end`` (made with ``bearer``, when given)."""
        with self.lock:
            return sum(
                1
                for m, p, b in self.requests
                if m == method and p.endswith(path_end) and (bearer is None or b == bearer)
            )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            bearer = headers.get(b"authorization", b"").decode(errors="replace").removeprefix("Bearer ")
            with self.lock:
                self.requests.append((scope["method"], scope["path"], bearer))
            if scope["path"] == self.slow_path and scope["method"] == "POST" and self.delay:
                self.slow_started.set()
                await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


NO_KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9")  # nothing listens: nothing here may need Kafka


@dataclass
class RealStack:
    """The three services on loopback, shared by the environments tests make on it (:meth:`environment`)."""

    issuer_url: str
    issuer_app: IssuerApp
    admin: httpx.Client
    resolver_url: str
    table: TokenTable
    notifier_url: str
    store: Store
    issuer_observed: Observed
    notifier_observed: Observed
    environments: int = 0

    def relay(self) -> int:
        """Publish the issuer's pending outbox records to the resolver and the notifier; how many."""
        outbox = self.issuer_app.store
        with outbox.claim(100) as claim:
            events = [decode_event(m.payload) for m in claim.messages]
            for message, event in zip(claim.messages, events, strict=True):
                if event is not None:
                    self.table.apply_event(message.environment_id, event)
            self.store.record_events([e for e in events if e is not None])
            claim.mark_published([m.id for m in claim.messages], datetime.now(UTC))
        return len(events)

    def environment(self, name: str | None = None) -> RealServices:
        """A new environment of ``acme/telemetry`` (``dev``, then ``dev2``, ``dev3``, …), already relayed."""
        self.environments += 1
        name = name or ("dev" if self.environments == 1 else f"dev{self.environments}")
        created = self.admin.post(
            "/v1/environments", json={"org": "acme", "project": "telemetry", "name": name}
        )
        assert created.status_code == 201, created.text
        self.relay()
        return RealServices(self, created.json()["id"])


@dataclass
class RealServices:
    """One environment on a :class:`RealStack`: what a test reads and does through the real services."""

    stack: RealStack
    environment_id: str

    # The stack's URLs, apps and observers, read through the environment.
    @property
    def issuer_url(self) -> str:
        return self.stack.issuer_url

    @property
    def issuer_app(self) -> IssuerApp:
        return self.stack.issuer_app

    @property
    def admin(self) -> httpx.Client:
        return self.stack.admin

    @property
    def resolver_url(self) -> str:
        return self.stack.resolver_url

    @property
    def table(self) -> TokenTable:
        return self.stack.table

    @property
    def notifier_url(self) -> str:
        return self.stack.notifier_url

    @property
    def store(self) -> Store:
        return self.stack.store

    @property
    def issuer_observed(self) -> Observed:
        return self.stack.issuer_observed

    @property
    def notifier_observed(self) -> Observed:
        return self.stack.notifier_observed

    def relay(self) -> int:
        return self.stack.relay()

    def tokens(self) -> dict[str, Any]:
        body: dict[str, Any] = self.stack.admin.get(
            f"/v1/environments/{self.environment_id}/streaming-tokens"
        ).json()
        return body

    def rotate(self, kind: str = "rotate") -> dict[str, Any]:
        """``rotate`` or ``revoke`` at the issuer, then the relay's part."""
        answer = self.stack.admin.post(f"/v1/environments/{self.environment_id}/streaming-tokens/{kind}")
        assert answer.status_code == 200, answer.text
        self.relay()
        return self.tokens()

    def pat(self, role: str = "deployment") -> str:
        record_token = self.stack.issuer_app.issue_pat(
            "f1-agent", role, environments=[self.environment_id], actor="test"
        )
        return str(record_token[1])

    def subscriptions(self) -> list[dict[str, Any]]:
        token = self.tokens()["token_1"]["token"]
        answer = httpx.get(
            f"{self.stack.notifier_url}/v1/subscriptions", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
        listed: list[dict[str, Any]] = answer.json()
        return listed

    def acknowledged(self) -> list[int]:
        """Generations some deployment acknowledged, from the notifier's rotation report."""
        token = self.tokens()["token_1"]["token"]
        answer = httpx.get(
            f"{self.stack.notifier_url}/v1/environments/{self.environment_id}/rotations",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text
        return sorted(r["generation"] for r in answer.json()["rotations"] if r["acknowledged"])


def start_real_stack(
    serve_app: Callable[..., str],
    tmp_path: Path,
    *,
    notifier: dict[str, Any] | None = None,
    slow_subscribe: float = 0.0,
    usage_publisher: Any = None,
) -> RealStack:
    """The three services on loopback, no environment yet.

    ``notifier``: notifier settings to change (e.g. ``allowed_webhook_hosts``); ``slow_subscribe``: hold
    every subscribe request this long; ``usage_publisher``: where the resolver's usage records go (usage
    off without one).
    """
    issuer_app = build_issuer(
        make_settings(
            f"sqlite:///{tmp_path / 'issuer.db'}", NO_KAFKA, tmp_path / "issuer-data", broker_access="off"
        ),
        start_relay=False,
        start_usage=False,
        start_scheduler=False,
    )
    issuer_observed = Observed(issuer_app)
    issuer_url = serve_app(issuer_observed)
    table = TokenTable()
    resolver_url = serve_app(
        build_resolver(
            ResolverSettings(
                kafka=NO_KAFKA,
                usage_enabled=usage_publisher is not None,
                usage_interval_seconds=1.0,
                usage_tick_seconds=0.1,
            ),
            table=table,
            start_replica=False,
            status=lambda: Status.READY,
            usage_publisher=usage_publisher,
        )
    )
    database = f"sqlite:///{tmp_path / 'notifier.db'}"
    notifier_observed = Observed(
        build_notifier(
            fast_settings(
                database,
                resolver_url,
                consume=False,
                kafka=NO_KAFKA,
                runtime=RuntimeSettings(env="test", data_dir=tmp_path / "notifier-data"),
                **(notifier or {}),
            )
        ),
        slow_path="/v1/subscriptions",
        delay=slow_subscribe,
    )
    notifier_url = serve_app(notifier_observed)
    admin_pat = issuer_app.issue_pat("alice", "admin", actor="test")[1]
    admin = httpx.Client(base_url=issuer_url, headers={"Authorization": f"Bearer {admin_pat}"}, timeout=30)
    return RealStack(
        issuer_url,
        issuer_app,
        admin,
        resolver_url,
        table,
        notifier_url,
        Store.from_url(database),
        issuer_observed,
        notifier_observed,
    )


@contextmanager
def real_stack_on_loopback(tmp_path: Path, **options: Any) -> Iterator[RealStack]:
    """:func:`start_real_stack` for a longer scope than a test's (a module's): served, then stopped."""
    with loopback_servers() as serve:
        stack = start_real_stack(serve, tmp_path, **options)
        try:
            yield stack
        finally:
            stack.admin.close()


def start_real_services(
    serve_app: Callable[..., str],
    tmp_path: Path,
    *,
    notifier: dict[str, Any] | None = None,
    slow_subscribe: float = 0.0,
    usage_publisher: Any = None,
) -> RealServices:
    """A stack of this test's own (:func:`start_real_stack`) with one environment, ``acme-telemetry-dev``."""
    stack = start_real_stack(
        serve_app, tmp_path, notifier=notifier, slow_subscribe=slow_subscribe, usage_publisher=usage_publisher
    )
    return stack.environment()


@dataclass
class WebhookSender:
    """Signed (or forged) Standard Webhooks requests to an agent, made by the test."""

    url: str
    secret: str = field(repr=False)

    def send(
        self,
        payload: dict[str, Any],
        *,
        webhook_id: str | None = None,
        secret: str | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        body = json.dumps(payload)
        msg_id = webhook_id or "msg_" + uuid.uuid4().hex
        now = datetime.now(UTC)
        signed = Webhook(secret or self.secret).sign(msg_id, now, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature if signature is not None else signed,
        }
        return httpx.post(self.url, content=body, headers=headers, timeout=10)


def log_lines(stderr: str, event: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines of ``event``."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                lines.append(record)
    return lines


def agent_args(real: RealServices, tmp_path: Path, *more: str) -> list[str]:
    """``streamtoken run`` options for the real services, with a deployment PAT in a file."""
    pat = tmp_path / "pat"
    if not pat.exists():
        pat.write_text(real.pat())
        pat.chmod(0o600)
    return [
        "--issuer-url", real.issuer_url, "--environment", real.environment_id, "--pat-file", str(pat),
        "--portal-url", real.resolver_url, "--notifier-url", real.notifier_url,
        "--deployment-id", "f1-producer", "--state-dir", str(tmp_path / "state"), *more,
    ]  # fmt: skip


def sender(real: RealServices, tmp_path: Path, sub: dict[str, Any]) -> WebhookSender:
    """What a test needs to sign webhooks as the notifier does: the subscription's secret, read from the
    notifier's store with the management key the agent keeps in its state dir (``agent_args``)."""
    (key_file,) = (tmp_path / "state").iterdir()
    secret = real.store.secret(real.environment_id, sub["id"], key_file.read_text().strip())
    assert secret is not None
    return WebhookSender(sub["url"], secret)
