"""The outbox relay with hand-written fakes: order per environment, acknowledgement, retries, republish."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from services.issuer.adapters.relay import OutboxRelay, acknowledged_prefix, backoff_delay
from services.issuer.metrics import IssuerMetrics
from services.issuer.ports import Backlog, Delivery, OutboxMessage, TopicIdentity

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def message(id_: int, env: str, generation: int) -> OutboxMessage:
    return OutboxMessage(id_, env, generation, b"{}", NOW)


class FakeOutbox:
    def __init__(self, messages: list[OutboxMessage]) -> None:
        self.pending = list(messages)
        self.published: list[int] = []
        self.lock = threading.Lock()

    @contextmanager
    def claim(self, limit: int) -> Iterator[FakeOutbox]:
        with self.lock:
            self.messages = self.pending[:limit]
            yield self

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        self.published.extend(ids)
        self.pending = [m for m in self.pending if m.id not in set(ids)]

    def pending_count(self) -> int:
        return len(self.pending)

    def backlog(self) -> Backlog:
        return Backlog(len(self.pending), min((m.created_at for m in self.pending), default=None))


class FakePublisher:
    """Acknowledges everything except the message ids in ``fail`` (each failing ``times`` times); with a
    ``topic``, each acknowledged record is appended to its partition 0."""

    def __init__(self, fail: set[int] | None = None, times: int = 1, topic: FakeTopic | None = None) -> None:
        self.fail = dict.fromkeys(fail or set(), times)
        self.sent: list[int] = []
        self.resets = 0
        self.topic = topic

    def publish(self, messages: Sequence[OutboxMessage]) -> list[Delivery]:
        out = []
        for m in messages:
            if self.fail.get(m.id, 0) > 0:
                self.fail[m.id] -= 1
                out.append(Delivery(m.id, "broker down", datetime.now(UTC)))
            elif self.topic is not None:
                self.sent.append(m.id)
                offset = self.topic.ends.get(0, 0)
                self.topic.ends[0] = offset + 1
                out.append(Delivery(m.id, None, datetime.now(UTC), 0, offset))
            else:
                self.sent.append(m.id)
                out.append(Delivery(m.id, None, datetime.now(UTC)))
        return out

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass


class FakeTopic:
    """The control topic on a fake broker: an id, an end offset per partition, and ways to lose it."""

    def __init__(self, created: bool = False, empty: bool = False) -> None:
        self.created, self.empty = created, empty
        self.ensured = 0
        self.topic_id: str | None = "id-1"
        self.ends: dict[int, int] = {}
        self.list_offsets_wrong = False  # Tansu: ListOffsets answers 1 after multi-record batches
        self.down = False
        self.high_watermark_reads = 0

    def _answer(self) -> None:
        if self.down:
            raise TimeoutError("KafkaError{code=_TRANSPORT}: broker down")

    def ensure_topic(self) -> bool:
        self._answer()
        self.ensured += 1
        if self.topic_id is None:
            self.topic_id, self.ends = f"id-{self.ensured + 100}", {}
            return True
        return self.created

    def is_empty(self) -> bool:
        self._answer()
        return self.empty

    def identity(self) -> TopicIdentity | None:
        self._answer()
        return None if self.topic_id is None else TopicIdentity(self.topic_id, (0,))

    def latest_offsets(self) -> dict[int, int]:
        self._answer()
        return {p: 1 for p in self.ends} if self.list_offsets_wrong else dict(self.ends)

    def high_watermarks(self) -> dict[int, int]:
        self._answer()
        self.high_watermark_reads += 1
        return dict(self.ends)

    def recreate(self, topic_id: str) -> None:
        self.topic_id, self.ends = topic_id, {}


def test_acknowledged_prefix_stops_an_environment_at_its_first_failure() -> None:
    messages = [message(1, "a", 1), message(2, "b", 1), message(3, "a", 2), message(4, "b", 2)]
    deliveries = [
        Delivery(1, "timeout", NOW),
        Delivery(2, None, NOW),
        Delivery(3, None, NOW),  # acknowledged, but after a failure of "a": must be sent again later
        Delivery(4, None, NOW),
    ]
    assert acknowledged_prefix(messages, deliveries) == [2, 4]
    assert acknowledged_prefix(messages, deliveries[:2]) == [2]  # a missing report is a failure


def test_backoff_grows_and_is_capped() -> None:
    assert backoff_delay(1, 5.0) <= 0.1
    assert 0.4 <= backoff_delay(4, 5.0) <= 0.8
    assert all(2.5 <= backoff_delay(30, 5.0) <= 5.0 for _ in range(50))


def test_drain_publishes_in_order_and_leaves_failures_pending() -> None:
    outbox = FakeOutbox([message(1, "a", 1), message(2, "b", 1), message(3, "a", 2)])
    publisher = FakePublisher(fail={1})
    relay = OutboxRelay(outbox, publisher, metrics=IssuerMetrics(), batch_size=10)
    try:
        relay.drain()
    except RuntimeError:
        pass
    else:
        raise AssertionError("a failed delivery must raise so the relay backs off")
    assert outbox.published == [2]
    assert [m.id for m in outbox.pending] == [1, 3]
    assert relay.drain() == 2
    assert outbox.published == [2, 1, 3]
    assert outbox.pending == []


def test_running_relay_is_woken_retries_and_republishes_when_the_topic_was_lost() -> None:
    outbox = FakeOutbox([])
    publisher = FakePublisher(fail={1}, times=2)
    republished = threading.Event()
    relay = OutboxRelay(
        outbox,
        publisher,
        metrics=IssuerMetrics(),
        topic_admin=FakeTopic(created=True),
        republish=republished.set,
        backoff_max_s=0.05,
        poll_interval_s=30.0,  # only a wake-up can make it publish quickly
    )
    relay.start()
    try:
        assert republished.wait(5)
        outbox.pending.append(message(1, "a", 1))
        relay.wake()
        deadline = time.monotonic() + 5
        while outbox.published != [1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outbox.published == [1]
        assert publisher.resets == 2  # each failure started a fresh producer
        assert relay.healthy
    finally:
        relay.stop()
    assert not relay.running


class Republish:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def watched(topic: FakeTopic) -> tuple[OutboxRelay, FakeOutbox, FakePublisher, Republish]:
    """A relay (not started: passes run by the test) checking the topic on every pass."""
    outbox = FakeOutbox([message(1, "a", 1), message(2, "b", 1)])
    publisher = FakePublisher(topic=topic)
    republish = Republish()
    relay = OutboxRelay(
        outbox,
        publisher,
        metrics=IssuerMetrics(),
        topic_admin=topic,
        republish=republish,
        topic_check_interval_s=0.0,
    )
    relay.run_once()
    assert republish.calls == 0
    assert topic.ends == {0: 2}
    return relay, outbox, publisher, republish


def test_a_topic_recreated_while_the_relay_runs_is_republished() -> None:
    topic = FakeTopic()
    relay, _, publisher, republish = watched(topic)
    relay.run_once()
    assert republish.calls == 0  # the same topic, nothing lost
    topic.recreate("id-2")  # deleted and created again by someone else: empty, another id
    resets = publisher.resets
    relay.run_once()
    assert republish.calls == 1
    assert publisher.resets > resets  # a fresh producer id for the new topic
    assert relay.health().topic_lost == "recreated"
    relay.run_once()
    assert republish.calls == 1  # once per loss


def test_a_missing_topic_is_created_and_republished() -> None:
    topic = FakeTopic()
    relay, _, _, republish = watched(topic)
    topic.topic_id = None  # a broker restarted empty (Tansu)
    relay.run_once()
    assert republish.calls == 1
    assert topic.topic_id is not None
    assert relay.health().topic_lost == "missing"


def test_a_truncated_topic_is_republished_and_a_wrong_list_offsets_is_not_a_truncation() -> None:
    topic = FakeTopic()
    relay, _, _, republish = watched(topic)
    topic.ends = {0: 1}  # the same topic id, fewer records than were acknowledged to this relay
    relay.run_once()
    assert republish.calls == 1
    assert relay.health().topic_lost == "truncated"

    topic = FakeTopic()
    relay, _, _, republish = watched(topic)
    topic.list_offsets_wrong = True  # Tansu: ListOffsets says 1, the fetch responses say 2
    relay.run_once()
    relay.run_once()
    assert republish.calls == 0
    assert topic.high_watermark_reads == 1  # confirmed once, then ListOffsets is not trusted any more


def test_a_broker_that_stops_answering_turns_the_health_to_kafka_retrying() -> None:
    topic = FakeTopic()
    republish = Republish()
    relay = OutboxRelay(
        FakeOutbox([]),
        FakePublisher(topic=topic),
        metrics=IssuerMetrics(),
        topic_admin=topic,
        republish=republish,
        backoff_max_s=0.02,
        poll_interval_s=0.02,
        topic_check_interval_s=0.0,
    )
    relay.start()
    try:
        deadline = time.monotonic() + 10
        while relay.health().kafka_last_success_at is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert relay.health().kafka_error is None
        topic.down = True  # nothing to publish: only the topic check can notice
        while relay.health().kafka_error is None:
            assert time.monotonic() < deadline, "a broker that does not answer must show in the health"
            time.sleep(0.01)
        assert relay.health().kafka_error == "_TRANSPORT"
        topic.down = False
        while relay.health().kafka_error is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert relay.health().kafka_last_error == "_TRANSPORT"
    finally:
        relay.stop()


def test_a_topic_check_without_answer_does_not_hold_publishing_back() -> None:
    """A node of the cluster down (or its controller moving) makes the topic check time out while the
    partitions' leaders take records: the relay publishes, and says Kafka is failing until a check answers."""
    topic = FakeTopic()
    outbox = FakeOutbox([message(1, "a", 1)])
    publisher = FakePublisher(topic=topic)
    metrics = IssuerMetrics()
    relay = OutboxRelay(
        outbox,
        publisher,
        metrics=metrics,
        topic_admin=topic,
        republish=Republish(),
        topic_check_interval_s=0.0,
    )
    relay.run_once()
    assert outbox.published == [1]
    topic.down = True
    outbox.pending.append(message(2, "a", 2))
    relay.run_once()  # the check fails, the pass goes on
    assert outbox.published == [1, 2]
    assert publisher.resets == 0  # the producer was fine: not thrown away
    assert relay.health().kafka_error == "_TRANSPORT"
    assert relay.health().kafka_last_error == "_TRANSPORT"
    topic.down = False
    relay._next_topic_check = 0.0  # the retry of the check is due (it comes within 1 s)
    relay.run_once()
    assert relay.health().kafka_error is None


class LosingOutbox(FakeOutbox):
    """The database restarts once while the relay marks rows published: the mark is lost."""

    def __init__(self, messages: list[OutboxMessage]) -> None:
        super().__init__(messages)
        self.lose_next_mark = True

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        if self.lose_next_mark:
            self.lose_next_mark = False
            raise ConnectionError("the database restarted before the commit")
        super().mark_published(ids, at)


def test_rows_acknowledged_while_the_database_lost_their_mark_are_not_sent_twice() -> None:
    outbox = LosingOutbox([message(1, "a", 1), message(2, "a", 2)])
    publisher = FakePublisher()
    relay = OutboxRelay(outbox, publisher, metrics=IssuerMetrics())
    try:
        relay.drain()
    except ConnectionError:
        pass
    else:
        raise AssertionError("the lost mark must fail the pass")
    assert publisher.sent == [1, 2]
    assert [m.id for m in outbox.pending] == [1, 2]  # still pending in the database
    outbox.pending.append(message(3, "a", 3))
    assert relay.drain() == 1
    assert publisher.sent == [1, 2, 3]  # 1 and 2 were only marked, not sent again
    assert outbox.published == [1, 2, 3]
