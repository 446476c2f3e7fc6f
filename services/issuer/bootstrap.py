"""Wire the issuer: settings → secrets, database, Kafka, relay, handlers and the FastAPI app.

``build_app(settings, **overrides)`` builds everything from settings; tests override single parts
(``publisher``, ``topic_admin``, ``broker_access``, ``clock``, ``token_factory``, ``relay_observer``,
``start_relay``, ``resolver_probe``).
Nothing talks to the database or Kafka until the app starts (its lifespan runs the migrations and the relay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from services.issuer import handlers
from services.issuer.adapters import migrate
from services.issuer.adapters.broker import make_broker_access
from services.issuer.adapters.db import SqlStore, make_engine
from services.issuer.adapters.kafka import KafkaTopicAdmin, QuixPublisher
from services.issuer.adapters.relay import OutboxRelay
from services.issuer.adapters.resolvers import HttpResolverProbe
from services.issuer.api import build_router
from services.issuer.crypto import TokenCipher
from services.issuer.metrics import IssuerMetrics
from services.issuer.secrets import resolve_encryption_key, resolve_jwt_secret
from services.issuer.settings import IssuerSettings
from shared.logs import get_logger
from shared.web import health_router, install_error_handlers

log = get_logger(__name__)

_OVERRIDES = frozenset(
    {
        "publisher",
        "topic_admin",
        "broker_access",
        "clock",
        "token_factory",
        "relay_observer",
        "start_relay",
        "metrics",
        "resolver_probe",
    }
)


def build_app(settings: IssuerSettings | None = None, **overrides: Any) -> FastAPI:
    """The issuer as an ASGI app. Raises ``SecretConfigError`` for a missing or unfit secret outside dev."""
    unknown = set(overrides) - _OVERRIDES
    if unknown:
        raise TypeError(f"unknown overrides: {sorted(unknown)}; known: {sorted(_OVERRIDES)}")
    settings = settings or IssuerSettings()
    cipher = TokenCipher(resolve_encryption_key(settings.encryption_key, settings.runtime))
    jwt_secret = resolve_jwt_secret(settings.jwt_secret, settings.runtime)
    engine = make_engine(settings.resolved_database_url())
    store = SqlStore(engine)
    metrics: IssuerMetrics = overrides.get("metrics") or IssuerMetrics()
    publisher = overrides.get("publisher") or QuixPublisher(settings.kafka, settings.relay_delivery_timeout_s)
    topic_admin = overrides.get(
        "topic_admin", KafkaTopicAdmin(settings.kafka, timeout_s=min(settings.relay_delivery_timeout_s, 5.0))
    )
    broker_access = overrides.get("broker_access") or make_broker_access(settings)
    access = handlers.StoreAccessSource(store, cipher, lambda: deps.clock())
    relay = OutboxRelay(
        store,
        publisher,
        metrics=metrics,
        topic_admin=topic_admin,
        batch_size=settings.relay_batch_size,
        backoff_max_s=settings.relay_backoff_max_s,
        poll_interval_s=settings.relay_poll_interval_s,
        observer=overrides.get("relay_observer"),
        housekeeping=lambda: housekeeping(),
        republish=(
            lambda: handlers.republish_all(
                deps, actor="system:relay", reconcile_broker=False, skip_pending=True
            )
        )
        if settings.republish_on_start
        else None,
        broker=broker_access,
        access=access,
        clock=lambda: deps.clock(),
    )
    resolver_urls = settings.resolver_url_list()
    internal_key = settings.resolver_internal_key
    resolver_probe = overrides.get("resolver_probe") or (
        HttpResolverProbe(
            resolver_urls,
            internal_key=internal_key.get_secret_value() if internal_key else None,
            timeout_s=settings.resolver_timeout_s,
        )
        if resolver_urls
        else None
    )
    deps = handlers.Deps(
        store=store,
        cipher=cipher,
        wakeup=relay,
        metrics=metrics,
        broker_enforced=relay.broker_enforced,
        broker_reconcile=relay.request_reconcile,
        resolvers=resolver_probe,
    )
    if "clock" in overrides:
        deps.clock = overrides["clock"]
    if "token_factory" in overrides:
        deps.token_factory = overrides["token_factory"]

    def housekeeping() -> None:
        now = deps.clock()
        outbox, keys = store.purge(
            now - timedelta(hours=settings.outbox_retention_hours),
            now - timedelta(hours=settings.idempotency_ttl_hours),
        )
        if outbox or keys:
            log.info("housekeeping_purged", outbox_rows=outbox, idempotency_keys=keys)

    start_relay = bool(overrides.get("start_relay", settings.relay_enabled))
    state = {"migrated": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        migrate.upgrade(engine)
        state["migrated"] = True
        if start_relay:
            relay.start()
        log.info(
            "issuer_started",
            database=engine.dialect.name,
            topic=settings.kafka.topic,
            relay=start_relay,
            env=settings.runtime.env,
        )
        try:
            yield
        finally:
            relay.stop()
            if resolver_probe is not None:
                resolver_probe.close()
            engine.dispose()

    def ready() -> tuple[bool, dict[str, Any]]:
        kafka_ok = relay.healthy or relay.broker_error is not None
        if not relay.broker_enforced:
            broker = "off"
        else:
            broker = "ok" if relay.broker_error is None else f"retrying ({relay.broker_error})"
        detail = {
            "database": "migrated" if state["migrated"] else "starting",
            "relay": ("running" if relay.running else "stopped") if start_relay else "disabled",
            "kafka": "ok" if kafka_ok else f"retrying ({relay.last_error})",
            "broker_access": broker,
            "status": "ok" if relay.healthy else "degraded",
        }
        return state["migrated"] and (relay.running or not start_relay), detail

    app = FastAPI(
        redirect_slashes=False,  # answer a trailing slash with a JSON 404, not an empty 307
        title="streamtoken issuer",
        version="1",
        description="Environments, their streaming tokens (Token 1 / Token 2), rotation and the audit log.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health_router(ready, metrics.registry))
    app.include_router(build_router(deps))
    app.state.deps = deps
    app.state.relay = relay
    app.state.settings = settings
    app.state.jwt_secret = jwt_secret
    return app
