"""The table replica: a faust (mode) service replaying the whole ``streaming-tokens`` topic into the table.

Like a Kafka Streams GlobalKTable: every replica reads every partition from the beginning, with no consumer
group join and nothing committed. faust gives the service lifecycle (start/stop, supervised background
tasks); the records are read with a confluent-kafka (librdkafka) consumer, because faust's agent/stream
machinery and aiokafka were the measured bottleneck for the one-million-environment cold start
(docs/benchmarks-resolver.md). The consumer is used from one dedicated thread; records are applied on the
event loop, so a lookup never sees an environment half-replaced.

Readiness: the replica is ready once, for every partition, its position has reached the end offset taken
at start. ListOffsets "latest" (``get_watermark_offsets()``) is only a lower bound on the embedded broker
(BROKER.md), so the target per partition is the larger of it and the high watermark carried by the first
fetch response for that partition (``get_watermark_offsets(cached=True)``), which is right on both
brokers. An empty partition reports a high watermark equal to its low watermark, so an empty topic is
ready after the first fetch.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

import faust

from services.resolver.metrics import ResolverMetrics
from services.resolver.records import RecordError, decode_record, fast_records
from services.resolver.table import TokenTable
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.logs import get_logger

log = get_logger(__name__)

OFFSET_BEGINNING = -2
BULK_BATCH = 10_000  # records per read while loading (two are in memory at once: one read, one applied)
TAIL_BATCH = 2_000
RESERVE_LIMIT = 2_000_000  # environments the table is sized for up front, at most (~150 MB of index)


class Status(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DEGRADED = "degraded"


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
        **kwargs: Any,
    ) -> None:
        self.table = table
        self.kafka = kafka
        self.metrics = metrics
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.degraded_after_seconds = degraded_after_seconds
        self.probe_interval_seconds = probe_interval_seconds
        self.create_topic = create_topic
        self.status = Status.LOADING
        self.records_read = 0
        self.started_at = time.monotonic()
        self.ready_after: float | None = None
        self._consumer: Any = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="resolver-consumer")
        self._partitions: list[Any] = []
        self._start_ends: dict[int, int] = {}
        self._targets: dict[int, int] = {}
        self._lag: int | None = None
        self._broker_seen_at = time.monotonic()
        self._failure: str | None = None
        self.metrics.set_status(self.status)
        super().__init__(**kwargs)

    # --- what the API reads --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "environments": len(self.table),
            "records": self.records_read,
            "lag": self._lag,
            "load_seconds": self.ready_after,
            **({"problem": self._failure} if self._failure else {}),
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    async def on_start(self) -> None:
        from confluent_kafka import Consumer

        self.started_at = time.monotonic()
        self._consumer = Consumer(
            {
                **self.kafka.librdkafka(),
                # Required by librdkafka; never joined (partitions are assigned) and never committed.
                "group.id": f"streamtoken-resolver-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": self.fetch_max_wait_ms,
                # Prefetch enough to keep the replay busy (smaller queues measured 3x slower at start).
                "fetch.max.bytes": 32 * 1024 * 1024,
                "max.partition.fetch.bytes": 4 * 1024 * 1024,
                "queued.max.messages.kbytes": 64 * 1024,
                "statistics.interval.ms": max(int(self.probe_interval_seconds * 1000), 100),
                "stats_cb": self._on_stats,
                "client.id": "streamtoken-resolver",
            }
        )
        log.info("replica_starting", topic=self.kafka.topic)

    async def on_stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._in_thread(consumer.close)
        self._thread.shutdown(wait=False)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- the replay ----------------------------------------------------------------------------------

    @faust.Service.task  # type: ignore[untyped-decorator]
    async def _replay(self) -> None:
        while not self.should_stop and not self._partitions:
            try:
                await self._assign()
            except Exception as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                log.warning("replica_assign_failed", error=type(exc).__name__, detail=str(exc))
                await self.sleep(1.0)
        gc_threshold = gc.get_threshold()
        gc.set_threshold(100_000, 50, 100)  # the table holds no GC-tracked objects; batches are short-lived
        pending: asyncio.Future[tuple[list[Any], list[Any]]] | None = None
        try:
            while not self.should_stop:
                try:
                    if pending is None:
                        pending = self._start_fetch()
                    messages, positions = await pending
                    # Read the next batch in the consumer thread while this one is applied.
                    pending = self._start_fetch()
                    if messages:
                        self._apply(messages)
                    if self.status is Status.LOADING:
                        self._check_caught_up(positions)
                        if self.status is not Status.LOADING:
                            gc.set_threshold(*gc_threshold)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    pending = None
                    self._failure = f"{type(exc).__name__}: {exc}"
                    log.error("replica_error", error=type(exc).__name__, detail=str(exc))
                    await self.sleep(1.0)
        finally:
            gc.set_threshold(*gc_threshold)
            if pending is not None:
                pending.cancel()

    def _start_fetch(self) -> asyncio.Future[tuple[list[Any], list[Any]]]:
        limit = BULK_BATCH if self.status is Status.LOADING else TAIL_BATCH
        return asyncio.get_running_loop().run_in_executor(self._thread, self._fetch, limit)

    def _fetch(self, limit: int) -> tuple[list[Any], list[Any]]:
        """In the consumer thread: wait briefly for one record, then take whatever else is buffered.

        Also returns the consumer's positions right after this batch, which is what readiness compares
        (taken here because the next batch is already being read while this one is applied)."""
        consumer = self._consumer
        if consumer is None:
            return [], []
        first = consumer.poll(0.1)
        messages = [] if first is None else [first, *consumer.consume(limit - 1, 0)]
        return messages, consumer.position(self._partitions)

    async def _assign(self) -> None:
        from confluent_kafka import TopicPartition

        if self.create_topic:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, ensure_streaming_tokens_topic, self.kafka
                )
            except Exception as exc:  # the issuer creates it too; keep going and wait for it
                log.warning("streaming_tokens_topic_not_ensured", topic=self.kafka.topic, error=str(exc))
        consumer, topic = self._consumer, self.kafka.topic
        metadata = await self._in_thread(lambda: consumer.list_topics(topic, timeout=10))
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            log.info("replica_waiting_for_topic", topic=topic)
            await self.sleep(1.0)
            return
        numbers = sorted(described.partitions)
        records = 0
        for number in numbers:
            low, high = await self._in_thread(
                lambda n=number: consumer.get_watermark_offsets(TopicPartition(topic, n), timeout=10)
            )
            self._start_ends[number] = high
            records += max(high - low, 0)
        # Size the table once for the topic (at most one environment per record) instead of growing it
        # step by step while loading: a growth step re-inserts every entry, which would cost seconds.
        self.table.reserve(min(records, RESERVE_LIMIT))
        partitions = [TopicPartition(topic, n, OFFSET_BEGINNING) for n in numbers]
        await self._in_thread(consumer.assign, partitions)
        self._partitions = [TopicPartition(topic, n) for n in numbers]
        self._failure = None
        log.info("replica_assigned", topic=topic, partitions=len(numbers))

    def _apply(self, messages: list[Any]) -> None:
        counts = {"applied": 0, "stale": 0, "deleted": 0, "invalid": 0}
        if self.status is Status.LOADING:
            self._apply_bulk(messages, counts)
        else:
            for message in messages:
                counts[self._apply_one(message)] += 1
        self.records_read += len(messages)
        records = self.metrics.records
        for outcome, n in counts.items():
            if n:
                records.labels(outcome).inc(n)

    def _apply_bulk(self, messages: list[Any], counts: dict[str, int]) -> None:
        """While loading: the whole batch through ``fast_records`` and ``TokenTable.apply_pairs``; the
        records those do not take (tombstones, grace periods, odd or invalid records) one by one."""
        kind = type(messages[0])
        found = fast_records(list(map(kind.key, messages)), list(map(kind.value, messages)))
        if found is None:
            for message in messages:
                counts[self._apply_one(message)] += 1
            return
        apply_pairs, start, end = self.table.apply_pairs, 0, len(found)
        while start < end:
            start, new, replaced, stale = apply_pairs(found, start)
            counts["applied"] += new + replaced
            counts["stale"] += stale
            if start < end:
                counts[self._apply_one(messages[start])] += 1
                start += 1

    def _apply_one(self, message: Any) -> str:
        """Apply one record; returns its outcome: applied, stale, deleted or invalid."""
        if message.error() is not None:
            log.warning("consumer_error", error=str(message.error()))
            return "invalid"
        try:
            environment_id, generation, tokens = decode_record(message.key(), message.value())
            result = self.table.apply(environment_id, generation, tokens)
        except (RecordError, ValueError) as exc:
            log.warning(
                "record_skipped", partition=message.partition(), offset=message.offset(), reason=str(exc)
            )
            return "invalid"
        if not result.applied:
            return "stale"
        if self.status is not Status.LOADING:
            log.info(
                "environment_updated",
                environment_id=environment_id,
                generation=generation,
                change=result.reason,
            )
        return "deleted" if result.reason == "deleted" else "applied"

    def _check_caught_up(self, positions: list[Any]) -> None:
        """Ready once every partition's position (after the applied batches) has reached its end offset."""
        consumer = self._consumer
        for tp in self._partitions:
            if tp.partition not in self._targets:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    return  # no fetch response for this partition yet
                self._targets[tp.partition] = max(high, self._start_ends.get(tp.partition, 0))
        for tp in positions:
            target = self._targets[tp.partition]
            if tp.offset >= 0:
                if tp.offset < target:
                    return
                continue
            low, _ = consumer.get_watermark_offsets(tp, cached=True)
            if not 0 <= target <= low:  # nothing consumed: caught up only if nothing is there
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

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka statistics (in the consumer thread): broker reachability and lag."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        brokers = stats.get("brokers", {}).values()
        if any(b.get("nodeid", -1) >= 0 and b.get("state") == "UP" for b in brokers):
            self._broker_seen_at = time.monotonic()
        lag = 0
        for partition in stats.get("topics", {}).get(self.kafka.topic, {}).get("partitions", {}).values():
            if partition.get("partition", -1) >= 0:
                lag += max(int(partition.get("consumer_lag", 0)), 0)
        self._lag = lag

    @faust.Service.task  # type: ignore[untyped-decorator]
    async def _probe(self) -> None:
        while not self.should_stop:
            await self.sleep(self.probe_interval_seconds)
            if self._lag is not None:
                self.metrics.lag.set(self._lag)
            if self.status is Status.LOADING:
                continue
            silent = time.monotonic() - self._broker_seen_at
            if silent > self.degraded_after_seconds:
                if self.status is not Status.DEGRADED:
                    self._failure = f"no connection to Kafka for {silent:.0f} s"
                    self._set_status(Status.DEGRADED)
                    log.warning("replica_degraded", seconds_without_broker=round(silent, 1))
            elif self.status is Status.DEGRADED:
                self._failure = None
                self._set_status(Status.READY)
                log.info("replica_recovered")

    def _set_status(self, status: Status) -> None:
        self.status = status
        self.metrics.set_status(status)
