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

A recreated or truncated topic (issue 10): the probe describes the topic (its id and partitions) and
compares the positions with the high watermarks; a new id, other partitions, or a position that went
backwards or lies beyond the partition's end start a **rebuild**: a fresh consumer replays the topic from
the beginning into a new table while lookups keep reading the last good one, which is replaced by the new
one in one assignment once it caught up. While the broker is unreachable the consumer's partitions are
paused and only resumed once the topic is seen again with the same id: librdkafka 2.12.1 crashes the
process (SIGSEGV in its metadata cache) when an assigned consumer fetches from a restarted embedded
broker that no longer knows the topic's id.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
DESCRIBE_TIMEOUT_SECONDS = 5.0

# Reasons, short enough for shared.web.short_reason to keep them whole (also metric labels).
NO_BROKER = "no broker connection"
TOPIC_MISSING = "control topic missing"
REPLAY_FAILING = "replay failing"
PROBLEMS = (NO_BROKER, TOPIC_MISSING, REPLAY_FAILING)
RECREATED = "topic recreated"
PARTITIONS_CHANGED = "partitions changed"
BEYOND_END = "position beyond the end"
REBUILD_REASONS = (RECREATED, PARTITIONS_CHANGED, BEYOND_END)


class Status(StrEnum):
    LOADING = "loading"
    READY = "ready"
    REBUILDING = "rebuilding"
    DEGRADED = "degraded"


SERVING = frozenset({Status.READY, Status.REBUILDING})
"""Statuses in which ``/health/ready`` is 200: caught up, or answering from the last good table while a
new one is replayed."""


@dataclass(frozen=True)
class TopicIdentity:
    topic_id: str
    partitions: tuple[int, ...]


