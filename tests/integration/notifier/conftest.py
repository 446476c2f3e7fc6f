"""Fixtures of the notifier's integration tests: the real resolver (no Kafka), a running notifier."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from services.notifier.bootstrap import build_app
from services.notifier.settings import NotifierSettings
from shared.kafka import KafkaSettings
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_required, _sqlalchemy_url
from tests.integration.notifier.support import Resolver


@pytest.fixture
def restartable_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database like ``postgres_url``, for tests that restart the server: it holds no
    admin connection across the test (a restart would kill it) and drops the database through a new one."""
    import psycopg

    def admin() -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)

    try:
        conn = admin()
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {exc}".strip()
        if _postgres_required():
            pytest.fail(message)
        pytest.skip(message)
    name = "st_" + uuid.uuid4().hex[:12]
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _sqlalchemy_url(f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def resolver() -> Resolver:
    """The real resolver over a table the test fills (``resolver.apply(event)``)."""
    return Resolver()


@pytest.fixture
def resolver_url(resolver: Resolver, serve_app: Callable[..., str]) -> str:
    return serve_app(resolver.app)


def fast_settings(database_url: str, resolver_url: str, **overrides: Any) -> NotifierSettings:
    """Settings with small delays, so retries and restarts happen within a test's patience."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "resolver_url": resolver_url,
        "consumer_group": f"notifier-{uuid.uuid4().hex[:8]}",
        "whoami_cache_seconds": 0,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
        "max_attempts": 4,
        "poll_interval_seconds": 0.05,
        "lease_seconds": 5,
        "request_timeout_seconds": 3,
        "restart_concurrency": 0,
        "workers": 16,
    }
    values.update(overrides)
    return NotifierSettings(**values)


@pytest.fixture
def start_notifier(serve_app: Callable[..., str], resolver_url: str) -> Iterator[Callable[..., httpx.Client]]:
    """``client = start_notifier(database_url, kafka_settings, **settings)``: a notifier on loopback."""
    clients: list[httpx.Client] = []

    def start(database_url: str, kafka: KafkaSettings | None, **overrides: Any) -> httpx.Client:
        if kafka is None:
            overrides.setdefault("consume", False)
        else:
            overrides["kafka"] = kafka
        settings = fast_settings(database_url, resolver_url, **overrides)
        url = serve_app(build_app(settings))
        client = httpx.Client(base_url=url, timeout=10)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
