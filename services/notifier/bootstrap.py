"""Wiring: ``build_app(settings, *, store=None, clock=None, ...)`` puts the real adapters (or a test's)
together; every override is a typed keyword.

Everything is built here: the store, the token verifier, the webhook client and delivery engine, the
handlers; the routes get them through :func:`services.notifier.api.build_router`, never ``app.state``.
The returned FastAPI app owns its lifecycle: at start it brings the schema up to date, starts the Kafka
consumer thread and the delivery loop; at shutdown it stops them. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from services.notifier.api import build_router, install_handler_errors
from services.notifier.auth import ResolverWhoami, TokenVerifier
from services.notifier.consumer import EventConsumer
from services.notifier.delivery import DeliveryEngine, NotifierMetrics, webhook_client
from services.notifier.handlers import Handlers
from services.notifier.health import Assessment, ConsumerView, HealthGauges, assess
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store, database_unavailable
from shared import __version__
from shared.errors import error_body
from shared.logs import get_logger
from shared.web import health_router, install_error_handlers

log = get_logger(__name__)

STARTING = ConsumerView(
    running=True,
    joined=False,
    ever_joined=False,
    assigned=(),
    brokers_up=None,
    lag=None,
    last_record_at=None,
    topic_missing=False,
    recording_blocked=False,
    failing=False,
    replays=0,
)

DATABASE_MESSAGES = {
    "locked": "the database is locked by another connection; retry shortly",
    "full": "the database's disk is full; nothing was changed, retry once space has been freed",
    "read_only": "the database is read-only right now; retry shortly",
    "unreachable": "the database is unreachable right now; nothing was changed, retry shortly",
}


def install_database_errors(app: FastAPI) -> None:
    """A database that cannot serve now (unreachable, restarting, locked, disk full) is a 503
    ``database_unavailable`` with one sentence and ``Retry-After``, never a 500 with a trace."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        kind = database_unavailable(exc)
        if kind is None:
            log.error(
                "unhandled_error", path=request.url.path, error=type(exc).__name__, detail=str(exc)[:300]
            )
            return JSONResponse(
                error_body("internal_error", "the service failed to handle this request; see its log"),
                status_code=500,
            )
        log.warning(
            "database_unavailable",
            path=request.url.path,
            kind=kind,
            error=type(exc).__name__,
            detail=str(getattr(exc, "orig", exc))[:300],
        )
        return JSONResponse(
            error_body("database_unavailable", DATABASE_MESSAGES[kind]),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    for kind in (OperationalError, InterfaceError, DisconnectionError, PoolTimeout):
        app.add_exception_handler(kind, _unavailable)


def _webhook_transport(settings: NotifierSettings, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    policy = settings.address_policy()
    if settings.http_transport == "asyncio":
        from services.notifier.transport import AsyncioTransport

        return AsyncioTransport(
            settings.workers, settings.request_timeout_seconds, address_allowed=policy.allows
        )
    log.warning(
        "webhook_addresses_unchecked",
        detail="the httpcore transport does not check the addresses webhook hosts resolve to; "
        "use STREAMTOKEN_NOTIFIER_HTTP_TRANSPORT=asyncio",
    )
    return httpx.AsyncHTTPTransport(limits=limits)


def build_app(
    settings: NotifierSettings,
    *,
    store: Store | None = None,
    verifier: TokenVerifier | None = None,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The notifier as an ASGI app. Overrides replace the adapters built from settings (tests pass their
    own); ``clock`` is the time the store stamps rows with and the delivery engine schedules by. Kafka and
    the data dir come from ``settings.kafka`` and ``settings.runtime``."""
    kafka = settings.kafka
    store = store or Store.from_url(
        settings.resolved_database_url(), settings.database_busy_timeout_seconds, clock
    )
    metrics = NotifierMetrics(registry or CollectorRegistry())
    gauges = HealthGauges(metrics.registry)
    resolver_key = settings.resolver_internal_key
    verifier = verifier or ResolverWhoami(
        settings.resolver_url,
        settings.whoami_cache_seconds,
        max_entries=settings.whoami_cache_entries,
        internal_key=resolver_key.get_secret_value() if resolver_key else None,
    )
    limits = httpx.Limits(max_connections=settings.workers, max_keepalive_connections=settings.workers)
    client = webhook_client(
        webhook_transport or _webhook_transport(settings, limits),
        settings.request_timeout_seconds,
        settings.workers,
    )
    engine = DeliveryEngine(store, settings, client, metrics, clock=clock)
    handlers = Handlers(store, settings, on_replay=engine.wake)
    consumer = (
        EventConsumer(kafka, settings, store, metrics, lambda _: engine.wake()) if settings.consume else None
    )
    started = False

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal started
        await asyncio.to_thread(store.create_tables)
        stop = asyncio.Event()
        delivering = asyncio.create_task(engine.run(stop)) if settings.deliver else None
        if consumer is not None:
            consumer.start()
        started = True
        refreshing = asyncio.create_task(_refresh_gauges(stop))
        log.info(
            "notifier_started",
            topic=kafka.topic,
            group=settings.consumer_group,
            database=store.engine.dialect.name,
            workers=settings.workers,
        )
        try:
            yield
        finally:
            stop.set()
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
            if consumer is not None:
                await asyncio.to_thread(consumer.stop)
            if delivering is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(delivering, timeout=settings.request_timeout_seconds + 5)
            await client.aclose()
            await verifier.aclose()
            store.dispose()
            log.info("notifier_stopped")

    def assessment(database_ok: bool) -> Assessment:
        view = consumer.view() if consumer is not None and started else None
        if view is None and settings.consume:
            view = STARTING
        result = assess(database_ok, view)
        gauges.update(result, view, database_ok)
        return result

    async def _refresh_gauges(stop: asyncio.Event) -> None:
        """The health gauges, refreshed every second (a scrape of /metrics reads them)."""
        while not stop.is_set():
            assessment(await asyncio.to_thread(store.ping))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    def ready() -> tuple[bool, dict[str, Any]]:
        result = assessment(store.ping())
        return result.ready, result.detail

    app = FastAPI(
        redirect_slashes=False,  # answer a trailing slash with a JSON 404, not an empty 307
        title="streamtoken notifier",
        version=__version__,
        description="Tells subscribed deployments to restart or reload after a streaming-token rotation.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_handler_errors(app)
    install_database_errors(app)
    app.include_router(health_router(ready, metrics.registry))
    internal_key = settings.internal_key.get_secret_value() if settings.internal_key else None
    app.include_router(build_router(handlers, verifier, internal_key))
    return app