class TableReplica(faust.Service):  # type: ignore[misc]
    """Keeps ``table`` equal to the topic; ``status`` says loading, ready, rebuilding or degraded."""

    def __init__(
        self,
        table: TokenTable,
        kafka: KafkaSettings,
        metrics: ResolverMetrics,
        *,
        fetch_max_wait_ms: int = 20,
        degraded_after_seconds: float = 15.0,
        probe_interval_seconds: float = 2.0,
        rebuild_empty_grace_seconds: float = 60.0,
        create_topic: bool = True,
        on_swap: Callable[[TokenTable], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.table = table  # the live table: what lookups read
        self.kafka = kafka
        self.metrics = metrics
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.degraded_after_seconds = degraded_after_seconds
        self.probe_interval_seconds = probe_interval_seconds
        self.rebuild_empty_grace_seconds = rebuild_empty_grace_seconds
        self.create_topic = create_topic
        self.on_swap = on_swap
        self.status = Status.LOADING
        self.records_read = 0
        self.rebuilds = 0
        self.started_at = time.monotonic()
        self.ready_after: float | None = None
        self._consumer: Any = None
        self._admin: Any = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="resolver-consumer")
        self._partitions: list[Any] = []
        self._start_ends: dict[int, int] = {}
        self._targets: dict[int, int] = {}
        self._loaded = False  # caught up once: the first load is over
        self._building: TokenTable | None = None  # the table a rebuild replays into
        self._rebuild_reason: str | None = None  # a rebuild asked for, not started yet
        self._rebuild_started: tuple[str, float] | None = None
        self._identity: TopicIdentity | None = None
        self._positions: dict[int, int] = {}  # next offset per partition, after the last applied batch
        self._lags: dict[int, int] = {}
        self._lag: int | None = None
        self._last: tuple[int, int, float | None, float] | None = None  # partition, offset, ts, applied at
        self._broker_up = True
        self._broker_seen_at = time.monotonic()
        self._paused = False
        self._resume = False
        self._topic_missing = False
        self._replay_failing = False
        self._failure: str | None = None
        self.metrics.set_status(self.status)
        self.metrics.set_problem(None)
        super().__init__(**kwargs)

    @property
    def _loading(self) -> bool:
        """The bulk path and the caught-up check: the first load, or a rebuild."""
        return self.status is Status.LOADING or self._building is not None

    # --- what the API reads --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        partitions = {
            str(p): {"position": self._positions.get(p), "lag": self._lags.get(p)}
            for p in sorted(tp.partition for tp in self._partitions)
        }
        last = None
        if self._last is not None:
            partition, offset, timestamp, applied_at = self._last
            last = {
                "partition": partition,
                "offset": offset,
                "record_age_seconds": None if timestamp is None else round(time.time() - timestamp, 3),
                "applied_seconds_ago": round(now - applied_at, 3),
            }
        detail: dict[str, Any] = {
            "status": str(self.status),
            "environments": len(self.table),
            "records": self.records_read,
            "lag": self._lag,
            "partitions": partitions,
            "last_applied": last,
            "kafka": "up" if self._broker_up else "down",
            "kafka_silent_seconds": round(max(now - self._broker_seen_at, 0.0), 1),
            "consumer": "paused" if self._paused else "fetching",
            "load_seconds": self.ready_after,
            "rebuilds": self.rebuilds,
        }
        if self._building is not None and self._rebuild_started is not None:
            reason, since = self._rebuild_started
            detail["rebuild"] = {
                "reason": reason,
                "environments": len(self._building),
                "seconds": round(now - since, 3),
            }
        if self._failure:
            detail["problem"] = self._failure
        return detail

    # --- lifecycle -----------------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.started_at = time.monotonic()
        self._open_consumer()
        log.info("replica_starting", topic=self.kafka.topic)

    def _open_consumer(self) -> None:
        """A new librdkafka consumer (at start, and for each rebuild: a fresh one holds no metadata of a
        topic that is gone)."""
        from confluent_kafka import Consumer

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

    async def on_stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._in_thread(consumer.close)
        self._admin = None
        self._thread.shutdown(wait=False)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- the replay ----------------------------------------------------------------------------------

    @faust.Service.task  # type: ignore[untyped-decorator]
    async def _replay(self) -> None:
        await self._assign_until_done()
        gc_threshold = gc.get_threshold()
        gc.set_threshold(100_000, 50, 100)  # the table holds no GC-tracked objects; batches are short-lived
        pending: asyncio.Future[tuple[list[Any], list[Any]]] | None = None
        try:
            while not self.should_stop:
                try:
                    if self._rebuild_reason is not None:
                        if pending is not None:  # the consumer thread finishes its read first
                            await asyncio.gather(pending, return_exceptions=True)
                            pending = None
                        gc.set_threshold(100_000, 50, 100)
                        await self._start_rebuild()
                        continue
                    if pending is None:
                        pending = self._start_fetch()
                    messages, positions = await pending
                    # Read the next batch in the consumer thread while this one is applied.
                    pending = self._start_fetch()
                    if messages:
                        self._apply(messages)
                    self._track(positions)
                    self._replay_failing = False
                    if self._loading:
                        self._check_caught_up(positions)
                        if not self._loading:
                            gc.set_threshold(*gc_threshold)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    pending = None
                    self._replay_failing = True
                    log.error("replica_error", error=type(exc).__name__, detail=str(exc))
                    await self.sleep(1.0)
        finally:
            gc.set_threshold(*gc_threshold)
            if pending is not None:
                pending.cancel()

    async def _assign_until_done(self) -> None:
        while not self.should_stop and not self._partitions:
            try:
                await self._assign()
            except Exception as exc:
                self._replay_failing = True
                log.warning("replica_assign_failed", error=type(exc).__name__, detail=str(exc))
                await self.sleep(1.0)

    def _start_fetch(self) -> asyncio.Future[tuple[list[Any], list[Any]]]:
        limit = BULK_BATCH if self._loading else TAIL_BATCH
        return asyncio.get_running_loop().run_in_executor(self._thread, self._fetch, limit)

    def _fetch(self, limit: int) -> tuple[list[Any], list[Any]]:
        """In the consumer thread: wait briefly for one record, then take whatever else is buffered.

        Also returns the consumer's positions right after this batch, which is what readiness compares
        (taken here because the next batch is already being read while this one is applied). Pauses the
        partitions while no broker is up and resumes them once the probe saw the same topic again."""
        consumer = self._consumer
        if consumer is None:
            return [], []
        if self._paused:
            if self._resume:
                consumer.resume(self._partitions)
                self._paused = self._resume = False
                log.info("replica_resumed")
        elif not self._broker_up and self._partitions:
            consumer.pause(self._partitions)
            self._paused, self._resume = True, False
            log.warning("replica_paused", reason=NO_BROKER)
        first = consumer.poll(0.1)
        messages = [] if first is None else [first, *consumer.consume(limit - 1, 0)]
        return messages, consumer.position(self._partitions)

    async def _assign(self) -> None:
        from confluent_kafka import TopicPartition

        loop = asyncio.get_running_loop()
        if self.create_topic:
            try:
                await loop.run_in_executor(None, ensure_streaming_tokens_topic, self.kafka)
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
        try:
            self._identity = await loop.run_in_executor(None, self._describe)
        except Exception as exc:  # the probe takes the topic's id later
            log.warning("topic_describe_failed", error=type(exc).__name__)
        records = 0
        for number in numbers:
            low, high = await self._in_thread(
                lambda n=number: consumer.get_watermark_offsets(TopicPartition(topic, n), timeout=10)
            )
            self._start_ends[number] = high
            records += max(high - low, 0)
        # Size the table once for the topic (at most one environment per record) instead of growing it
        # step by step while loading: a growth step re-inserts every entry, which would cost seconds.
        self._writing().reserve(min(records, RESERVE_LIMIT))
        partitions = [TopicPartition(topic, n, OFFSET_BEGINNING) for n in numbers]
        await self._in_thread(consumer.assign, partitions)
        self._partitions = [TopicPartition(topic, n) for n in numbers]
        self._replay_failing = False
        log.info("replica_assigned", topic=topic, partitions=len(numbers))

    def _writing(self) -> TokenTable:
        """The table records go to: the one being rebuilt, else the live one."""
        return self._building if self._building is not None else self.table

    def _apply(self, messages: list[Any]) -> None:
        counts = {"applied": 0, "stale": 0, "deleted": 0, "invalid": 0}
        if self._loading:
            self._apply_bulk(messages, counts)
        else:
            for message in messages:
                counts[self._apply_one(message)] += 1
        self.records_read += len(messages)
        last = messages[-1]
        if last.error() is None:
            kind, timestamp_ms = last.timestamp()
            timestamp = timestamp_ms / 1000 if kind and timestamp_ms > 0 else None
            self._last = (last.partition(), last.offset(), timestamp, time.monotonic())
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
        apply_pairs, start, end = self._writing().apply_pairs, 0, len(found)
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
            result = self._writing().apply(environment_id, generation, tokens)
        except (RecordError, ValueError) as exc:
            log.warning(
                "record_skipped", partition=message.partition(), offset=message.offset(), reason=str(exc)
            )
            return "invalid"
        if not result.applied:
            return "stale"
        if not self._loading:
            log.info(
                "environment_updated",
                environment_id=environment_id,
                generation=generation,
                change=result.reason,
            )
        return "deleted" if result.reason == "deleted" else "applied"

    def _track(self, positions: list[Any]) -> None:
        """Keep each partition's position; one that went backwards means the log behind it is gone
        (librdkafka resets a position beyond a truncated or recreated partition's end)."""
        for tp in positions:
            if tp.offset < 0:
                continue
            before = self._positions.get(tp.partition)
            if before is not None and tp.offset < before:
                self._request_rebuild(BEYOND_END, partition=tp.partition, position=before, now=tp.offset)
            self._positions[tp.partition] = tp.offset

    def _check_caught_up(self, positions: list[Any]) -> None:
        """Caught up once every partition's position (after the applied batches) has reached its end
        offset: ready after the first load, or the rebuilt table swapped in."""
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
        if self._building is not None:
            if not self._may_swap():
                return
            self._swap()
        else:
            self.ready_after = time.monotonic() - self.started_at
            self.metrics.load_seconds.set(self.ready_after)
            log.info(
                "replica_ready",
                seconds=round(self.ready_after, 3),
                records=self.records_read,
                environments=len(self.table),
            )
        self._loaded = True
        self._refresh_status()

    # --- rebuilding ----------------------------------------------------------------------------------

    def _request_rebuild(self, reason: str, **detail: Any) -> None:
        if self._rebuild_reason is None:
            self._rebuild_reason = reason
            log.warning("replica_rebuild_needed", reason=reason, **detail)

    async def _start_rebuild(self) -> None:
        """A fresh consumer replays the topic from the beginning into a new table; lookups keep reading
        the live one until :meth:`_swap`."""
        reason, self._rebuild_reason = self._rebuild_reason or RECREATED, None
        self.rebuilds += 1
        self.metrics.rebuilds.labels(reason).inc()
        old, self._consumer = self._consumer, None
        if old is not None:
            await self._in_thread(old.close)
        self._open_consumer()
        self._building = TokenTable()
        self._rebuild_started = (reason, time.monotonic())
        self._partitions, self._start_ends, self._targets = [], {}, {}
        self._positions, self._lags, self._identity = {}, {}, None
        self._paused = self._resume = self._topic_missing = False
        log.warning("replica_rebuilding", reason=reason, environments=len(self.table))
        self._refresh_status()
        await self._assign_until_done()

    def _may_swap(self) -> bool:
        """A recreated topic that is still empty (the issuer has not republished yet) does not replace a
        table that holds environments, until ``rebuild_empty_grace_seconds`` passed."""
        assert self._building is not None
        assert self._rebuild_started is not None
        if len(self._building) or not len(self.table):
            return True
        return time.monotonic() - self._rebuild_started[1] >= self.rebuild_empty_grace_seconds

    def _swap(self) -> None:
        assert self._building is not None
        assert self._rebuild_started is not None
        before, self.table, self._building = len(self.table), self._building, None
        if self.on_swap is not None:
            self.on_swap(self.table)
        reason, since = self._rebuild_started
        seconds = time.monotonic() - since
        self.metrics.rebuild_seconds.set(seconds)
        log.warning(
            "replica_rebuilt",
            reason=reason,
            seconds=round(seconds, 3),
            environments=len(self.table),
            environments_before=before,
        )

    # --- health --------------------------------------------------------------------------------------

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka statistics (in the consumer thread): broker reachability."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        brokers = stats.get("brokers", {}).values()
        self._broker_up = any(b.get("nodeid", -1) >= 0 and b.get("state") == "UP" for b in brokers)
        if self._broker_up:
            self._broker_seen_at = time.monotonic()

    def _describe(self) -> TopicIdentity | None:
        """The topic's id and partitions (AdminClient, blocking), or ``None`` when the broker says it
        does not exist."""
        from confluent_kafka import KafkaError, KafkaException, TopicCollection
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient(self.kafka.librdkafka())
        topic = self.kafka.topic
        future = self._admin.describe_topics(
            TopicCollection([topic]), request_timeout=DESCRIBE_TIMEOUT_SECONDS
        )[topic]
        try:
            described = future.result()
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise
        return TopicIdentity(str(described.topic_id), tuple(sorted(p.id for p in described.partitions)))

    async def _check_topic(self) -> None:
        """Is the topic still the one the table was read from? Asks for a rebuild when not."""
        if self._consumer is None or not self._partitions or not self._broker_up:
            return
        identity = await asyncio.get_running_loop().run_in_executor(None, self._describe)
        if self._consumer is None or not self._partitions or self._rebuild_reason is not None:
            return  # a rebuild started meanwhile
        if identity is None:
            if not self._topic_missing:
                log.warning("control_topic_missing", topic=self.kafka.topic)
            self._topic_missing = True
            return
        self._topic_missing = False
        assigned = tuple(sorted(tp.partition for tp in self._partitions))
        if self._identity is None:
            self._identity = identity
        if identity.topic_id != self._identity.topic_id:
            self._request_rebuild(RECREATED, topic_id=identity.topic_id, before=self._identity.topic_id)
        elif identity.partitions != assigned:
            self._request_rebuild(PARTITIONS_CHANGED, partitions=len(identity.partitions))
        elif self._paused:
            self._resume = True

    def _measure(self) -> None:
        """Lag per partition (cached high watermark of the fetch responses minus the position); a
        position beyond the high watermark means the partition was truncated."""
        consumer = self._consumer
        if consumer is None:
            return
        lags: dict[int, int] = {}
        for tp in self._partitions:
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            position = self._positions.get(tp.partition)
            if position is not None and position > high and not self._paused:
                self._request_rebuild(BEYOND_END, partition=tp.partition, position=position, end=high)
            lags[tp.partition] = max(high - (low if position is None else position), 0)
        self._lags = lags
        self._lag = sum(lags.values()) if lags else self._lag

    @faust.Service.task  # type: ignore[untyped-decorator]
    async def _probe(self) -> None:
        while not self.should_stop:
            await self.sleep(self.probe_interval_seconds)
            try:
                await self._check_topic()
            except Exception as exc:
                log.warning("topic_check_failed", error=type(exc).__name__, detail=str(exc))
            try:
                self._measure()
            except Exception as exc:
                log.warning("lag_check_failed", error=type(exc).__name__, detail=str(exc))
            self._refresh_status()
            self.metrics.observe(
                lags=self._lags,
                positions=self._positions,
                last=self._last,
                broker_up=self._broker_up,
                paused=self._paused,
            )

    def _problem(self) -> str | None:
        if time.monotonic() - self._broker_seen_at > self.degraded_after_seconds:
            return NO_BROKER
        if self._topic_missing:
            return TOPIC_MISSING
        if self._replay_failing:
            return REPLAY_FAILING
        return None

    def _refresh_status(self) -> None:
        problem = self._problem()
        if not self._loaded:
            status = Status.LOADING
        elif problem is not None:
            status = Status.DEGRADED
        elif self._building is not None:
            status = Status.REBUILDING
        else:
            status = Status.READY
        if problem != self._failure:
            self.metrics.set_problem(problem)
            if problem is not None:
                log.warning("replica_degraded", reason=problem)
            elif self._failure is not None:
                log.info("replica_recovered")
        self._failure = problem
        if status is not self.status:
            self.status = status
            self.metrics.set_status(status)
