"""The issuer's fold of the usage topic (``shared.usage``) into its database, on a thread of its own.

A consumer in its own group (``STREAMTOKEN_ISSUER_USAGE_GROUP``, as the issuer's principal) reads the
usage topic the resolvers write, folds each polled batch in one transaction (``SqlStore.fold_usage``) and
commits its offsets after that transaction: a crash folds a batch again (a client's ``uses`` may count
twice, its last use stays right). While the database or the broker is down the batch is retried with a
back-off; nothing is skipped except records this build cannot decode (logged, then passed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.kafka import KafkaSettings, ensure_usage_topic
from shared.logs import get_logger
from shared.usage import TokenUsage, UsageDecodeError, decode_usage

log = get_logger(__name__)


class UsageSink(Protocol):
    def fold_usage(self, events: list[TokenUsage], now: datetime) -> int: ...


class UsageFolder:
    """Runs until :meth:`stop`; ``folded`` counts records folded, ``last_error`` says why it waits."""

    def __init__(
        self,
        settings: KafkaSettings,
        sink: UsageSink,
        *,
        group: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 500,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._group = group
        self._clock = clock
        self._batch = batch
        self._backoff_max_s = backoff_max_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.folded = 0
        self.skipped = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-folder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wait(self, failures: int) -> None:
        self._stopping.wait(min(0.2 * 2**failures, self._backoff_max_s))

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        ensure_usage_topic(self._settings, timeout=5.0)
        consumer = Consumer(
            {
                **self._settings.librdkafka(),
                **self._settings.consumer_group_tuning(),
                "group.id": self._group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        consumer.subscribe([self._settings.usage_topic])
        return consumer

    def _run(self) -> None:
        consumer: Any = None
        failures = 0
        pending: list[TokenUsage] = []
        while not self._stopping.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                if not pending:
                    messages = consumer.consume(num_messages=self._batch, timeout=0.5)
                    pending = self._decode(messages)
                    if not messages:
                        continue
                if pending:
                    self.folded += self._sink.fold_usage(pending, self._clock())
                pending = []
                consumer.commit(asynchronous=False)
                if failures:
                    log.info("usage_fold_recovered", failures=failures)
                failures = 0
                self.last_error = None
            except Exception as exc:
                failures += 1
                self.last_error = type(exc).__name__
                if failures == 1 or failures % 30 == 0:
                    log.warning("usage_fold_retry", error=type(exc).__name__, failures=failures)
                self._wait(failures)
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:
                log.debug("usage_consumer_close_failed", error=type(exc).__name__)

    def _decode(self, messages: list[Any]) -> list[TokenUsage]:
        events = []
        for message in messages:
            if message.error() is not None:
                error = message.error()
                if error.fatal():
                    raise RuntimeError(str(error.name()))
                continue
            try:
                event = decode_usage(message.value())
            except UsageDecodeError as exc:
                self.skipped += 1
                log.warning("usage_record_skipped", reason=str(exc)[:200], offset=message.offset())
                continue
            if event is not None:
                events.append(event)
        return events
