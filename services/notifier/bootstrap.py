"""Wiring: ``build_app(settings, **overrides)`` puts the real adapters (or a test's) together.

The returned FastAPI app owns its lifecycle: at start it creates the tables, starts the Kafka consumer
thread and the delivery loop; at shutdown it stops them. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.notifier.api import build_router, replay_limits
from services.notifier.auth import ResolverWhoami, TokenVerifier
from services.notifier.consumer import EventConsumer
from services.notifier.delivery import DeliveryEngine, NotifierMetrics, webhook_client
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store
from shared.kafka import KafkaSettings
from shared.logs import get_logger
from shared.settings import RuntimeSettings
from shared.web import health_router, install_error_handlers

log = get_logger(__name__)


def _webhook_transport(settings: NotifierSettings, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    policy = settings.address_policy()
    if settings.http_transport == "asyncio":
        from services.notifier.transport import AsyncioTransport

        return AsyncioTransport(
            settings.workers, settings.request_timeout_seconds, address_allowed=policy.allows
        )
    if settings.http_transport == "aiohttp":
        from services.notifier.transport import AiohttpTransport

        return AiohttpTransport(
            settings.workers, settings.request_timeout_seconds, address_allowed=policy.allows
        )
    log.warning(
        "webhook_addresses_unchecked",
        detail="the httpcore transport does not check the addresses webhook hosts resolve to; "
        "use STREAMTOKEN_NOTIFIER_HTTP_TRANSPORT=asyncio or aiohttp",
    )
    return httpx.AsyncHTTPTransport(limits=limits)


def build_app(
    settings: NotifierSettings,
    *,
    kafka_settings: KafkaSettings | None = None,
    runtime: RuntimeSettings | None = None,
    store: Store | None = None,
    verifier: TokenVerifier | None = None,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The notifier as an ASGI app. Overrides replace the adapters built from settings (tests pass fakes)."""
    kafka = kafka_settings or KafkaSettings()
    store = store or Store.from_url(settings.resolved_database_url(runtime))
    metrics = NotifierMetrics(registry or CollectorRegistry())
    verifier = verifier or ResolverWhoami(
        settings.resolver_url, settings.whoami_cache_seconds, max_entries=settings.whoami_cache_entries
    )
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(store.create_tables)
        limits = httpx.Limits(max_connections=settings.workers, max_keepalive_connections=settings.workers)
        transport = webhook_transport or _webhook_transport(settings, limits)
        client = webhook_client(transport, settings.request_timeout_seconds, settings.workers)
        engine = DeliveryEngine(store, settings, client, metrics)
        app.state.engine = engine
        stop = asyncio.Event()
        delivering = asyncio.create_task(engine.run(stop)) if settings.deliver else None
        consumer = None
        if settings.consume:
            consumer = EventConsumer(kafka, settings, store, metrics, lambda _: engine.wake())
            consumer.start()
        state["consumer"] = consumer
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
            if consumer is not None:
                await asyncio.to_thread(consumer.stop)
            if delivering is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(delivering, timeout=settings.request_timeout_seconds + 5)
            await client.aclose()
            await verifier.aclose()
            store.dispose()
            log.info("notifier_stopped")

    def ready() -> tuple[bool, dict[str, Any]]:
        database = store.ping()
        consumer: EventConsumer | None = state.get("consumer")
        consuming = consumer is None or (consumer.alive and consumer.subscribed.is_set())
        detail: dict[str, Any] = {
            "status": "ready" if database and consuming else "not_ready",
            "database": database,
            "consumer": "disabled" if consumer is None else ("subscribed" if consuming else "starting"),
        }
        if consumer is not None and consumer.last_error:
            detail["consumer_error"] = consumer.last_error
        return database and consuming, detail

    app = FastAPI(
        redirect_slashes=False,  # answer a trailing slash with a JSON 404, not an empty 307
        title="streamtoken notifier",
        version="0.1.0",
        description="Tells subscribed deployments to restart or reload after a streaming-token rotation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.verifier = verifier
    app.state.metrics = metrics
    app.state.engine = None
    app.state.replay_limits = replay_limits(settings)
    install_error_handlers(app)
    app.include_router(health_router(ready, metrics.registry))
    app.include_router(build_router())
    return app
