"""The Kafka side: a quixstreams consumer in group ``notifier`` turns rotations into recorded deliveries.

For each polled batch, every record is decoded and the deliveries it implies are written in one database
transaction; only then are the batch's offsets committed. A crash before the commit means the batch is
consumed again, which the store makes a no-op (unique event id + subscription, last notified generation).
Runs in its own thread because the Kafka client blocks.

A control topic that was **recreated** (its topic id changed: checked at start, before each batch is
recorded and every ``topic_check_interval_seconds``) or **truncated** (a committed position lies beyond
a partition's end, checked when partitions are assigned; librdkafka resets a live position beyond the
end to the start itself, ``auto.offset.reset=earliest``) is replayed from the beginning: the consumer
starts again and takes its partitions at their first offset. Replays send nothing twice: the store
records a (subscription, generation) once. What the thread sees (group membership, assignment, broker
connections from librdkafka's statistics and error callbacks, lag, the last record) is
:meth:`EventConsumer.view`, for ``/health/ready``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from services.notifier.delivery import NotifierMetrics
from services.notifier.health import ConsumerView
from services.notifier.settings import NotifierSettings
from services.notifier.store import EnvironmentDeleted, Record, Store
from shared.backoff import exponential
from shared.events import EventDecodeError, decode_event
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.logs import get_logger

log = get_logger(__name__)

STATS_INTERVAL_MS = 1000
DESCRIBE_TIMEOUT = 5.0


class TopicMissing(Exception):
    """The control topic does not exist (deleted, or a broker that lost its data)."""


def beyond_end(committed: int, high: int) -> bool:
    """A committed position past the partition's end: the topic was truncated or recreated."""
    return committed >= 0 and high >= 0 and committed > high


