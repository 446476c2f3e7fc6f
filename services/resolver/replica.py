"""The table replica: a faust (mode) service replaying the whole ``streaming-tokens`` topic into the table.

Like a Kafka Streams GlobalKTable: every replica reads every partition from the beginning, with no consumer
group and nothing committed. The faust service gives the lifecycle (start/stop, supervised background
tasks); the bulk replay uses a raw aiokafka consumer because faust's agent/stream machinery was the measured
bottleneck for the one-million-environment cold start (docs/benchmarks-resolver.md).

Readiness: the replica is ready once, for every partition, its position has reached the end offset taken
at start. ``end_offsets()`` (ListOffsets "latest") is only a lower bound on the embedded broker (BROKER.md),
so the target per partition is the larger of it and the high watermark carried by the first fetch
response for that partition, which is right on both brokers. An empty partition answers a high watermark
of its start offset, so an empty topic is ready after the first fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.resolver.metrics import ResolverMetrics
from services.resolver.records import RecordError, decode_record
from services.resolver.table import TokenTable
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.logs import get_logger

log = get_logger(__name__)


class Status(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DEGRADED = "degraded"


def aiokafka_connection(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the connection part of ``KafkaSettings``."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        kwargs["sasl_plain_username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_ca_location or kafka.security_protocol in {"SSL", "SASL_SSL"}:
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(cafile=kafka.ssl_ca_location)
    return kwargs


class TableReplica(faust.Service):  # type: ignore[misc]
    """Keeps ``table`` equal to the topic; ``status`` says loading, ready or degraded."""

    def __init__(
        self,
        table: TokenTable,
        kafka: KafkaSettings,
        metrics: ResolverMetrics,
        *,
        fetch_max_wait_ms: int = 20,
        degraded_after_seconds: float = 15.0,
        probe_interval_seconds: float = 2.0,
        create_topic: bool = True,
        on_applied: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.table = table
        self.kafka = kafka
        self.metrics = metrics
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.degraded_after_seconds = degraded_after_seconds
        self.probe_interval_seconds = probe_interval_seconds
        self.create_topic = create_topic
        self.on_applied = on_applied
        self.status = Status.LOADING
        self.records_read = 0
        self.started_at = time.monotonic()
        self.ready_after: float | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._targets: dict[TopicPartition, int] = {}
        self._start_ends: dict[TopicPartition, int] = {}
        self._failure: str | None = None
        self.metrics.set_status(self.status)
        super().__init__(**kwargs)

    # --- what the API reads --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "environments": len(self.table),
            "records": self.records_read,
            "lag": self._lag(),
            "load_seconds": self.ready_after,
            **({"problem": self._failure} if self._failure else {}),
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.started_at = time.monotonic()
        if self.create_topic:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, ensure_streaming_tokens_topic, self.kafka)
            except Exception as exc:  # the issuer creates it too; keep going and wait for it
                log.warning("streaming_tokens_topic_not_ensured", topic=self.kafka.topic, error=str(exc))
        self._consumer = AIOKafkaConsumer(
            **aiokafka_connection(self.kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            client_id="streamtoken-resolver",
        )
        await self._consumer.start()
        log.info("replica_starting", topic=self.kafka.topic)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    # --- the replay ----------------------------------------------------------------------------------

    @faust.Service.task  # type: ignore[untyped-decorator]
    async def _replay(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self.should_stop:
            try:
                if not self._partitions:
                    await self._assign(consumer)
                    continue
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    self._apply(records)
                if self.status is Status.LOADING:
                    await self._check_caught_up(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                log.error("replica_error", error=type(exc).__name__, detail=str(exc))
                await self.sleep(1.0)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        await consumer.topics()  # refreshes metadata
        numbers = consumer.partitions_for_topic(self.kafka.topic)
        if not numbers:
            log.info("replica_waiting_for_topic", topic=self.kafka.topic)
            await self.sleep(1.0)
            return
        partitions = [TopicPartition(self.kafka.topic, p) for p in sorted(numbers)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._start_ends = dict(await consumer.end_offsets(partitions))
        self._partitions = partitions
        log.info("replica_assigned", topic=self.kafka.topic, partitions=len(partitions))

    def _apply(self, records: list[Any]) -> None:
        table, counts = self.table, {"applied": 0, "stale": 0, "deleted": 0, "invalid": 0}
        for record in records:
            try:
                decoded = decode_record(record.key, record.value)
            except RecordError as exc:
                counts["invalid"] += 1
                log.warning(
                    "record_skipped", partition=record.partition, offset=record.offset, reason=str(exc)
                )
                continue
            result = table.apply(decoded.environment_id, decoded.generation, decoded.tokens)
            if result.reason == "deleted":
                counts["deleted"] += 1
            elif result.applied:
                counts["applied"] += 1
            else:
                counts["stale"] += 1
            if result.applied and self.status is not Status.LOADING:
                log.info(
                    "environment_updated",
                    environment_id=decoded.environment_id,
                    generation=decoded.generation,
                    change=result.reason,
                )
                if self.on_applied is not None:
                    self.on_applied(decoded.environment_id)
        self.records_read += len(records)
        for outcome, n in counts.items():
            if n:
                self.metrics.records.labels(outcome).inc(n)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        for tp in self._partitions:
            if tp not in self._targets:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    return
                self._targets[tp] = max(highwater, self._start_ends.get(tp) or 0)
        for tp in self._partitions:
            if await consumer.position(tp) < self._targets[tp]:
                return
        self.ready_after = time.monotonic() - self.started_at
        self.metrics.load_seconds.set(self.ready_after)
        self._set_status(Status.READY)
        log.info(
            "replica_ready",
            seconds=round(self.ready_after, 3),
            records=self.records_read,
            environments=len(self.table),
        )

    # --- health --------------------------------------------------------------------------------------

    @faust.Service.task  # type: ignore[untyped-decorator]
    async def _probe(self) -> None:
        while not self.should_stop:
            await self.sleep(self.probe_interval_seconds)
            self.metrics.lag.set(self._lag() or 0)
            if self.status is Status.LOADING:
                continue
            stale = self._seconds_since_fetch()
            if stale is not None and stale > self.degraded_after_seconds:
                if self.status is not Status.DEGRADED:
                    self._failure = f"no answer from Kafka for {stale:.0f} s"
                    self._set_status(Status.DEGRADED)
                    log.warning("replica_degraded", seconds_without_fetch=round(stale, 1))
            elif self.status is Status.DEGRADED:
                self._failure = None
                self._set_status(Status.READY)
                log.info("replica_recovered")

    def _seconds_since_fetch(self) -> float | None:
        consumer = self._consumer
        if consumer is None or not self._partitions:
            return None
        stamps = []
        for tp in self._partitions:
            try:
                stamp = consumer.last_poll_timestamp(tp)
            except Exception:
                return None
            if stamp is None:
                return None
            stamps.append(stamp)
        return float(time.time() - min(stamps) / 1000.0)

    def _lag(self) -> int | None:
        consumer = self._consumer
        if consumer is None or not self._partitions:
            return None
        lag = 0
        for tp in self._partitions:
            try:
                highwater = consumer.highwater(tp)
                position = consumer._subscription.subscription.assignment.state_value(tp).position
            except Exception:
                return None
            if highwater is None or position is None:
                return None
            lag += max(highwater - position, 0)
        return lag

    def _set_status(self, status: Status) -> None:
        self.status = status
        self.metrics.set_status(status)
