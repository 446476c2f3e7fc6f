"""Sending webhooks: Standard Webhooks signing, and the loop that claims, sends and records deliveries.

One dispatcher claims due deliveries from the store in batches (a lease), a pool of async workers sends them
over one pooled ``httpx.AsyncClient``, and one writer records the results in batches. Nothing is
acknowledged to anyone before it is in the database, so a crash at any point only means some deliveries are
sent again after their lease expires — with the same ``webhook-id``, so receivers can deduplicate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.cookiejar
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from services.notifier.domain import (
    Action,
    DeliveryStatus,
    InvalidWebhookUrl,
    Outcome,
    after_failure,
    backoff_seconds,
    classify_status,
    lease_covers_a_request,
    parse_retry_after,
    validate_webhook_url,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store import AttemptResult, Claimed, Store
from services.notifier.transport import MAX_RESPONSE_BODY, AddressNotAllowed
from shared.logs import get_logger

log = get_logger(__name__)

USER_AGENT = "streamtoken-notifier/0.1"
URL_NOT_ALLOWED = (
    "its webhook url is no longer allowed by STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS; change the url "
    "(PATCH with the management key) and re-enable it"
)


def public_error(exc: Exception) -> str:
    """What failed, for ``last_error`` (clients read it): never an address, a port or an OS message, so
    webhook URLs cannot be used to scan what the notifier reaches. The log line keeps the detail."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, AddressNotAllowed):
        return "webhook host resolves to an address that is not allowed"
    if isinstance(exc, httpx.ConnectError | httpx.NetworkError):
        return "connection failed"
    return "request failed"


async def _drain_bounded(response: httpx.Response) -> None:
    """Read at most ``MAX_RESPONSE_BODY`` bytes of the answer, then let the connection go."""
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size >= MAX_RESPONSE_BODY:
                break
    except httpx.StreamConsumed:
        pass  # our own pools hand over an answer already read (and bounded)
    finally:
        await response.aclose()


_STATIC_HEADERS = [(b"content-type", b"application/json"), (b"user-agent", USER_AGENT.encode())]


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


