"""Fixtures of the issuer's integration tests: settings on the real broker and database, PATs, the topic."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.issuer.auth import Role, mint_pat
from services.issuer.bootstrap import IssuerApp, build_app
from services.issuer.settings import IssuerSettings
from shared.kafka import KafkaSettings
from shared.logs import configure_logging
from shared.settings import RuntimeSettings
from tests.support import Record, read_records


def make_settings(database_url: str, kafka: KafkaSettings, data_dir: Path, **extra: Any) -> IssuerSettings:
    return IssuerSettings(
        database_url=database_url,
        kafka=kafka,
        runtime=RuntimeSettings(env="test", data_dir=data_dir, log_level="DEBUG"),
        **{
            # generous: a loaded CI machine must not turn a slow acknowledgement into a retry (a duplicate)
            "relay_delivery_timeout_s": 10.0,
            "relay_backoff_max_s": 0.5,
            "relay_poll_interval_s": 0.5,
            **extra,
        },
    )


@dataclass
class RunningIssuer:
    url: str
    app: IssuerApp
    admin: httpx.Client
    member: httpx.Client
    anonymous: httpx.Client
    _extra_clients: list[httpx.Client]

    def pat(
        self,
        role: Role,
        subject: str = "someone",
        ttl: timedelta = timedelta(hours=1),
        *,
        environments: list[str] | None = None,
        actions: list[str] | None = None,
    ) -> str:
        """A PAT recorded in the issuer's database (``ttl`` ≤ 0: its record exists, its JWT has expired)."""
        record, token = self.app.issue_pat(
            subject, role, ttl=max(ttl, timedelta(hours=1)), environments=environments, actions=actions
        )
        if ttl <= timedelta(0):  # an already expired PAT: minted in the past
            moment = datetime.now(UTC) + 2 * ttl
            return mint_pat(self.app.jwt_secret, subject, role, -ttl, now=moment, jti=record.jti)
        return str(token)

    def pat_for(self, role: str, subject: str = "someone", **scope: Any) -> str:
        return self.pat(Role(role), subject, **scope)

    def client_for(self, token: str) -> httpx.Client:
        client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
        self._extra_clients.append(client)
        return client


@pytest.fixture
def issuer_factory(serve_app: Callable[..., str], tmp_path: Path) -> Iterator[Callable[..., RunningIssuer]]:
    clients: list[httpx.Client] = []

    def start(
        database_url: str,
        kafka: KafkaSettings,
        *,
        settings: dict[str, Any] | None = None,
        clock: Callable[[], datetime] | None = None,
        start_relay: bool | None = None,
        start_usage: bool | None = None,
        start_scheduler: bool | None = None,
    ) -> RunningIssuer:
        app = build_app(
            make_settings(database_url, kafka, tmp_path / "data", **(settings or {})),
            clock=clock,
            start_relay=start_relay,
            start_usage=start_usage,
            start_scheduler=start_scheduler,
        )
        url = serve_app(app)

        def client(token: str | None) -> httpx.Client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            c = httpx.Client(base_url=url, headers=headers, timeout=30.0)
            clients.append(c)
            return c

        return RunningIssuer(
            url=url,
            app=app,
            admin=client(app.issue_pat("alice", Role.ADMIN, actor="test")[1]),
            member=client(app.issue_pat("bob", Role.MEMBER, actor="test")[1]),
            anonymous=client(None),
            _extra_clients=clients,
        )

    yield start
    for c in clients:
        c.close()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.msg!s} {record.getMessage()}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    """Every log record of the test, after the service's own logging setup (JSON, scrubbing)."""
    configure_logging("issuer", "DEBUG", json=True)
    capture = LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    yield capture
    root.removeHandler(capture)


def read_topic(
    kafka: KafkaSettings, expected: int, timeout: float = 30.0, settle: float = 1.0
) -> list[Record]:
    """Read the topic from the beginning until ``expected`` records arrived (then ``settle`` s more)."""
    return read_records(kafka.librdkafka(), kafka.topic, expected, timeout, settle)
