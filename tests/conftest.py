"""Fixtures every suite shares: the broker, databases, loopback HTTP servers and unique names.

The broker is Apache Kafka (KRaft, SASL_SSL + SCRAM + ACLs) started once for the session from the cached
Maven jars (``shared.kafka_broker``); tests connect as its super user ``streamtoken-admin`` unless they test
a principal's rights. Without Java 17+ or Maven the broker tests skip, except in CI, where that is a
failure. ``embedded_broker_factory`` starts the Tansu fallback for the small smoke set that runs on it.
PostgreSQL is 127.0.0.1:5432: each test gets a database of its own; when the server is unreachable the
tests skip, except in CI (``CI=true``) or with ``STREAMTOKEN_REQUIRE_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.broker import BrokerError, EmbeddedBroker, free_port
from shared.kafka import KafkaSettings
from shared.kafka_broker import ApacheKafkaBroker

os.environ.setdefault("STREAMTOKEN_ENV", "test")  # unset means prod; the session broker and services are test
# Agents started by tests keep their subscription keys here, not in the user's ~/.local/state (sticky and
# world-writable like /tmp: some tests run the agent as another user; each key file is 0600).
if "STREAMTOKEN_AGENT_STATE_DIR" not in os.environ:
    os.environ["STREAMTOKEN_AGENT_STATE_DIR"] = tempfile.mkdtemp(prefix="streamtoken-agent-state-")
    os.chmod(os.environ["STREAMTOKEN_AGENT_STATE_DIR"], 0o1777)

POSTGRES_ADMIN_URL = os.environ.get(
    "STREAMTOKEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_required() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"} or bool(
        os.environ.get("STREAMTOKEN_REQUIRE_POSTGRES")
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        if f"{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.e2e)


def _unique(request: pytest.FixtureRequest, prefix: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}"


# --- Kafka -----------------------------------------------------------------------------------------------


def _required_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaBroker]:
    """The session's Apache Kafka: one KRaft node on loopback, SASL_SSL + SCRAM, StandardAuthorizer."""
    broker = ApacheKafkaBroker(tmp_path_factory.mktemp("kafka"), port=free_port(), heap="768m")
    try:
        broker.start()
    except BrokerError as exc:
        if _required_in_ci():
            pytest.fail(f"Apache Kafka is required in CI: {exc}")
        pytest.skip(str(exc))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: ApacheKafkaBroker) -> str:
    """Bootstrap address of the session's Apache Kafka (connect with ``kafka_settings`` credentials)."""
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses."""
    return _unique(request, "t")


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make topic names no other test uses: ``topic_factory("events")``."""

    def make(base: str = "t") -> str:
        return _unique(request, base)

    return make


@pytest.fixture
def kafka_settings(kafka_broker: ApacheKafkaBroker, topic_name: str) -> KafkaSettings:
    """Admin settings on the session broker with a ``streaming-tokens`` topic of this test's own."""
    return kafka_broker.admin_settings(topic=topic_name, topic_partitions=3)


@pytest.fixture
def embedded_broker_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedBroker]]:
    """Start dedicated embedded brokers (to stop and restart in outage tests); all stopped at teardown."""
    started: list[EmbeddedBroker] = []

    def start(port: int | None = None) -> EmbeddedBroker:
        broker = EmbeddedBroker(port=port or free_port(), log_path=tmp_path / f"tansu-{len(started)}.log")
        started.append(broker.start())
        return broker

    yield start
    for broker in started:
        broker.stop()


# --- Databases -------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'streamtoken.db'}"


def _sqlalchemy_url(libpq_url: str) -> str:
    return libpq_url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this test (SQLAlchemy URL, psycopg 3), dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {exc}".strip()
        if _postgres_required():
            pytest.fail(message + " (required in CI: start it with pg_ctlcluster)")
        pytest.skip(message)
    name = "st_" + uuid.uuid4().hex[:12]
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield _sqlalchemy_url(f"{base}/{name}")
    # A fresh connection: a test (or another test on this machine) may have restarted the server meanwhile.
    for _ in range(30):
        try:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            break
        except psycopg.OperationalError:
            time.sleep(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs on SQLite and on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


# --- Loopback HTTP servers -------------------------------------------------------------------------------


class LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread. Stopping is two steps, so that several
    servers stop together: :meth:`request_stop` on each, then :meth:`join` on each."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self.url

    def request_stop(self) -> None:
        self.server.should_exit = True

    def join(self) -> None:
        self.thread.join(15)


def stop_servers(servers: list[LoopbackServer]) -> None:
    """Stop them together: every lifespan's shutdown runs at once, not one after another."""
    for server in servers:
        server.request_stop()
    for server in servers:
        server.join()


@contextmanager
def running_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    server = LoopbackServer(app, port)
    try:
        yield server.start()
    finally:
        stop_servers([server])


@contextmanager
def loopback_servers() -> Iterator[Callable[..., str]]:
    """``url = serve(app)`` inside the block; every app served is stopped together when it ends."""
    servers: list[LoopbackServer] = []

    def serve(app: Any, port: int | None = None) -> str:
        server = LoopbackServer(app, port)
        servers.append(server)
        return server.start()

    try:
        yield serve
    finally:
        stop_servers(servers)


@pytest.fixture
def serve_app() -> Iterator[Callable[..., str]]:
    """``url = serve_app(app)``: the app runs on loopback until the test ends."""
    with loopback_servers() as serve:
        yield serve


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
