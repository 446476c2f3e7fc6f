"""Usage per token (issue 12): every authenticated use at this resolver, throttled, to the usage topic.

The request path only touches a dict on the event loop thread (:meth:`UsageTracker.seen`: one tuple, one
lookup, two stores); nothing is written per request. A background task (:class:`UsageFlusher`) wakes every
``tick`` seconds and publishes, for each (token, client) key used since, **at most one record per
``interval`` seconds**: a key not published for ``interval`` goes out at the next tick (so a new client
shows up within about a second), a key published less than ``interval`` ago keeps counting until it is due.
Records are grouped per token (one ``shared.usage.TokenUsage`` per token and tick, keyed by token id).

A client is the remote address plus the User-Agent (plus, for heartbeats, the deployment id). At most
``max_keys`` keys are kept between publications; past that, further clients of a token are counted under
one ``(more clients)`` entry of that token, so a flood of addresses cannot grow memory and a token's use is
never lost. A publish the broker refuses is logged and its keys are due again at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from services.resolver.table import Match
from shared.kafka import KafkaSettings
from shared.logs import get_logger
from shared.usage import (
    MAX_ADDRESS,
    MAX_CLIENTS_PER_RECORD,
    MAX_USER_AGENT,
    TokenUsage,
    UsageClient,
    clean_text,
    encode_usage,
    encode_usage_key,
)

log = get_logger(__name__)

Key = tuple[str, str, str, str, str | None]  # token id, address, user agent, source, deployment id
OVERFLOW_USER_AGENT = "(more clients than this resolver tracks at once)"


class UsageTracker:
    """The uses seen since they were last published, per (token, client) key. Event-loop thread only."""

    __slots__ = ("_published", "dropped", "interval", "max_keys", "pending")

    def __init__(self, interval: float = 30.0, max_keys: int = 100_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        # key -> [last seen (epoch s), uses, the table's match, the token's SHA-256 digest]
        self.pending: dict[Key, list[Any]] = {}
        self._published: dict[Key, float] = {}  # key -> monotonic time of its last record
        self.dropped = 0  # uses counted under an overflow entry

    def seen(
        self,
        match: Match,
        digest: bytes,
        now: float,
        address: str,
        user_agent: str,
        source: str,
        deployment_id: str | None = None,
    ) -> None:
        """Count one use (``Resolver.authenticate`` inlines the common case: a key already pending)."""
        key = (match.token_id, address, user_agent, source, deployment_id)
        entry = self.pending.get(key)
        if entry is not None:
            entry[0] = now
            entry[1] += 1
            return
        self.add(key, match, digest, now)

    def add(self, key: Key, match: Match, digest: bytes, now: float) -> None:
        """A key not pending yet (bounded by ``max_keys``: past it, the token's overflow entry)."""
        if len(self.pending) >= self.max_keys:
            self.dropped += 1
            key = (match.token_id, "*", OVERFLOW_USER_AGENT, key[3], None)
            entry = self.pending.get(key)
            if entry is not None:
                entry[0] = now
                entry[1] += 1
                return
        self.pending[key] = [now, 1, match, digest]

    def take_due(self, monotonic: float, *, everything: bool = False) -> list[tuple[Key, list[Any]]]:
        """Remove and return the keys due for a record (not published for ``interval``; all with
        ``everything``), marking them published at ``monotonic``."""
        interval = self.interval
        published = self._published
        due = [
            (key, entry)
            for key, entry in self.pending.items()
            if everything or monotonic - published.get(key, -math.inf) >= interval
        ]
        for key, _ in due:
            del self.pending[key]
            published[key] = monotonic
        if len(published) > len(self.pending) + len(due) + 1024:
            self._forget_before(monotonic - interval)
        return due

    def put_back(self, due: Sequence[tuple[Key, list[Any]]]) -> None:
        """Keys whose record was not accepted: due again at the next tick, counts merged."""
        for key, entry in due:
            self._published.pop(key, None)
            current = self.pending.get(key)
            if current is None:
                self.pending[key] = entry
            else:
                current[0] = max(current[0], entry[0])
                current[1] += entry[1]

    def _forget_before(self, moment: float) -> None:
        self._published = {k: t for k, t in self._published.items() if t >= moment}


def build_records(
    due: Sequence[tuple[Key, list[Any]]], resolver_id: str, published_at: datetime
) -> list[TokenUsage]:
    """One ``TokenUsage`` per token (more when it has many clients), free texts cleaned of token shapes."""
    by_token: dict[str, tuple[Match, bytes, list[UsageClient]]] = {}
    for (token_id, address, user_agent, source, deployment_id), (last_seen, uses, match, digest) in due:
        client = UsageClient(
            address=clean_text(address, MAX_ADDRESS),
            user_agent=clean_text(user_agent, MAX_USER_AGENT),
            deployment_id=deployment_id,
            source=source,  # one of shared.usage.SOURCES, set by the routes
            last_seen_at=datetime.fromtimestamp(last_seen, UTC),
            uses=uses,
        )
        held = by_token.get(token_id)
        if held is None:
            by_token[token_id] = (match, digest, [client])
        else:
            if match.generation > held[0].generation:
                held = by_token[token_id] = (match, digest, held[2])
            held[2].append(client)
    records = []
    for token_id, (match, digest, clients) in by_token.items():
        for start in range(0, len(clients), MAX_CLIENTS_PER_RECORD):
            records.append(
                TokenUsage(
                    token_id=token_id,
                    fingerprint=digest.hex(),
                    environment_id=match.environment_id,
                    slot=1 if match.slot == 1 else 2,
                    generation=match.generation,
                    resolver=resolver_id,
                    published_at=published_at,
                    clients=tuple(clients[start : start + MAX_CLIENTS_PER_RECORD]),
                )
            )
    return records


class UsagePublisher(Protocol):
    def publish(self, records: Sequence[TokenUsage]) -> None:
        """Send the records and wait for the broker; raise when it does not take them."""
        ...

    def close(self) -> None: ...


class KafkaUsagePublisher:
    """Produces usage records to ``settings.usage_topic`` (created on first use, like the control topic)."""

    def __init__(self, settings: KafkaSettings, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._producer: Any = None

    def _ready(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            from shared.kafka import ensure_usage_topic

            ensure_usage_topic(self._settings, timeout=self._timeout_s)
            self._producer = Producer(
                {
                    **self._settings.librdkafka(),
                    "linger.ms": 20,
                    "enable.idempotence": True,
                    "message.timeout.ms": int(self._timeout_s * 1000),
                }
            )
        return self._producer

    def publish(self, records: Sequence[TokenUsage]) -> None:
        producer = self._ready()
        errors: list[str] = []

        def delivered(err: Any, _: Any) -> None:
            if err is not None:
                errors.append(str(err.name() if hasattr(err, "name") else err))

        topic = self._settings.usage_topic
        for record in records:
            value = encode_usage(record)
            while True:
                try:
                    producer.produce(
                        topic, key=encode_usage_key(record.token_id), value=value, on_delivery=delivered
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        remaining = producer.flush(self._timeout_s)
        if remaining or errors:
            raise RuntimeError(f"{remaining} usage records undelivered, errors: {sorted(set(errors))[:3]}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout_s)
            self._producer = None


def replica_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}"


def _in_daemon_thread(call: Callable[[], None], name: str) -> asyncio.Future[None]:
    """``call()`` started on a daemon thread of its own; the future settles with its outcome. Unlike
    ``asyncio.to_thread``, a call the broker leaves blocked (librdkafka waits out its timeout) holds
    neither the event loop's close nor the process's exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: Exception | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: Exception | None = None
        try:
            call()
        except Exception as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


class UsageFlusher:
    """The background task: every ``tick`` seconds, the due keys become records on the usage topic."""

    def __init__(
        self,
        tracker: UsageTracker,
        publisher: UsagePublisher,
        *,
        tick: float = 1.0,
        resolver_id: str | None = None,
        on_published: Callable[[int], None] = lambda _n: None,
        on_failed: Callable[[], None] = lambda: None,
        stop_wait: float = 2.0,
    ) -> None:
        self.tracker = tracker
        self.publisher = publisher
        self.tick = tick
        self.resolver_id = resolver_id or replica_id()
        self.on_published = on_published
        self.on_failed = on_failed
        self.published = 0
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._publishing: asyncio.Future[None] | None = None  # the publish the broker has not answered yet
        self._publishing_keys = 0
        self.stop_wait = stop_wait

    async def flush(self, *, everything: bool = False) -> int:
        """Publish what is due now; the number of records published."""
        due = self.tracker.take_due(time.monotonic(), everything=everything)
        if not due:
            return 0
        records = build_records(due, self.resolver_id, datetime.now(UTC))
        self._publishing = _in_daemon_thread(lambda: self.publisher.publish(records), "usage-publish")
        self._publishing_keys = len(due)
        try:
            # Shielded: a stop cancels this task, not the publish, and waits a little for its answer.
            await asyncio.shield(self._publishing)
        except Exception as exc:
            self.tracker.put_back(due)
            self._failures += 1
            self.on_failed()
            if self._failures == 1 or self._failures % 60 == 0:
                log.warning("usage_publish_failed", error=type(exc).__name__, records=len(records))
            return 0
        finally:
            self._publishing = None
        if self._failures:
            log.info("usage_publish_recovered", failures=self._failures)
            self._failures = 0
        self.published += len(records)
        self.on_published(len(records))
        return len(records)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.flush()
            except Exception as exc:  # never let the task die: usage must not stop the resolver
                log.warning("usage_flush_error", error=type(exc).__name__)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flusher")

    async def stop(self) -> None:
        """Send what is still counted, bounded: a tick's publish in flight is waited for ``stop_wait`` s;
        one the broker has not answered by then, or a broker that refused the last tick, gets one short
        last try at most. Usage is best effort: what is not sent is logged, never waited for long."""
        publishing = self._publishing
        if publishing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(publishing), timeout=self.stop_wait)
            await asyncio.sleep(0)  # the tick's own bookkeeping (counted, or put back) runs first
        unanswered = publishing is not None and not publishing.done()
        in_flight_keys = self._publishing_keys if unanswered else 0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if unanswered:
            # The broker did not answer within stop_wait: another try would only hold the shutdown up.
            log.warning(
                "usage_dropped_at_stop",
                keys=len(self.tracker.pending) + in_flight_keys,
                failures=self._failures,
                reason="broker_unanswered",
            )
            return
        # After a refused tick the broker is likely still away: one short try instead of the usual 5 s.
        bound = self.stop_wait if self._failures else 5.0
        try:
            await asyncio.wait_for(self.flush(everything=True), timeout=bound)
            lost = len(self.tracker.pending)  # a refused flush put its keys back
        except Exception:  # no answer within the bound: that flush's keys are gone too
            lost = len(self.tracker.pending) + self._publishing_keys
        if lost:
            log.warning("usage_dropped_at_stop", keys=lost, failures=self._failures, reason="broker_refused")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.shield(_in_daemon_thread(self.publisher.close, "usage-close")), timeout=bound
            )