def parse_stats(stats: dict[str, Any], topic: str) -> tuple[int, bool | None, int | None]:
    """(brokers up, joined or None if no group state, lag or None) from librdkafka's statistics."""
    brokers = stats.get("brokers", {}).values()
    up = sum(1 for b in brokers if b.get("nodeid", -1) >= 0 and b.get("state") == "UP")
    cgrp = stats.get("cgrp")
    joined = None
    if isinstance(cgrp, dict) and "state" in cgrp:
        joined = cgrp.get("state") == "up" and cgrp.get("join_state") == "steady"
    lag: int | None = None
    for partition in stats.get("topics", {}).get(topic, {}).get("partitions", {}).values():
        if partition.get("partition", -1) < 0 or not partition.get("desired", True):
            continue
        value = int(partition.get("consumer_lag", -1))
        high = int(partition.get("hi_offset", -1))
        if value < 0 and high >= 0:  # nothing committed yet: what lies after the position, or the start
            start = max(int(partition.get(k, -1)) for k in ("app_offset", "committed_offset", "lo_offset"))
            value = max(high - max(start, 0), 0)
        if value >= 0:
            lag = (lag or 0) + value
    return up, joined, lag


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
        # What the thread saw (plain attributes: written by the consumer thread, read by health).
        self.joined = False
        self.ever_joined = False
        self.assigned: tuple[int, ...] = ()
        self.brokers_up: int | None = None
        self.lag: int | None = None
        self.last_record_at: float | None = None
        self.topic_missing = False
        self.recording_blocked = False
        self.failing = False
        self.replays = 0
        self.topic_id: str | None = None  # of the control topic, as first seen by this process
        self._replay_from_beginning = False
        self._to_check: list[int] = []
        self._all_brokers_down = False  # assigned partitions whose committed offsets are still to check

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

    def view(self) -> ConsumerView:
        return ConsumerView(
            running=self.alive and not self._stop.is_set(),
            joined=self.joined,
            ever_joined=self.ever_joined,
            assigned=self.assigned,
            brokers_up=self.brokers_up,
            lag=self.lag,
            last_record_at=self.last_record_at,
            topic_missing=self.topic_missing,
            recording_blocked=self.recording_blocked,
            failing=self.failing,
            replays=self.replays,
        )

    def _run_forever(self) -> None:
        paused = failures = 0  # consecutive pauses without a broker, consecutive failed runs
        while not self._stop.is_set():
            try:
                self._run()
                if self._all_brokers_down:  # wait a little before asking the broker again
                    paused += 1
                    self._stop.wait(exponential(paused, 0.5, 5.0))
                else:
                    paused = 0
                failures = 0
            except Exception as exc:
                failures += 1
                delay = exponential(failures, 0.5, 10.0)
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                self.subscribed.clear()
                self.joined = False
                self.assigned = ()
                self.failing = True
                if _is_kafka_error(exc) and not isinstance(exc, TopicMissing):
                    self.brokers_up = 0 if _broker_unreachable(exc) else self.brokers_up
                log.error("consumer_failed", error=type(exc).__name__, detail=str(exc)[:300], retry_in=delay)
                self._stop.wait(delay)

    # --- librdkafka callbacks (run inside poll, in the consumer thread) -----------------------------

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            if self.brokers_up != 0:
                log.warning("kafka_unreachable", error=error.name(), detail=str(error.str())[:300])
            self.brokers_up = 0
            self._all_brokers_down = True
        elif code not in (KafkaError._TRANSPORT, KafkaError._RESOLVE):
            log.warning("kafka_error", error=error.name(), detail=str(error.str())[:300])

    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        up, joined, lag = parse_stats(stats, self.kafka.topic)
        self.brokers_up = up
        if joined is not None:
            self.joined = joined
            self.ever_joined = self.ever_joined or joined
        self.lag = lag

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """No broker request in here (librdkafka crashed doing that across a broker restart): after a
        recreated topic the offsets are set to the beginning; otherwise the loop checks the committed
        positions against the partitions' ends (:meth:`_replay_beyond_end`) once assigned."""
        from confluent_kafka import OFFSET_BEGINNING

        if self._replay_from_beginning:
            for tp in partitions:
                tp.offset = OFFSET_BEGINNING
            self._replay_from_beginning = False
            self._to_check = []
            log.info("control_topic_replay", partitions=[tp.partition for tp in partitions])
        else:
            self._to_check = [tp.partition for tp in partitions]
        consumer.assign(partitions)
        self.assigned = tuple(sorted(tp.partition for tp in partitions))
        self.joined = self.ever_joined = True
        log.info("partitions_assigned", partitions=list(self.assigned))

    def _replay_beyond_end(self, consumer: Any) -> None:
        """Seek to the beginning the newly assigned partitions whose committed offset lies beyond their
        end (the topic was truncated or recreated under us)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        partitions, self._to_check = self._to_check, []
        if not partitions:
            return
        reset = self._beyond_end(consumer, [TopicPartition(self.kafka.topic, p) for p in partitions])
        if not reset:
            return
        self.replays += 1
        log.warning("control_topic_truncated", partitions=sorted(reset), detail="replaying them")
        for partition in sorted(reset):
            try:
                consumer.seek(TopicPartition(self.kafka.topic, partition, OFFSET_BEGINNING))
            except Exception as exc:
                log.warning(
                    "seek_failed", partition=partition, error=type(exc).__name__, detail=str(exc)[:200]
                )

    def _beyond_end(self, consumer: Any, partitions: list[Any]) -> set[int]:
        """Partitions whose committed offset lies beyond their end."""
        reset: set[int] = set()
        try:
            for tp in consumer.committed(partitions, timeout=DESCRIBE_TIMEOUT):
                if tp.offset < 0:
                    continue
                _, high = consumer.get_watermark_offsets(tp, timeout=DESCRIBE_TIMEOUT, cached=False)
                if beyond_end(tp.offset, high):
                    reset.add(tp.partition)
        except Exception as exc:  # the broker went away meanwhile: keep the committed offsets
            log.warning("offset_check_failed", error=type(exc).__name__, detail=str(exc)[:200])
        return reset

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.assigned = ()
        log.info("partitions_revoked", partitions=[tp.partition for tp in partitions])

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self.assigned = ()
        self.joined = False
        log.warning("partitions_lost", partitions=[tp.partition for tp in partitions])

    # --- the topic's identity --------------------------------------------------------------------

    def _note_topic_id(self, topic_id: str) -> bool:
        """Remember the control topic's id; True if it changed (the topic was recreated)."""
        self.topic_missing = False
        if self.topic_id is None:
            self.topic_id = topic_id
            return False
        if topic_id == self.topic_id:
            return False
        log.warning(
            "control_topic_recreated",
            topic=self.kafka.topic,
            old_topic_id=self.topic_id,
            topic_id=topic_id,
            detail="replaying it from the beginning",
        )
        self.topic_id = topic_id
        self.replays += 1
        self._replay_from_beginning = True
        return True

    def _describe(self, admin: Any) -> Any:
        from confluent_kafka import TopicCollection

        futures = admin.describe_topics(TopicCollection([self.kafka.topic]), request_timeout=DESCRIBE_TIMEOUT)
        return futures[self.kafka.topic]

    def _topic_id_of(self, future: Any) -> str:
        """The topic id a describe future answered; TopicMissing if the topic does not exist."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            description = future.result(timeout=0)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise TopicMissing(self.kafka.topic) from None
            raise
        return str(description.topic_id)

    def _run(self) -> None:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient
        from quixstreams.kafka import Consumer

        self.joined = False
        self.assigned = ()
        self.lag = None  # until this consumer's first statistics
        ensure_streaming_tokens_topic(self.kafka, timeout=DESCRIBE_TIMEOUT)  # also: a broker answers
        self._all_brokers_down = False
        admin = AdminClient(self.kafka.librdkafka())
        future = self._describe(admin)
        future.result(timeout=DESCRIBE_TIMEOUT * 2)
        self._note_topic_id(self._topic_id_of(future))
        consumer = Consumer(
            broker_address=self.kafka.connection_config(),
            consumer_group=self.settings.consumer_group,
            auto_offset_reset="earliest",
            auto_commit_enable=False,
            error_callback=self._on_error,
            extra_config={
                **self.kafka.consumer_group_tuning(),
                "statistics.interval.ms": STATS_INTERVAL_MS,
                "stats_cb": self._on_stats,
            },
        )
        with consumer:
            consumer.subscribe(
                [self.kafka.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self.subscribed.set()
            self.last_error = None
            self.failing = False
            log.info("consumer_started", topic=self.kafka.topic, group=self.settings.consumer_group)
            check: Any = None
            next_check = time.monotonic() + self.settings.topic_check_interval_seconds
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=self.settings.consumer_batch, timeout=0.5)
                if self._all_brokers_down:
                    # Every broker is gone. This consumer is closed and a new one made once a broker
                    # answers: librdkafka 2.12 crashes (rd_kafka_metadata_update_op) when a consumer that
                    # knew the old topic meets a broker that came back with the topic recreated, and a
                    # fresh consumer starts from what the broker says now (topic id compared in _run).
                    log.warning("consumer_paused", detail="no broker; starting again once one answers")
                    self.joined = False
                    self.assigned = ()
                    return
                if self._to_check:
                    self._replay_beyond_end(consumer)
                if messages and not self._same_topic(admin):
                    self.joined = False
                    self.assigned = ()
                    return  # the batch may come from a new topic at old positions: replay instead
                if messages and not self._handle(consumer, messages, TopicPartition):
                    return  # stopping before the batch was recorded: do not commit it
                if check is None and time.monotonic() >= next_check:
                    check = self._describe(admin)
                elif check is not None and check.done():
                    next_check = time.monotonic() + self.settings.topic_check_interval_seconds
                    if self._checked(check):
                        self.joined = False
                        self.assigned = ()
                        return  # recreated: start again and take the partitions from the beginning
                    check = None

    def _same_topic(self, admin: Any) -> bool:
        """Before a batch is recorded: is the topic still the one this consumer started on? A consumer
        whose topic was deleted and created again fetches the new topic at its old positions, skipping
        what lies before them; such a batch is dropped (not committed) and the topic replayed instead.
        Raises (the consumer starts again, nothing committed) when the broker cannot say."""
        future = self._describe(admin)
        try:
            future.result(timeout=DESCRIBE_TIMEOUT * 2)
            topic_id = self._topic_id_of(future)
        except TopicMissing:
            log.warning(
                "control_topic_missing", topic=self.kafka.topic, detail="batch dropped, starting again"
            )
            self.topic_missing = True
            return False
        return not self._note_topic_id(topic_id)

    def _checked(self, future: Any) -> bool:
        """Read a finished topic check; True if the topic was recreated."""
        try:
            return self._note_topic_id(self._topic_id_of(future))
        except TopicMissing:
            if not self.topic_missing:
                log.warning("control_topic_missing", topic=self.kafka.topic, detail="creating it again")
            self.topic_missing = True
            try:
                ensure_streaming_tokens_topic(self.kafka, timeout=DESCRIBE_TIMEOUT)
            except Exception as exc:
                log.warning("topic_create_failed", error=type(exc).__name__, detail=str(exc)[:200])
        except Exception as exc:  # unreachable broker: the statistics say so; check again later
            log.info("topic_check_failed", error=type(exc).__name__, detail=str(exc)[:200])
        return False

    def _handle(self, consumer: Any, messages: list[Any], topic_partition: Any) -> bool:
        """Record one polled batch and commit its offsets; False if stopping before it was recorded."""
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
            return True
        self.last_record_at = time.time()
        created = self._record(events)
        if created is None:
            return False
        consumer.commit(
            offsets=[topic_partition(t, p, o) for (t, p), o in next_offsets.items()],
            asynchronous=False,
        )
        if created:
            self.on_recorded(created)
        return True

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
        failures = 0
        while True:
            try:
                created = self.store.record_events(events, on_progress=self.on_recorded)
            except Exception as exc:
                self.recording_blocked = True
                failures += 1
                delay = exponential(failures, 0.2, 5.0)
                log.error("record_failed", error=type(exc).__name__, detail=str(exc)[:300], retry_in=delay)
                if self._stop.wait(delay):
                    return None
                continue
            self.recording_blocked = False
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


def _is_kafka_error(exc: Exception) -> bool:
    from confluent_kafka import KafkaException

    return isinstance(exc, KafkaException)


def _broker_unreachable(exc: Exception) -> bool:
    from confluent_kafka import KafkaError

    error = exc.args[0] if exc.args else None
    codes = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE)
    return isinstance(error, KafkaError) and error.code() in codes
