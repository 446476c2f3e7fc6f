"""``build_app(settings, **overrides)``: the resolver wired with real adapters, or with a test's fakes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.resolver.admin import KafkaTopicAdmin, TopicAdmin
from services.resolver.api import Resolver, ResolverAPI, install_routes, ready_detail
from services.resolver.credentials import PublicBroker
from services.resolver.metrics import ResolverMetrics
from services.resolver.replica import Status, TableReplica
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from services.resolver.usage import KafkaUsagePublisher, UsageFlusher, UsagePublisher, UsageTracker
from shared import __version__
from shared.logs import get_logger
from shared.web import health_router, install_error_handlers

log = get_logger(__name__)


def build_app(
    settings: ResolverSettings | None = None,
    *,
    table: TokenTable | None = None,
    admin: TopicAdmin | None = None,
    metrics: ResolverMetrics | None = None,
    replica: TableReplica | None = None,
    start_replica: bool = True,
    status: Callable[[], Status] | None = None,
    clock: Callable[[], float] = time.time,
    usage_publisher: UsagePublisher | None = None,
) -> FastAPI:
    """The resolver's ASGI app. With ``start_replica=False`` nothing talks to Kafka for the table (tests
    fill ``table`` themselves and pass ``status``)."""
    settings = settings or ResolverSettings()
    broker = PublicBroker.from_settings(settings)  # reads the CA file once; a bad one stops the start here
    if not broker.enforced:
        log.warning(
            "broker_enforcement_off",
            security_protocol=broker.security_protocol,
            detail="clients get no per-token broker login: the broker checks no token, user or ACL",
        )
    elif broker.security_protocol == "SASL_SSL" and broker.ca_pem_base64 is None:
        log.warning(
            "public_ca_missing",
            detail="clients get no ssl.ca.cert: set STREAMTOKEN_RESOLVER_PUBLIC_CA_LOCATION unless the "
            "broker's certificate is publicly trusted (Telegraf's outputs.quix requires it)",
        )
    table = table if table is not None else TokenTable()
    metrics = metrics or ResolverMetrics()

    def swap_in(rebuilt: TokenTable) -> None:
        # One attribute assignment on the event loop: a lookup reads the old table or the new one.
        resolver.table = rebuilt

    if replica is None and start_replica:
        replica = TableReplica(
            table,
            settings.kafka,
            metrics,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            degraded_after_seconds=settings.degraded_after_seconds,
            probe_interval_seconds=settings.probe_interval_seconds,
            rebuild_empty_grace_seconds=settings.rebuild_empty_grace_seconds,
            on_swap=swap_in,
        )
    elif replica is not None and replica.on_swap is None:
        replica.on_swap = swap_in

    def replica_status() -> Status:
        return replica.status if replica is not None else Status.READY

    current_status: Callable[[], Status] = status or replica_status

    def snapshot() -> dict[str, Any]:
        if replica is not None:
            return replica.snapshot()
        return {"status": str(current_status()), "environments": len(resolver.table)}

    usage: UsageTracker | None = None
    flusher: UsageFlusher | None = None
    if settings.usage_enabled:
        usage = UsageTracker(settings.usage_interval_seconds, settings.usage_max_clients)
        flusher = UsageFlusher(
            usage,
            usage_publisher or KafkaUsagePublisher(settings.kafka, settings.admin_timeout_seconds),
            tick=settings.usage_tick_seconds,
            on_published=metrics.usage_records.inc,
            on_failed=metrics.usage_failures.inc,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if replica is not None:
            await replica.start()
        if flusher is not None:
            flusher.start()
        try:
            yield
        finally:
            if flusher is not None:
                await flusher.stop()
            if replica is not None:
                await replica.stop()

    app = ResolverAPI(
        redirect_slashes=False,  # a 307 with an empty body breaks clients that need JSON and never follow
        title="streamtoken resolver",
        summary="Streaming token → environment lookups and the Quix Portal API subset",
        version=__version__,
        lifespan=lifespan,
        # We export Prometheus metrics ourselves; FastAPI's OpenTelemetry hooks cost time on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    resolver = Resolver(
        table,
        current_status,
        admin
        or KafkaTopicAdmin(settings.kafka, settings.metadata_cache_seconds, settings.admin_timeout_seconds),
        settings,
        broker,
        metrics,
        clock,
        usage,
    )
    app.state.resolver = app.resolver = resolver
    app.state.usage_flusher = flusher
    if usage is not None:
        metrics.bind_usage(lambda: float(len(usage.pending)), lambda: float(usage.dropped))
    metrics.bind_table(lambda: float(len(resolver.table)), lambda: float(resolver.table.fingerprint_count))
    app.state.replica = replica
    app.include_router(health_router(ready_detail(snapshot), metrics.registry))
    install_routes(app)
    return app
