"""Wire the issuer: settings → secrets, database, Kafka, relay, handlers and the FastAPI app.

``build_app(settings, **overrides)`` builds everything from settings; tests override single parts
(``publisher``, ``topic_admin``, ``broker_access``, ``clock``, ``token_factory``, ``relay_observer``,
``start_relay``, ``resolver_probe``). ``app.state.issue_pat`` records a PAT (tests, the bootstrap path).
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
from services.issuer.auth import Role
from services.issuer.crypto import TokenCipher
from services.issuer.metrics import IssuerMetrics
from services.issuer.pats import PatVerifier
from services.issuer.ports import PatRecord
from services.issuer.secrets import resolve_encryption_keys, resolve_jwt_secret
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
    cipher = TokenCipher(resolve_encryption_keys(settings.encryption_key, settings.runtime))
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
        jwt_secret=jwt_secret,
        pat_default_ttl=timedelta(days=settings.pat_ttl_days),
        pat_max_ttl=timedelta(days=settings.pat_max_ttl_days),
        max_grace_tokens=settings.max_grace_tokens,
    )
    pats = PatVerifier(jwt_secret, store, lambda: deps.clock(), ttl_s=settings.pat_cache_ttl_s)
    deps.pat_revoked = pats.forget
    if "clock" in overrides:
        deps.clock = overrides["clock"]
    if "token_factory" in overrides:
        deps.token_factory = overrides["token_factory"]

    def housekeeping() -> None:
        now = deps.clock()
        retention = settings.audit_retention_days
        outbox, keys, audit = store.purge(
            now - timedelta(hours=settings.outbox_retention_hours),
            now - timedelta(hours=settings.idempotency_ttl_hours),
            audit_before=now - timedelta(days=retention) if retention > 0 else None,
        )
        if outbox or keys or audit:
            log.info("housekeeping_purged", outbox_rows=outbox, idempotency_keys=keys, audit_entries=audit)

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
        # Public: states and Kafka error names only (shared.web cuts every text to its first words); the
        # full reason is in the relay's outbox_relay_retry log line.
        kafka_ok = relay.healthy or relay.broker_error is not None
        detail: dict[str, Any] = {
            "database": "migrated" if state["migrated"] else "starting",
            "relay": ("running" if relay.running else "stopped") if start_relay else "disabled",
            "kafka": "ok" if kafka_ok else "retrying",
        }
        if not kafka_ok:
            detail["kafka_reason"] = relay.error_code or "unknown"
        if not relay.broker_enforced:
            detail["broker_access"] = "off"
        elif relay.broker_error is None:
            detail["broker_access"] = "ok"
        else:
            detail["broker_access"] = "retrying"
            detail["broker_access_reason"] = relay.error_code or "unknown"
        detail["status"] = "ok" if relay.healthy else "degraded"
        return state["migrated"] and (relay.running or not start_relay), detail

    def issue_pat(
        subject: str,
        role: Role | str,
        *,
        ttl: timedelta | None = None,
        environments: list[str] | None = None,
        actions: list[str] | None = None,
        actor: str = "system:bootstrap",
    ) -> tuple[PatRecord, str]:
        """Record a PAT straight in the database (the bootstrap path, and tests): ``(record, JWT)``."""
        if not state["migrated"]:
            migrate.upgrade(engine)
            state["migrated"] = True
        return handlers.create_pat(
            deps,
            subject,
            str(role),
            actor=actor,
            environments=environments,
            actions=actions,
            ttl=ttl,
        )

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
    app.state.pats = pats
    app.state.issue_pat = issue_pat
    return app


# -- commands run on the issuer's machine, straight on its database ---------------------------------------


def _local_deps(settings: IssuerSettings) -> handlers.Deps:
    cipher = TokenCipher(resolve_encryption_keys(settings.encryption_key, settings.runtime))
    engine = make_engine(settings.resolved_database_url())
    migrate.upgrade(engine)
    return handlers.Deps(
        store=SqlStore(engine),
        cipher=cipher,
        jwt_secret=resolve_jwt_secret(settings.jwt_secret, settings.runtime),
        pat_default_ttl=timedelta(days=settings.pat_ttl_days),
        pat_max_ttl=timedelta(days=settings.pat_max_ttl_days),
    )


def bootstrap_pat(
    settings: IssuerSettings,
    subject: str,
    role: str,
    *,
    ttl: timedelta | None = None,
    environments: list[str] | None = None,
    actions: list[str] | None = None,
    created_by: str = "bootstrap",
) -> tuple[PatRecord, str]:
    """Record a PAT in the issuer's database with its own settings and secrets (the first admin PAT:
    ``streamtoken admin bootstrap-pat``). Raises ``SecretConfigError`` or ``handlers.IssuerError``."""
    deps = _local_deps(settings)
    try:
        return handlers.create_pat(
            deps,
            subject,
            role,
            actor=f"system:{created_by}",
            environments=environments,
            actions=actions,
            ttl=ttl,
        )
    finally:
        assert isinstance(deps.store, SqlStore)
        deps.store.dispose()


def reencrypt(settings: IssuerSettings) -> tuple[int, int]:
    """Encrypt every stored token and idempotent answer again with the current (first) key; ``(tokens,
    answers)``. Every configured key decrypts, so run it after putting a new key first."""
    deps = _local_deps(settings)
    store = deps.store
    assert isinstance(store, SqlStore)
    try:
        return store.reencrypt(deps.cipher.reencrypt)
    finally:
        store.dispose()
