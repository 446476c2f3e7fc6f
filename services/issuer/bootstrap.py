"""Wire the issuer: settings → secrets, database, Kafka, relay, handlers and the FastAPI app.

``build_app(settings, *, store=None, publisher=None, clock=None, ...)`` builds everything from settings;
tests replace single parts with its typed keyword-only overrides. The :class:`IssuerApp` it returns holds
typed handles on the parts (``app.deps``, ``app.relay``, ``app.issue_pat``, ...): routes get theirs by
closure, never through ``app.state``.
Nothing talks to the database or Kafka until the app starts (its lifespan runs the migrations and the relay).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.issuer import handlers, usage, web
from services.issuer.adapters import migrate
from services.issuer.adapters.broker import make_broker_access
from services.issuer.adapters.db import SqlStore, database_problem, make_engine
from services.issuer.adapters.kafka import KafkaTopicAdmin, QuixPublisher
from services.issuer.adapters.notifier import HttpNotifierProbe
from services.issuer.adapters.relay import OutboxRelay, RelayHealth
from services.issuer.adapters.resolvers import HttpResolverProbe
from services.issuer.adapters.usage import UsageFolder
from services.issuer.api import build_router
from services.issuer.auth import Role
from services.issuer.crypto import TokenCipher
from services.issuer.metrics import IssuerMetrics
from services.issuer.pats import PatVerifier
from services.issuer.ports import BrokerAccess, CommitOutcomeUnknown, PatRecord, Publisher, TopicAdmin
from services.issuer.secrets import resolve_encryption_keys, resolve_jwt_secret
from services.issuer.settings import IssuerSettings
from services.issuer.usage import NotifierProbe
from services.issuer.web.sessions import SessionManager
from shared import __version__
from shared.errors import error_body
from shared.logs import get_logger
from shared.web import health_router, install_error_handlers

log = get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IssuerApp(FastAPI):
    """The issuer's ASGI app with typed handles on what :func:`build_app` wired into it (tests, the
    bootstrap path): the handlers' ``deps`` and ``store``, the outbox ``relay``, the ``jwt_secret`` PATs
    are signed with, the page's ``ui_sessions``, ``issue_pat`` (a PAT recorded straight in the database:
    ``(record, JWT)``) and ``run_schedules`` (one pass of the scheduler: ``[(environment id, outcome)]``)."""

    deps: handlers.Deps
    store: SqlStore
    relay: OutboxRelay
    jwt_secret: str
    ui_sessions: SessionManager
    run_schedules: Callable[[], list[tuple[str, str]]]
    ensure_migrated: Callable[[], None]  # runs the migrations once, unless the app's start already did

    def issue_pat(
        self,
        subject: str,
        role: Role | str,
        *,
        ttl: timedelta | None = None,
        environments: list[str] | None = None,
        actions: list[str] | None = None,
        actor: str = "system:bootstrap",
    ) -> tuple[PatRecord, str]:
        """Record a PAT straight in the database (the bootstrap path, and tests): ``(record, JWT)``."""
        self.ensure_migrated()
        return handlers.create_pat(
            self.deps,
            subject,
            str(role),
            actor=actor,
            environments=environments,
            actions=actions,
            ttl=ttl,
        )


def build_app(
    settings: IssuerSettings | None = None,
    *,
    store: SqlStore | None = None,
    publisher: Publisher | None = None,
    topic_admin: TopicAdmin | None = None,
    broker_access: BrokerAccess | None = None,
    metrics: IssuerMetrics | None = None,
    clock: Callable[[], datetime] | None = None,
    start_relay: bool | None = None,
    start_usage: bool | None = None,
    start_scheduler: bool | None = None,
) -> IssuerApp:
    """The issuer as an ASGI app. Raises ``SecretConfigError`` for a missing or unfit secret outside dev.

    Each override replaces the part built from settings: ``store`` an already built :class:`SqlStore`
    (its engine is then the caller's: not disposed here), ``clock`` (UTC now by default) the time of
    every part (handlers, relay, usage fold, PATs, page sessions). ``start_relay`` defaults to
    ``settings.relay_enabled``, ``start_usage`` to ``settings.usage_fold_enabled`` with the relay,
    ``start_scheduler`` to the relay's.
    """
    settings = settings or IssuerSettings()
    now_utc = clock or _utc_now
    cipher = TokenCipher(resolve_encryption_keys(settings.encryption_key, settings.runtime))
    jwt_secret = resolve_jwt_secret(settings.jwt_secret, settings.runtime)
    owns_engine = store is None
    if store is None:
        store = SqlStore(
            make_engine(settings.resolved_database_url(), busy_timeout_s=settings.sqlite_busy_timeout_s)
        )
    engine = store.engine
    metrics = metrics or IssuerMetrics()
    publisher = publisher or QuixPublisher(settings.kafka, settings.relay_delivery_timeout_s)
    topic_admin = topic_admin or KafkaTopicAdmin(
        settings.kafka, timeout_s=min(settings.relay_delivery_timeout_s, 5.0)
    )
    broker_access = broker_access or make_broker_access(settings)
    relay = OutboxRelay(
        store,
        publisher,
        metrics=metrics,
        topic_admin=topic_admin,
        batch_size=settings.relay_batch_size,
        backoff_max_s=settings.relay_backoff_max_s,
        poll_interval_s=settings.relay_poll_interval_s,
        topic_check_interval_s=settings.relay_topic_check_interval_s,
        housekeeping=lambda: housekeeping(),
        republish=(
            lambda: handlers.republish_all(
                deps, actor="system:relay", reconcile_broker=False, skip_pending=True
            )
        )
        if settings.republish_on_start
        else None,
        broker=broker_access,
        access=handlers.StoreAccessSource(store, cipher, now_utc),
        purges=handlers.StoreTopicPurges(store, now_utc),
        clock=now_utc,
    )
    resolver_urls = settings.resolver_url_list()
    internal_key = settings.resolver_internal_key
    resolver_probe = (
        HttpResolverProbe(
            resolver_urls,
            internal_key=internal_key.get_secret_value() if internal_key else None,
            timeout_s=settings.resolver_timeout_s,
        )
        if resolver_urls
        else None
    )
    pats = PatVerifier(jwt_secret, store, now_utc, ttl_s=settings.pat_cache_ttl_s)
    ui_sessions = web.session_manager(store, pats, jwt_secret, now_utc, settings)

    def pat_revoked(jti: str) -> None:  # after the revocation's commit: its cache entry and page sessions end
        pats.forget(jti)
        ui_sessions.end_for_pat(jti)

    deps = handlers.Deps(
        store=store,
        cipher=cipher,
        wakeup=relay,
        clock=now_utc,
        metrics=metrics,
        broker_enforced=relay.broker_enforced,
        broker_reconcile=relay.request_reconcile,
        resolvers=resolver_probe,
        jwt_secret=jwt_secret,
        pat_default_ttl=timedelta(days=settings.pat_ttl_days),
        pat_max_ttl=timedelta(days=settings.pat_max_ttl_days),
        pat_revoked=pat_revoked,
        max_grace_tokens=settings.max_grace_tokens,
        usage_window=timedelta(seconds=settings.usage_window_s),
        commit_read_back_s=settings.commit_read_back_s,
    )
    notifier_key = settings.notifier_internal_key
    notifier_probe: NotifierProbe | None = (
        HttpNotifierProbe(
            settings.notifier_url,
            internal_key=notifier_key.get_secret_value() if notifier_key else None,
            timeout_s=settings.notifier_timeout_s,
        )
        if settings.notifier_url
        else None
    )
    folder = UsageFolder(settings.kafka, store, group=settings.usage_group, clock=now_utc)

    def housekeeping() -> None:
        now = now_utc()
        retention = settings.audit_retention_days
        outbox, keys, audit = store.purge(
            now - timedelta(hours=settings.outbox_retention_hours),
            now - timedelta(hours=settings.idempotency_ttl_hours),
            audit_before=now - timedelta(days=retention) if retention > 0 else None,
        )
        if outbox or keys or audit:
            log.info("housekeeping_purged", outbox_rows=outbox, idempotency_keys=keys, audit_entries=audit)

    relay_on = settings.relay_enabled if start_relay is None else start_relay
    usage_on = (settings.usage_fold_enabled and relay_on) if start_usage is None else start_usage
    scheduler_on = relay_on if start_scheduler is None else start_scheduler
    scheduler = Scheduler(
        lambda: scheduled_housekeeping(), settings.schedule_interval_s, name="issuer-scheduler"
    )
    last_prune = {"at": 0.0}

    def run_schedules() -> list[tuple[str, str]]:
        return usage.run_schedules(deps, notifier_probe)

    def scheduled_housekeeping() -> None:
        """Scheduled rotations (each pass), and (hourly) clients not seen within the retention."""
        run_schedules()
        if time.monotonic() - last_prune["at"] >= 3600:
            last_prune["at"] = time.monotonic()
            cutoff = now_utc() - timedelta(hours=settings.usage_client_retention_hours)
            pruned = store.prune_usage(cutoff)
            if pruned:
                log.info("usage_clients_pruned", clients=pruned)

    state = {"migrated": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        migrate.upgrade(engine)
        state["migrated"] = True
        if relay_on:
            relay.start()
        if usage_on:
            folder.start()
        if scheduler_on:
            scheduler.start()
        log.info(
            "issuer_started",
            database=engine.dialect.name,
            topic=settings.kafka.topic,
            relay=relay_on,
            env=settings.runtime.env,
        )
        try:
            yield
        finally:
            scheduler.stop()
            folder.stop()
            relay.stop()
            if resolver_probe is not None:
                resolver_probe.close()
            if notifier_probe is not None:
                notifier_probe.close()
            if owns_engine:
                engine.dispose()

    def ready() -> tuple[bool, dict[str, Any]]:
        # Public: states, error names and numbers only (shared.web cuts every text to its first words);
        # the full reason is in the relay's outbox_relay_retry log line. Never a database call here:
        # this runs on the event loop, and a locked SQLite file would block it.
        running = relay.running or not relay_on
        detail = readiness(
            relay.health(),
            now_utc(),
            migrated=state["migrated"],
            relay_state=("running" if relay.running else "stopped") if relay_on else "disabled",
            broker_enforced=relay.broker_enforced,
            stale_after_s=settings.outbox_stale_after_s,
        )
        # The usage fold (issue 12) is reported, never a reason for "degraded": rotations do not need it.
        if usage_on:
            detail["usage_fold"] = (
                "retrying" if folder.last_error else "running" if folder.running else "stopped"
            )
            detail["usage_folded"] = folder.folded
        else:
            detail["usage_fold"] = "disabled"
        return state["migrated"] and running, detail

    def ensure_migrated() -> None:
        if not state["migrated"]:
            migrate.upgrade(engine)
            state["migrated"] = True

    app = IssuerApp(
        redirect_slashes=False,  # answer a trailing slash with a JSON 404, not an empty 307
        title="streamtoken issuer",
        version=__version__,
        description="Environments, their streaming tokens (Token 1 / Token 2), rotation and the audit log.",
        lifespan=lifespan,
    )
    install_error_handlers(app, api_errors={503: DATABASE_UNAVAILABLE})
    install_database_errors(app)
    app.include_router(health_router(ready, metrics.registry))
    app.include_router(build_router(deps, pats, ui_sessions, notifier_probe))
    web.install_ui(app, ui_sessions)  # the page under /ui (services/issuer/web)
    app.deps = deps
    app.store = store
    app.relay = relay
    app.jwt_secret = jwt_secret
    app.ui_sessions = ui_sessions
    app.ensure_migrated = ensure_migrated
    app.run_schedules = run_schedules
    return app


def readiness(
    health: RelayHealth,
    now: datetime,
    *,
    migrated: bool,
    relay_state: str,
    broker_enforced: bool,
    stale_after_s: float,
) -> dict[str, Any]:
    """The body of ``/health/ready``: each part's state, and ``status`` ``ok`` or ``degraded`` with the
    first ``reason`` (``relay_stopped``, ``database_unavailable``/``_locked``/``_full``,
    ``kafka_unreachable``, ``broker_access_failing``, ``outbox_stale``)."""

    def age(moment: datetime | None) -> float | None:
        return None if moment is None else round(max((now - moment).total_seconds(), 0.0), 3)

    oldest_age = age(health.oldest_pending_at)
    detail: dict[str, Any] = {
        "database": ("unavailable" if health.database_error else "migrated") if migrated else "starting",
        "relay": relay_state,
        "kafka": "retrying" if health.kafka_error else "ok",
        "kafka_last_success_s_ago": age(health.kafka_last_success_at),
        "kafka_last_error": health.kafka_last_error,
        "outbox_pending": health.pending,
        "outbox_oldest_pending_age_s": oldest_age,
    }
    if health.kafka_error:
        detail["kafka_reason"] = health.kafka_error
    if health.database_error:
        detail["database_reason"] = health.database_error
    if not broker_enforced:
        detail["broker_access"] = "off"
    elif health.broker_error is None:
        detail["broker_access"] = "ok"
    else:
        detail["broker_access"] = "retrying"
        detail["broker_access_reason"] = health.broker_error
    if health.topic_lost is not None:
        detail["topic_last_republish_reason"] = health.topic_lost
    reasons = [
        *(["relay_stopped"] if relay_state == "stopped" else []),
        *([health.database_error] if health.database_error else []),
        *(["kafka_unreachable"] if health.kafka_error else []),
        *(["broker_access_failing"] if health.broker_error else []),
        *(["outbox_stale"] if oldest_age is not None and oldest_age > stale_after_s else []),
    ]
    detail["status"] = "degraded" if reasons else "ok"
    if reasons:
        detail["reason"] = reasons[0]
    return detail


DATABASE_UNAVAILABLE = (
    "database_unavailable, database_locked or database_full: the database is down, locked or full "
    "(nothing was changed; retry after Retry-After seconds); database_commit_unknown: the connection was "
    "lost while the change committed and the database could not be read back, so it may have been "
    "applied (read the resource before retrying, or retry with the same Idempotency-Key)"
)

COMMIT_UNKNOWN = (
    "the issuer's database connection was lost while this change was committing, and whether it was "
    "applied is not known: read what it changed before you retry (a rotation or revocation: the "
    "environment's generation; a new PAT: the PAT list, and revoke one you did not receive); a request "
    "sent with an Idempotency-Key can be retried with the same key"
)


def install_database_errors(app: FastAPI) -> None:
    """A database that is down, locked or full answers 503 ``{"error": "database_unavailable" | ...}``
    with what to do and ``Retry-After``, never a 500 with a trace (the transaction rolled back)."""
    import sqlalchemy as sa

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        problem = database_problem(exc)
        if problem is None:
            log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, detail=str(exc))
            return JSONResponse(
                error_body("internal_error", "the service failed to handle this request; see its log"),
                status_code=500,
            )
        orig = getattr(exc, "orig", None) or exc  # the driver's message, not SQL and its parameters
        first_line = (str(orig).strip().splitlines() or [""])[0][:200]
        log.warning("database_error", path=request.url.path, error=problem.code, detail=first_line)
        return JSONResponse(
            error_body(problem.code, problem.message), status_code=503, headers={"Retry-After": "2"}
        )

    async def commit_unknown(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database_error", path=request.url.path, error="database_commit_unknown", detail=str(exc))
        return JSONResponse(
            error_body("database_commit_unknown", COMMIT_UNKNOWN),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    app.add_exception_handler(sa.exc.DBAPIError, database_error)
    app.add_exception_handler(sa.exc.TimeoutError, database_error)
    app.add_exception_handler(CommitOutcomeUnknown, commit_unknown)


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


class Scheduler:
    """Calls ``job`` every ``interval_s`` seconds on a thread of its own until stopped; a failing pass is
    logged and the next one runs as usual."""

    def __init__(self, job: Callable[[], object], interval_s: float, *, name: str) -> None:
        self._job = job
        self._interval_s = interval_s
        self._name = name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self._job()
            except Exception as exc:
                log.warning("scheduler_pass_failed", error=type(exc).__name__)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
