"""Kafka for the issuer: an idempotent quixstreams producer that waits for acknowledgements, and the topic.

The producer sends each record keyed by environment id (so one environment's records share a partition and
keep their order) and reports, per record, whether the broker acknowledged it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from services.issuer.ports import Delivery, OutboxMessage, TopicIdentity
from shared.events import encode_key
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.logs import get_logger

log = get_logger(__name__)
_quiet = logging.getLogger("streamtoken.issuer.librdkafka")


def _error_callback(error: Any) -> None:
    # While Kafka is down librdkafka reports every failed connection; the relay logs once per attempt.
    log.debug("kafka_client_error", error=str(error))


class QuixPublisher:
    """:class:`~services.issuer.ports.Publisher` on a quixstreams ``Producer`` (librdkafka, idempotent)."""

    def __init__(self, settings: KafkaSettings, delivery_timeout_s: float) -> None:
        self._settings = settings
        self._timeout = delivery_timeout_s
        self._producer: Any = None

    def _make(self) -> Any:
        from quixstreams.kafka.producer import Producer

        return Producer(
            broker_address=self._settings.connection_config(),
            logger=_quiet,
            error_callback=_error_callback,
            extra_config={
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,  # a rotation is one record: send it now, not after batching
                "message.timeout.ms": int(self._timeout * 1000),
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 1000,
                "statistics.interval.ms": 0,
            },
        )

    def publish(self, messages: Sequence[OutboxMessage]) -> list[Delivery]:
        if self._producer is None:
            self._producer = self._make()
        reports: dict[int, Delivery] = {}

        def report(message_id: int) -> Any:
            def on_delivery(error: Any, record: Any) -> None:
                if error is not None:
                    reports[message_id] = Delivery(message_id, str(error), datetime.now(UTC))
                    return
                reports[message_id] = Delivery(
                    message_id, None, datetime.now(UTC), record.partition(), record.offset()
                )

            return on_delivery

        try:
            for message in messages:
                self._producer.produce(
                    self._settings.topic,
                    value=message.payload,
                    key=encode_key(message.environment_id),
                    on_delivery=report(message.id),
                )
        except Exception as exc:  # BufferError or KafkaException: nothing more can be queued now
            log.warning("kafka_produce_failed", error=type(exc).__name__)
        # message.timeout.ms bounds every record, so this flush sees every delivery report.
        self._producer.flush(self._timeout + 2.0)
        now = datetime.now(UTC)
        return [reports.get(m.id, Delivery(m.id, "not acknowledged in time", now)) for m in messages]

    def reset(self) -> None:
        """Forget the producer after a failure: the next publish starts a fresh one (new producer id)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.purge()
                producer.flush(0)
            except Exception as exc:  # a broken producer may refuse even this
                log.debug("kafka_producer_reset_failed", error=type(exc).__name__)

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(self._timeout)
            finally:
                self._producer = None


class KafkaTopicAdmin:
    """:class:`~services.issuer.ports.TopicAdmin` for the streaming-tokens topic (one AdminClient, kept)."""

    def __init__(self, settings: KafkaSettings, timeout_s: float = 5.0) -> None:
        self._settings = settings
        self._timeout = timeout_s
        self._admin: Any = None

    def _client(self) -> Any:
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient({**self._settings.librdkafka(), "error_cb": _error_callback})
        return self._admin

    def ensure_topic(self) -> bool:
        return ensure_streaming_tokens_topic(self._settings, timeout=self._timeout)

    def is_empty(self) -> bool:
        return topic_is_empty(self._settings, timeout_s=self._timeout)

    def identity(self) -> TopicIdentity | None:
        from confluent_kafka import KafkaError, KafkaException, TopicCollection

        topic = self._settings.topic
        futures = self._client().describe_topics(TopicCollection([topic]), request_timeout=self._timeout)
        future = futures[topic]
        try:
            described = future.result(self._timeout + 1.0)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise
        return TopicIdentity(str(described.topic_id), tuple(sorted(p.id for p in described.partitions)))

    def latest_offsets(self) -> dict[int, int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        identity = self.identity()
        if identity is None:
            return {}
        requests = {TopicPartition(self._settings.topic, p): OffsetSpec.latest() for p in identity.partitions}
        futures = self._client().list_offsets(requests, request_timeout=self._timeout)
        return {tp.partition: int(f.result(self._timeout + 1.0).offset) for tp, f in futures.items()}

    def high_watermarks(self) -> dict[int, int]:
        return high_watermarks(self._settings, timeout_s=self._timeout)

    def reset(self) -> None:
        """Forget the AdminClient (after a failure): the next call connects afresh."""
        self._admin = None


@contextmanager
def _probe(settings: KafkaSettings, timeout_s: float) -> Iterator[tuple[Any, list[Any]]]:
    """A fresh consumer (no group join, nothing committed) assigned to every partition of the topic from the
    beginning, closed afterwards. Raises ``TimeoutError`` when the topic is not available."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **settings.librdkafka(),
            "group.id": f"streamtoken-issuer-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            "error_cb": _error_callback,
        },
        logger=_quiet,
    )
    try:
        metadata = consumer.list_topics(settings.topic, timeout=timeout_s)
        topic = metadata.topics.get(settings.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise TimeoutError(f"topic {settings.topic!r} is not available")
        partitions = [TopicPartition(settings.topic, p, OFFSET_BEGINNING) for p in topic.partitions]
        consumer.assign(partitions)
        yield consumer, partitions
    finally:
        consumer.close()


def topic_is_empty(settings: KafkaSettings, timeout_s: float = 5.0) -> bool:
    """Read the topic from the beginning: empty when no record arrives and every partition's high watermark,
    as carried by fetch responses, is 0. Raises ``TimeoutError`` when the broker does not answer in time.
    """
    with _probe(settings, timeout_s) as (consumer, partitions):
        at_eof: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None:
                error = message.error()
                if error is None:
                    return False
                if error.code() == error._PARTITION_EOF:
                    at_eof.add(message.partition())
            highs = [consumer.get_watermark_offsets(tp, cached=True) for tp in partitions]
            if any(high is not None and high[1] > 0 for high in highs):
                return False
            if len(at_eof) == len(partitions):
                return True
        raise TimeoutError(f"no fetch answer from {settings.bootstrap_servers} in {timeout_s:g} s")


def high_watermarks(settings: KafkaSettings, timeout_s: float = 5.0) -> dict[int, int]:
    """Each partition's high watermark as the fetch responses of a fresh consumer carry it (ListOffsets is
    wrong on Tansu, see BROKER.md). Raises ``TimeoutError`` when some partition gave no fetch answer."""
    with _probe(settings, timeout_s) as (consumer, partitions):
        deadline = time.monotonic() + timeout_s
        highs: dict[int, int] = {}
        while time.monotonic() < deadline:
            consumer.poll(0.1)
            for tp in partitions:
                high = consumer.get_watermark_offsets(tp, cached=True)
                if high is not None and high[1] >= 0:
                    highs[tp.partition] = int(high[1])
            if len(highs) == len(partitions):
                return highs
        raise TimeoutError(f"no fetch answer for every partition in {timeout_s:g} s")
