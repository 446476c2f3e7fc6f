"""The outbox relay: publishes committed outbox rows to Kafka, in order per environment, right after commit.

A command wakes the relay (a ``threading.Event``) as soon as its transaction commits, so the happy path has
no polling delay; a slow safety-net scan picks up rows committed by other replicas. A row is marked published
only after the broker acknowledged it; when a record of an environment fails, the later records of that
environment in the batch stay pending too, so the environment's newest state is always the last one on the
topic. While Kafka is unreachable the relay retries with capped exponential back-off and jitter. When it
(re)connects and finds the topic missing or empty (a broker that lost its data), it queues a republish of
every environment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog

from services.issuer.metrics import IssuerMetrics
from services.issuer.ports import Delivery, OutboxMessage, OutboxStore, Publisher, TopicAdmin
from shared.backoff import equal_jitter, exponential
from shared.logs import get_logger

log = get_logger(__name__)

PublishObserver = Callable[[Sequence[OutboxMessage], Sequence[Delivery]], None]


class PublishFailed(RuntimeError):
    pass


def acknowledged_prefix(messages: Sequence[OutboxMessage], deliveries: Sequence[Delivery]) -> list[int]:
    """Ids safe to mark published: every acknowledged message not preceded by a failure of its environment."""
    errors = {d.message_id: d.error for d in deliveries}
    failed_envs: set[str] = set()
    ok: list[int] = []
    for message in messages:
        if message.environment_id in failed_envs:
            continue
        if errors.get(message.id, "no delivery report") is None:
            ok.append(message.id)
        else:
            failed_envs.add(message.environment_id)
    return ok


def backoff_delay(failures: int, cap_s: float, base_s: float = 0.1) -> float:
    """Capped exponential back-off with full jitter in its upper half."""
    return equal_jitter(exponential(max(failures, 1), base_s, cap_s))


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        publisher: Publisher,
        *,
        metrics: IssuerMetrics,
        topic_admin: TopicAdmin | None = None,
        republish: Callable[[], object] | None = None,
        batch_size: int = 500,
        backoff_max_s: float = 5.0,
        poll_interval_s: float = 1.0,
        observer: PublishObserver | None = None,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval_s: float = 3600.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._topic_admin = topic_admin
        self._republish = republish
        self._batch_size = batch_size
        self._backoff_max_s = backoff_max_s
        self._poll_interval_s = poll_interval_s
        self.observer = observer
        self._housekeeping = housekeeping
        self._housekeeping_interval_s = housekeeping_interval_s
        self._next_housekeeping = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._topic_checked = topic_admin is None
        self.failures = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="issuer-outbox-relay", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._publisher.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        return self.failures == 0

    def _run(self) -> None:
        structlog.contextvars.bind_contextvars(service="issuer", component="relay")
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.check_topic()
                self.drain()
            except Exception as exc:
                self.failures += 1
                self.last_error = type(exc).__name__
                self._metrics.publish_failures.inc()
                self._publisher.reset()
                self._topic_checked = self._topic_admin is None
                self._update_depth()
                delay = backoff_delay(self.failures, self._backoff_max_s)
                log.warning(
                    "outbox_relay_retry",
                    attempt=self.failures,
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    retry_in_s=round(delay, 3),
                )
                self._stopping.wait(delay)
                continue
            if self.failures:
                log.info("outbox_relay_recovered", after_attempts=self.failures)
            self.failures = 0
            self.last_error = None
            self._housekeep()
            self._wake.wait(self._poll_interval_s)

    def _housekeep(self) -> None:
        if self._housekeeping is None or time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self._housekeeping_interval_s
        try:
            self._housekeeping()
        except Exception as exc:  # housekeeping must never stop publishing
            log.warning("outbox_housekeeping_failed", error=type(exc).__name__)

    # -- one pass ----------------------------------------------------------------------------------------

    def check_topic(self) -> None:
        """Make sure the topic exists; when it was missing or is empty, queue a republish of every state."""
        if self._topic_checked or self._topic_admin is None:
            return
        created = self._topic_admin.ensure_topic()
        empty = created or self._topic_admin.is_empty()
        if empty and self._republish is not None:
            log.info("topic_empty_republishing", created=created)
            self._republish()
        self._topic_checked = True

    def drain(self) -> int:
        """Publish pending rows until none is left; the number published. Raises on a failed delivery."""
        total = 0
        while not self._stopping.is_set():
            with self._store.claim(self._batch_size) as claim:
                messages = claim.messages
                if not messages:
                    break
                deliveries = self._publisher.publish(messages)
                ok = acknowledged_prefix(messages, deliveries)
                claim.mark_published(ok, datetime.now(UTC))
            self._record(messages, deliveries, ok)
            total += len(ok)
            if len(ok) < len(messages):
                failed = next(d for d in deliveries if d.error is not None)
                raise PublishFailed(
                    f"{len(messages) - len(ok)} of {len(messages)} records not acknowledged: {failed.error}"
                )
        self._update_depth()
        return total

    def _update_depth(self) -> None:
        try:
            self._metrics.outbox_depth.set(self._store.pending_count())
        except Exception as exc:  # the database may be what is failing
            log.debug("outbox_depth_unavailable", error=type(exc).__name__)

    def _record(
        self, messages: Sequence[OutboxMessage], deliveries: Sequence[Delivery], ok: list[int]
    ) -> None:
        acked = {d.message_id: d for d in deliveries}
        published = set(ok)
        for message in messages:
            if message.id in published:
                latency = (acked[message.id].acknowledged_at - message.created_at).total_seconds()
                self._metrics.publish_latency.observe(max(latency, 0.0))
                log.info(
                    "outbox_published",
                    environment_id=message.environment_id,
                    generation=message.generation,
                    outbox_id=message.id,
                    tombstone=message.payload is None,
                )
        self._metrics.published.inc(len(published))
        if self.observer is not None:
            self.observer(messages, deliveries)