class Signer:
    """Standard Webhooks signing: ``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}``; decoded keys are kept so a fan-out decodes each secret once."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._keys: dict[str, bytes] = {}
        self._max_keys = max_keys

    def signature(self, secret: str, msg_id: str, timestamp: int, body: bytes) -> bytes:
        key = self._keys.get(secret)
        if key is None:
            if len(self._keys) >= self._max_keys:
                self._keys.clear()
            key = self._keys[secret] = _key(secret)
        digest = hmac.new(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256).digest()
        return b"v1," + base64.b64encode(digest)


class _NoCookies(http.cookiejar.CookieJar):
    """A webhook client never keeps cookies: one receiver's cookie must not reach another subscription."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def webhook_client(transport: httpx.AsyncBaseTransport, timeout: float, workers: int) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` that sends webhooks: no redirects (a redirect could lead to a host the
    allow-list refuses), no cookie jar, the given connection pool underneath."""
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        transport=transport,
        cookies=_NoCookies(),
    )


class NotifierMetrics:
    """Prometheus metrics of one notifier instance (``streamtoken_notifier_*``) on its own registry, with
    the process, platform and garbage-collector collectors (``process_resident_memory_bytes``, ...)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.deliveries = Counter(
            "streamtoken_notifier_deliveries_total",
            "Deliveries that reached a final or retry outcome, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "streamtoken_notifier_attempts_total", "Webhook requests sent", registry=registry
        )
        self.request_seconds = Histogram(
            "streamtoken_notifier_request_seconds",
            "Duration of one webhook request",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.latency = Histogram(
            "streamtoken_notifier_delivery_latency_seconds",
            "From recording a delivery to its successful delivery",
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
        )
        self.queue_depth = Gauge(
            "streamtoken_notifier_queue_depth", "Deliveries pending (due or waiting)", registry=registry
        )
        self.recorded = Counter(
            "streamtoken_notifier_recorded_deliveries_total",
            "Deliveries recorded from Kafka events",
            registry=registry,
        )
        self.events = Counter(
            "streamtoken_notifier_events_total",
            "Kafka records consumed, by kind",
            ["kind"],
            registry=registry,
        )


class DeliveryEngine:
    """Claims due deliveries, sends them with ``workers`` concurrent requests, records the results."""

    def __init__(
        self,
        store: Store,
        settings: NotifierSettings,
        client: httpx.AsyncClient,
        metrics: NotifierMetrics,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.jitter = jitter
        # Twice the workers: the next claim runs while the workers still have a full round ahead of them.
        # Items wait here with their lease running, so the queue stays proportional to what the workers can
        # send within a lease (the workers also skip any item whose lease no longer covers a request).
        size = settings.workers * 2
        self._queue: asyncio.Queue[Claimed] = asyncio.Queue(maxsize=size)
        self._low_water = size // 2  # the workers wake the dispatcher when the queue is down to this
        self._more_due = False  # the last claim was full: more deliveries may be due right now
        self._results: list[AttemptResult] = []
        self._unwritten: set[str] = set()  # ids of results not in the database yet
        self._results_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signer = Signer()
        self._timeout = client.timeout.as_dict()
        self._delivered = metrics.deliveries.labels("delivered")
        self.lease_expired = 0  # claimed items dropped because their lease no longer covered a request

    def wake(self) -> None:
        """Claim now instead of at the next poll (thread-safe: the consumer calls it after recording)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        workers = [
            asyncio.create_task(self._worker(), name=f"webhook-{i}") for i in range(self.settings.workers)
        ]
        writer = asyncio.create_task(self._writer(stop), name="webhook-results")
        try:
            await self._dispatch(stop)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            stop.set()
            await writer

    async def _dispatch(self, stop: asyncio.Event) -> None:
        last_depth = 0.0
        failures = 0
        while not stop.is_set():
            now = self.clock()
            if now - last_depth > 1.0:
                last_depth = now
                await self._update_depth()
            want = min(self._queue.maxsize - self._queue.qsize(), self.settings.claim_batch)
            claimed: list[Claimed] = []
            if want > 0 and self._queue.qsize() <= self._low_water:
                try:
                    claimed = await asyncio.to_thread(
                        self.store.claim_due,
                        now,
                        want,
                        self.settings.lease_seconds,
                        self.settings.restart_concurrency,
                        self.settings.poll_interval_seconds,
                    )
                    failures = 0
                except Exception as exc:
                    failures += 1
                    log.error("claim_failed", error=type(exc).__name__, detail=str(exc)[:300])
                    # the database refuses: back off (up to 2 s) instead of asking every poll interval
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=min(0.1 * 2**failures, 2.0))
            for item in claimed:
                self._queue.put_nowait(item)  # only this task puts, and it claimed at most the room left
            self._more_due = bool(claimed) and len(claimed) >= want
            if self._more_due and self._queue.qsize() <= self._low_water:
                continue  # more may be due right now
            self._wake.clear()
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait(
                {stopping, woken},
                timeout=self.settings.poll_interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping.cancel()
            woken.cancel()

    async def _update_depth(self) -> None:
        try:
            self.metrics.queue_depth.set(await asyncio.to_thread(self.store.queue_depth))
        except Exception as exc:
            log.warning("queue_depth_failed", error=type(exc).__name__)

    async def _worker(self) -> None:
        timeout = self.settings.request_timeout_seconds
        while True:
            item = await self._queue.get()
            if self._more_due and self._queue.qsize() <= self._low_water:
                self._wake.set()  # claim the next batch while this one is being sent
            if not lease_covers_a_request(self.clock(), item.lease_until, timeout):
                self.lease_expired += 1  # not sending it is safe: it is due again when the lease ends
                continue
            if item.id in self._unwritten:
                continue  # sent already, its result waits for the database: it is written, not resent
            try:
                result = await self.attempt(item)
            except Exception as exc:  # never lose the worker; the lease makes the delivery due again
                log.error("attempt_crashed", delivery_id=item.id, error=type(exc).__name__)
                continue
            self._unwritten.add(result.id)
            self._results.append(result)
            self._results_ready.set()

    async def _writer(self, stop: asyncio.Event) -> None:
        """Write results in batches. While the database refuses (a restart, a lock), a batch is kept and
        written again with back-off: its deliveries were sent, and writing them late is better than
        letting their leases expire and sending them again."""
        delay = 0.1
        while True:
            if not self._results:
                if stop.is_set():
                    return
                self._results_ready.clear()
                try:
                    await asyncio.wait_for(self._results_ready.wait(), timeout=0.2)
                except TimeoutError:
                    continue
            await asyncio.sleep(0.02)  # let a batch gather
            batch, self._results = self._results, []
            try:
                await asyncio.to_thread(self.store.complete, batch, self.clock())
            except Exception as exc:
                if stop.is_set():
                    # Not written: their leases expire and they are sent again (same webhook-id).
                    log.error(
                        "results_not_recorded",
                        count=len(batch),
                        error=type(exc).__name__,
                        detail=str(exc)[:300],
                    )
                    self._unwritten.difference_update(r.id for r in batch)
                    continue
                log.warning(
                    "results_retry",
                    count=len(batch),
                    error=type(exc).__name__,
                    detail=str(exc)[:300],
                    retry_in=delay,
                )
                self._results = batch + self._results
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self._unwritten.difference_update(r.id for r in batch)
            if any(r.status is not DeliveryStatus.PENDING for r in batch):
                self._wake.set()

    def request(self, item: Claimed, timestamp: int) -> httpx.Request:
        """The signed webhook request of one delivery."""
        body = item.body.encode()
        headers = [
            *_STATIC_HEADERS,
            (b"webhook-id", item.id.encode()),
            (b"webhook-timestamp", b"%d" % timestamp),
            (b"webhook-signature", self._signer.signature(item.secret, item.id, timestamp, body)),
        ]
        return httpx.Request(
            "POST", item.url, headers=headers, content=body, extensions={"timeout": self._timeout}
        )

    async def attempt(self, item: Claimed) -> AttemptResult:
        """Send one delivery once and decide its next state (does not write it)."""
        attempts = item.attempts + 1
        context = {
            "delivery_id": item.id,
            "subscription_id": item.subscription_id,
            "environment_id": item.environment_id,
            "generation": item.generation,
            "attempt": attempts,
        }
        try:
            # The URL was checked when stored; the allow-list may have been narrowed since.
            validate_webhook_url(item.url, self.settings.allowed_webhook_hosts)
        except InvalidWebhookUrl as exc:
            self.metrics.deliveries.labels("refused").inc()
            log.warning("webhook_url_refused", reason=str(exc), **context)
            return AttemptResult(
                item.id,
                item.subscription_id,
                DeliveryStatus.DISABLED,
                item.attempts,
                self.clock(),
                None,
                "webhook url not allowed",
                disable_subscription=True,
                disable_reason=URL_NOT_ALLOWED,
            )
        started = time.perf_counter()
        status_code: int | None = None
        retry_after: float | None = None
        error: str | None = None
        detail: str | None = None
        try:
            response = await self.client.send(self.request(item, int(self.clock())), stream=True)
            status_code = response.status_code
            outcome = classify_status(status_code)
            if outcome is Outcome.RETRY:
                retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
                error = f"HTTP {status_code}"
            await _drain_bounded(response)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            if status_code is None:
                outcome = Outcome.RETRY
                error = public_error(exc)
                detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.metrics.attempts.inc()
        self.metrics.request_seconds.observe(time.perf_counter() - started)
        now = self.clock()
        if outcome is Outcome.DELIVERED:
            self._delivered.inc()
            self.metrics.latency.observe(max(now - item.created_at, 0.0))
            waiting = (
                now + self.settings.restart_ack_timeout_seconds if item.action is Action.RESTART else 0.0
            )
            return AttemptResult(
                item.id,
                item.subscription_id,
                DeliveryStatus.DELIVERED,
                attempts,
                now,
                status_code,
                None,
                waiting,
            )
        if detail is not None:
            context["detail"] = detail
        if outcome is Outcome.GONE:
            self.metrics.deliveries.labels("gone").inc()
            log.warning("subscription_gone", status=status_code, **context)
            return AttemptResult(
                item.id,
                item.subscription_id,
                DeliveryStatus.DISABLED,
                attempts,
                now,
                status_code,
                "HTTP 410 Gone: subscription disabled",
                disable_subscription=True,
            )
        status = after_failure(attempts, self.settings.max_attempts)
        if status is DeliveryStatus.DEAD:
            self.metrics.deliveries.labels("dead").inc()
            log.warning("delivery_dead", status=status_code, error=error, **context)
            return AttemptResult(item.id, item.subscription_id, status, attempts, now, status_code, error)
        delay = backoff_seconds(
            attempts,
            self.settings.retry_base_seconds,
            self.settings.retry_max_seconds,
            self.jitter,
            retry_after,
        )
        self.metrics.deliveries.labels("retry").inc()
        log.info("delivery_retry", status=status_code, error=error, retry_in=round(delay, 3), **context)
        return AttemptResult(item.id, item.subscription_id, status, attempts, now + delay, status_code, error)
