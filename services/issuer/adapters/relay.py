"""The outbox relay: publishes committed outbox rows to Kafka, in order per environment, right after commit.

A command wakes the relay (a ``threading.Event``) as soon as its transaction commits, so the happy path has
no polling delay; a slow safety-net scan picks up rows committed by other replicas. A row is marked published
only after the broker acknowledged it; when a record of an environment fails, the later records of that
environment in the batch stay pending too, so the environment's newest state is always the last one on the
topic. While Kafka is unreachable the relay retries with capped exponential back-off and jitter. When it
(re)connects and finds the topic missing or empty (a broker that lost its data), it queues a republish of
every environment (the republish skips an environment whose newest state is already pending in the
outbox: that row puts it on the topic anyway, and a second record would only repeat it).

While it runs, every ``topic_check_interval_s`` the relay also asks the broker whether the topic is still
the one it published to: missing, another topic id (deleted and created again), or an end offset below
what the broker acknowledged to this relay (truncated) all queue the same republish and a reconcile of
the broker's users and ACLs, without a restart. That check is also the Kafka health signal while nothing
is published: :meth:`OutboxRelay.health` says what the relay can do now (Kafka, database, broker access,
backlog).

Broker access (``ports.BrokerAccess``): before a batch is published, each of its environments' current
valid tokens are made the broker's users and ACLs for that environment. When that fails nothing of the batch
is published (the rows stay pending) and the relay backs off and retries as for a Kafka failure. On its
first pass, and when asked (``admin republish``), the relay reconciles the whole broker. It remembers the
earliest end of a grace period among the environments it synced and syncs those again when it is due.

Purges (``ports.TopicPurgeSource``): after the outbox is drained (so a purged environment's users and ACLs
are already gone), the relay deletes the topics ``{id}-*`` of every purged id still pending, through the
broker port (a no-op on a broker that cannot enforce), and records each done with an audit entry. When the
broker refuses or is unreachable the purge stays pending and the relay retries with the same back-off; the
id cannot be created again meanwhile.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from services.issuer.adapters.db import database_problem
from services.issuer.metrics import IssuerMetrics
from services.issuer.ports import (
    AccessSource,
    Backlog,
    BrokerAccess,
    Delivery,
    EnvironmentAccess,
    OutboxMessage,
    OutboxStore,
    Publisher,
    TopicAdmin,
    TopicIdentity,
    TopicPurgeSource,
)
from shared.backoff import equal_jitter, exponential
from shared.logs import get_logger

log = get_logger(__name__)

PublishObserver = Callable[[Sequence[OutboxMessage], Sequence[Delivery]], None]


class PublishFailed(RuntimeError):
    pass


class BrokerSyncFailed(RuntimeError):
    """The broker's users and ACLs could not be made to match (the message is one line, no secret)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:200]


_ERROR_CODE = re.compile(
    r"(?<![A-Za-z0-9_])(_?[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|_[A-Z][A-Z0-9]+)(?![A-Za-z0-9_])"
)


