"""The Kafka side: a quixstreams consumer in group ``notifier`` turns rotations into recorded deliveries.

For each polled batch, every record is decoded and the deliveries it implies are written in one database
transaction; only then are the batch's offsets committed. A crash before the commit means the batch is
consumed again, which the store makes a no-op (unique event id + subscription, last notified generation).
Runs in its own thread because the Kafka client blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from services.notifier.delivery import NotifierMetrics
from services.notifier.settings import NotifierSettings
from services.notifier.store import EnvironmentDeleted, Record, Store
from shared.events import EventDecodeError, decode_event
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.logs import get_logger

log = get_logger(__name__)


class EventConsumer:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: NotifierSettings,
        store: Store,
        metrics: NotifierMetrics,
        on_recorded: Callable[[int], None],
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.on_recorded = on_recorded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.subscribed = threading.Event()
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_forever, name="notifier-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_forever(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._run()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                self.subscribed.clear()
                log.error("consumer_failed", error=type(exc).__name__, detail=str(exc)[:300], retry_in=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _run(self) -> None:
        from confluent_kafka import TopicPartition
        from quixstreams import Application

        ensure_streaming_tokens_topic(self.kafka)
        app = Application(
            broker_address=self.kafka.connection_config(),
            consumer_group=self.settings.consumer_group,
            auto_offset_reset="earliest",
            consumer_extra_config=self.kafka.consumer_group_tuning(),
        )
        with app.get_consumer(auto_commit_enable=False) as consumer:
            consumer.subscribe([self.kafka.topic])
            self.subscribed.set()
            self.last_error = None
            log.info("consumer_started", topic=self.kafka.topic, group=self.settings.consumer_group)
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=self.settings.consumer_batch, timeout=0.5)
                if not messages:
                    continue
                events: list[Record] = []
                next_offsets: dict[tuple[str, int], int] = {}
                for message in messages:
                    if message.error():
                        log.warning("consumer_message_error", error=str(message.error()))
                        continue
                    next_offsets[(message.topic(), message.partition())] = message.offset() + 1
                    event = self._decode(message)
                    if event is not None:
                        events.append(event)
                if not next_offsets:
                    continue
                created = self._record(events)
                if created is None:
                    return  # stopping before the batch was recorded: do not commit it
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                    asynchronous=False,
                )
                if created:
                    self.on_recorded(created)

    def _decode(self, message: Any) -> Record | None:
        try:
            event = decode_event(message.value())
        except EventDecodeError as exc:
            # A record this build cannot read would block the partition forever; skip it loudly.
            self.metrics.events.labels("undecodable").inc()
            log.error(
                "event_undecodable",
                partition=message.partition(),
                offset=message.offset(),
                problem=str(exc)[:300],
            )
            return None
        if event is None:
            self.metrics.events.labels("tombstone").inc()
            key = (message.key() or b"").decode("utf-8", "replace")
            if not key:
                return None
            kind, millis = message.timestamp()
            deleted_at = millis / 1000 if kind and millis and millis > 0 else None
            log.info("environment_deleted", environment_id=key[:200])
            return EnvironmentDeleted(key, deleted_at)
        self.metrics.events.labels(event.change.type.value).inc()
        return event

    def _record(self, events: list[Record]) -> int | None:
        """Write the batch's deliveries, retrying while the database is unreachable; None if stopping."""
        delay = 0.2
        while True:
            try:
                created = self.store.record_events(events, on_progress=self.on_recorded)
            except Exception as exc:
                log.error("record_failed", error=type(exc).__name__, detail=str(exc)[:300], retry_in=delay)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)
                continue
            self.metrics.recorded.inc(created)
            for event in events:
                if isinstance(event, EnvironmentDeleted):
                    continue
                log.info(
                    "event_recorded",
                    event_id=event.event_id,
                    environment_id=event.environment_id,
                    generation=event.generation,
                    change=event.change.type.value,
                    rotation_id=event.change.rotation_id,
                )
            return created