def error_code(text: str) -> str | None:
    """The first Kafka error name in an error text (``CLUSTER_AUTHORIZATION_FAILED``, ``_TRANSPORT``,
    ``_MSG_TIMED_OUT``): a short, machine-readable reason without addresses or principals."""
    found = _ERROR_CODE.search(text)
    return found.group(1) if found else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RelayHealth:
    """What the relay can do now, for readiness and the gauges (error names only, never texts)."""

    kafka_error: str | None  # the Kafka error name while publishing or checking the topic fails
    kafka_last_error: str | None  # the last Kafka error name seen (kept after recovery)
    kafka_last_success_at: datetime | None  # last acknowledgement or answered topic check
    database_error: str | None  # database_unavailable, database_locked, database_full
    broker_error: str | None  # the broker-access error name while syncing users/ACLs fails
    pending: int | None  # outbox rows not yet acknowledged (None: not read yet)
    oldest_pending_at: datetime | None
    topic_lost: str | None  # why the last republish of the topic was queued (missing, recreated, ...)


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
        topic_check_interval_s: float = 5.0,
        observer: PublishObserver | None = None,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval_s: float = 3600.0,
        broker: BrokerAccess | None = None,
        access: AccessSource | None = None,
        purges: TopicPurgeSource | None = None,
        clock: Callable[[], datetime] = _utcnow,
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
        self._broker = broker if broker is not None and broker.enforcing and access is not None else None
        self._access = access
        self._purges = purges
        self._purger = broker  # deletes purged ids' topics (its no-op when the broker cannot enforce)
        self._clock = clock
        self._reconcile_needed = self._broker is not None
        self._expiry: dict[str, datetime] = {}  # environment → earliest end of a grace period synced
        self.broker_error: str | None = None  # the last broker-access failure, while it lasts
        self.error_code: str | None = None  # the Kafka error name of the last failure (for readiness)
        self._topic_check_interval_s = topic_check_interval_s
        self._next_topic_check = 0.0
        self._identity: TopicIdentity | None = None  # the topic this relay publishes to
        self._published_end: dict[int, int] = {}  # partition → offset after the last record acked here
        self._list_offsets_trusted = True  # False once ListOffsets was seen below the acked end (Tansu)
        self._lost_reason: str | None = None  # a loss found by the watch, for the next check_topic
        self.kafka_error: str | None = None
        self._watch_error: str | None = None  # the last topic check's error, until one answers
        self.kafka_last_error: str | None = None
        self.kafka_ok_at: datetime | None = None
        self.database_error: str | None = None
        self.topic_lost: str | None = None
        self._backlog: Backlog | None = None
        self._acked_unmarked: set[int] = set()  # acknowledged by Kafka, the database's mark not committed
        self._metrics.kafka_up.set(1)
        self._metrics.database_up.set(1)
        self._metrics.broker_access_up.set(1)
        self._metrics.oldest_pending_age.set_function(self._oldest_pending_age)

    @property
    def broker_enforced(self) -> bool:
        return self._broker is not None

    def request_reconcile(self) -> None:
        """Reconcile every environment's users and ACLs on the broker before the next publish."""
        if self._broker is not None:
            self._reconcile_needed = True
            self._wake.set()

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
        self._forget_topic_admin_client()
        if self._broker is not None:
            self._broker.close()

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
                self.run_once()
            except Exception as exc:
                delay = self._failed(exc)
                self._stopping.wait(delay)
                continue
            self._housekeep()
            self._wake.wait(self._poll_interval_s)

    def run_once(self) -> None:
        """One pass: the topic (checked when due), the broker's users and ACLs, the outbox, grace ends.
        Raises on a failure (the loop backs off); on success clears the failure state."""
        self.check_topic()
        self.watch_topic()
        self.reconcile_if_needed()
        self.drain()
        self.resync_expired()
        self.purge_topics()
        if self.failures:
            log.info("outbox_relay_recovered", after_attempts=self.failures)
        self.failures = 0
        self.last_error = None
        self.broker_error = None
        self.error_code = None
        self.kafka_error = self._watch_error  # published, but the topic's broker check does not answer
        self.database_error = None
        self._metrics.kafka_up.set(0 if self._watch_error else 1)
        self._metrics.database_up.set(1)
        self._metrics.broker_access_up.set(1)

    def _failed(self, exc: Exception) -> float:
        """Record a failed pass (what failed: the database, broker access or Kafka); the back-off delay."""
        self.failures += 1
        self.last_error = type(exc).__name__
        problem = database_problem(exc)
        self.broker_error = None
        if problem is not None:
            self.database_error = problem.code
            self.error_code = problem.code
            self._metrics.database_up.set(0)
        else:
            self.error_code = error_code(str(exc)) or type(exc).__name__
            if isinstance(exc, BrokerSyncFailed):
                self.broker_error = str(exc)
                self._metrics.broker_access_up.set(0)
                if self._broker is not None:
                    # A fresh admin client next time: fresh metadata, so its calls go to a live node (Kafka
                    # names any live broker its "controller"; a client keeps waiting on a killed one).
                    self._broker.close()
            else:
                self.kafka_error = self.kafka_last_error = self.error_code
                self._metrics.kafka_up.set(0)
                self._publisher.reset()
                self._forget_topic_admin_client()
                self._topic_checked = self._topic_admin is None
        self._metrics.publish_failures.inc()
        self._update_depth()
        delay = backoff_delay(self.failures, self._backoff_max_s)
        log.warning(
            "outbox_relay_retry",
            attempt=self.failures,
            error=type(exc).__name__,
            detail=str(exc)[:200],
            retry_in_s=round(delay, 3),
        )
        return delay

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
        """Make sure the topic exists; when it was missing, is empty, or is not the topic this relay
        published to (another id, or a loss the watch found), queue a republish of every state and a
        reconcile of the broker's users and ACLs."""
        if self._topic_checked or self._topic_admin is None:
            return
        created = self._topic_admin.ensure_topic()
        identity = self._topic_admin.identity()
        self._kafka_answered()
        reason = self._lost_reason or ("missing" if created else None)
        known = self._identity
        if reason is None and known and identity and identity.topic_id != known.topic_id:
            reason = "recreated"
        if reason is None and self._topic_admin.is_empty():
            reason = "empty"
        if identity is None or self._identity is None or identity.topic_id != self._identity.topic_id:
            self._published_end = {}
        self._identity = identity
        if reason is not None:
            self._published_end = {}
            self.topic_lost = reason
            self._metrics.topic_republishes.labels(reason).inc()
            if self._republish is not None:
                log.info("topic_empty_republishing", created=created, reason=reason)
                self._republish()
                self.request_reconcile()  # a lost topic may come with a lost broker: users and ACLs too
        self._lost_reason = None
        self._topic_checked = True
        self._next_topic_check = time.monotonic() + self._topic_check_interval_s

    def watch_topic(self) -> None:
        """When due, ask the broker whether the topic is still the one this relay published to; when not
        (missing, another id, an end offset below what was acknowledged here), run :meth:`check_topic`
        again at once, which republishes. Raises when the broker does not answer (Kafka is down)."""
        if self._topic_admin is None or not self._topic_checked:
            return
        if time.monotonic() < self._next_topic_check:
            return
        self._next_topic_check = time.monotonic() + self._topic_check_interval_s
        try:
            identity = self._topic_admin.identity()
            self._kafka_answered()
            reason: str | None = None
            if identity is None:
                reason = "missing"
            elif self._identity is not None and identity.topic_id != self._identity.topic_id:
                reason = "recreated"
            elif self._published_end:
                reason = self._truncated()
        except Exception as exc:
            if database_problem(exc) is not None:
                raise
            self._watch_failed(exc)
            return
        self._watch_error = None
        if self._identity is None:
            self._identity = identity
        if reason is None:
            return
        log.warning(
            "control_topic_lost",
            reason=reason,
            topic_id=identity.topic_id if identity else None,
            before=self._identity.topic_id if self._identity else None,
        )
        self._publisher.reset()  # a fresh producer id: the old one's sequence numbers mean nothing there
        self._lost_reason = reason
        self._topic_checked = False
        self.check_topic()

    def _watch_failed(self, exc: Exception) -> None:
        """The topic check got no answer (a node of the cluster down, its controller moving): a check, not
        a step of publishing, so the pass goes on (records go to the partitions' leaders, which the
        producer finds by itself) and the health says Kafka is failing until a check answers again. The
        next check comes soon, with a fresh admin client (fresh metadata: a live node to ask)."""
        code = error_code(str(exc)) or type(exc).__name__
        self._watch_error = self.kafka_error = self.kafka_last_error = code
        self._metrics.kafka_up.set(0)
        self._forget_topic_admin_client()
        self._next_topic_check = time.monotonic() + min(self._topic_check_interval_s, 1.0)
        log.warning("control_topic_check_failed", error=type(exc).__name__, detail=str(exc)[:200])

    def _truncated(self) -> str | None:
        """ "truncated" when some partition ends below the offset this relay had acknowledged there."""
        assert self._topic_admin is not None
        if self._list_offsets_trusted:
            latest = self._topic_admin.latest_offsets()
            if all(latest.get(p, 0) >= end for p, end in self._published_end.items()):
                return None
        highs = self._topic_admin.high_watermarks()  # fetch responses: right on every broker
        ends = self._published_end.items()
        dropped = {p: (highs.get(p, 0), end) for p, end in ends if highs.get(p, 0) < end}
        if dropped:
            log.warning("control_topic_truncated", partitions={p: list(v) for p, v in dropped.items()})
            return "truncated"
        if self._list_offsets_trusted:
            # ListOffsets answered below the acknowledged end while fetches say the records are there:
            # this broker's ListOffsets is wrong (Tansu, BROKER.md); stop asking it. Tansu keeps data in
            # memory only, so it loses a topic whole (a new id), never a part of one.
            log.info("list_offsets_unreliable", detail="truncation checks off; recreation checks go on")
            self._list_offsets_trusted = False
            self._published_end = {}
        return None

    def _forget_topic_admin_client(self) -> None:
        reset = getattr(self._topic_admin, "reset", None)  # KafkaTopicAdmin keeps an AdminClient
        if callable(reset):
            reset()

    def _kafka_answered(self) -> None:
        self.kafka_ok_at = self._clock()

    def health(self) -> RelayHealth:
        backlog = self._backlog
        return RelayHealth(
            kafka_error=self.kafka_error,
            kafka_last_error=self.kafka_last_error,
            kafka_last_success_at=self.kafka_ok_at,
            database_error=self.database_error,
            broker_error=self.error_code if self.broker_error is not None else None,
            pending=backlog.pending if backlog is not None else None,
            oldest_pending_at=backlog.oldest_created_at if backlog is not None else None,
            topic_lost=self.topic_lost,
        )

    def _oldest_pending_age(self) -> float:
        backlog = self._backlog
        if backlog is None or backlog.oldest_created_at is None:
            return 0.0
        return max((self._clock() - backlog.oldest_created_at).total_seconds(), 0.0)

    def drain(self) -> int:
        """Publish pending rows until none is left; the number published. Raises on a failed delivery."""
        total = 0
        while not self._stopping.is_set():
            with self._store.claim(self._batch_size) as claim:
                if not claim.messages:
                    break
                # Rows the broker acknowledged while the database lost the mark (it restarted before the
                # commit): record them now instead of sending them again (a duplicate on the topic).
                marked = [m.id for m in claim.messages if m.id in self._acked_unmarked]
                messages = [m for m in claim.messages if m.id not in self._acked_unmarked]
                deliveries: list[Delivery] = []
                if messages:
                    self._sync_environments([m.environment_id for m in messages])
                    deliveries = self._publisher.publish(messages)
                ok = acknowledged_prefix(messages, deliveries)
                self._acked_unmarked.update(ok)
                claim.mark_published([*marked, *ok], datetime.now(UTC))
            self._acked_unmarked.difference_update([*marked, *ok])
            self._record(messages, deliveries, ok)
            self._note_offsets(deliveries, ok)
            total += len(ok)
            if len(ok) < len(messages):
                failed = next(d for d in deliveries if d.error is not None)
                raise PublishFailed(
                    f"{len(messages) - len(ok)} of {len(messages)} records not acknowledged: {failed.error}"
                )
        self._update_depth()
        return total

    # -- broker access -------------------------------------------------------------------------------------

    def _sync_environments(self, env_ids: Iterable[str], *, verify: bool = False) -> None:
        """Make the broker match the current tokens of ``env_ids``; raises :class:`BrokerSyncFailed`.

        ``verify``: read the environments again afterwards and sync those that changed meanwhile (a sync
        outside the outbox claim may race with another replica's change of the same environment)."""
        if self._broker is None or self._access is None:
            return
        pending = list(dict.fromkeys(env_ids))
        for _ in range(3 if verify else 1):
            if not pending:
                return
            try:
                current = self._access.current(pending)
                for access in current.values():
                    self._broker.sync_environment(access.environment_id, access.tokens)
                self._access.record_applied(list(current.values()))
                if verify:
                    again = self._access.current(pending)
                    pending = [e for e in pending if again[e].generation != current[e].generation]
                else:
                    pending = []
            except Exception as exc:
                if database_problem(exc) is not None:
                    raise
                raise BrokerSyncFailed(_one_line(exc)) from None
            self._remember_expiry(current.values())

    def _remember_expiry(self, synced: Iterable[EnvironmentAccess]) -> None:
        for access in synced:
            if access.expires_at is None:
                self._expiry.pop(access.environment_id, None)
            else:
                self._expiry[access.environment_id] = access.expires_at

    def reconcile_if_needed(self) -> None:
        """Reconcile every environment on the broker when due (first pass, or asked to)."""
        if self._broker is None or self._access is None or not self._reconcile_needed:
            return
        try:
            desired = self._access.everything()
            self._broker.reconcile_all({e: a.tokens for e, a in desired.items()})
            self._access.record_applied(list(desired.values()))
            after = self._access.everything()
        except Exception as exc:
            if database_problem(exc) is not None:
                raise
            raise BrokerSyncFailed(_one_line(exc)) from None
        self._expiry = {}
        self._remember_expiry(desired.values())
        changed = [e for e in after if e not in desired or after[e].generation != desired[e].generation]
        changed += [e for e in desired if e not in after]
        self._sync_environments(changed, verify=True)
        self._reconcile_needed = False
        log.info("broker_reconcile_done", environments=len(desired), resynced=len(changed))

    def resync_expired(self) -> list[str]:
        """Sync again the environments whose earliest grace period has ended; their ids."""
        now = self._clock()
        due = sorted(e for e, at in self._expiry.items() if at <= now)
        if due:
            self._sync_environments(due, verify=True)
            log.info("broker_grace_expired_resynced", environments=due)
        return due

    def purge_topics(self) -> int:
        """Delete the topics of every purged id still pending and record each done; how many purges were
        done. Raises :class:`BrokerSyncFailed` when the broker refuses (the rest stay pending)."""
        if self._purges is None:
            return 0
        pending = self._purges.pending()
        for purge in pending:
            prefix = f"{purge.environment_id}-"
            try:
                deleted = self._purger.delete_topics(prefix, purge.keep) if self._purger is not None else []
            except Exception as exc:
                if database_problem(exc) is not None:
                    raise
                raise BrokerSyncFailed(_one_line(exc)) from None
            enforced = self._purger is not None and self._purger.enforcing
            self._purges.done(purge, deleted, enforced=enforced)
        return len(pending)

    def _note_offsets(self, deliveries: Sequence[Delivery], ok: list[int]) -> None:
        published = set(ok)
        acked = [d for d in deliveries if d.message_id in published]
        for delivery in acked:
            if delivery.partition is not None and delivery.offset is not None and delivery.offset >= 0:
                end = self._published_end.get(delivery.partition, 0)
                self._published_end[delivery.partition] = max(end, delivery.offset + 1)
        if acked:
            at = max(d.acknowledged_at for d in acked)
            self.kafka_ok_at = at
            self._metrics.last_publish_success.set(at.timestamp())

    def _update_depth(self) -> None:
        try:
            self._backlog = self._store.backlog()
            self._metrics.outbox_depth.set(self._backlog.pending)
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
