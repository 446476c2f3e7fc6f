"""The outbox relay with hand-written fakes: order per environment, acknowledgement, retries, republish."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from services.issuer.adapters.relay import OutboxRelay, acknowledged_prefix, backoff_delay
from services.issuer.metrics import IssuerMetrics
from services.issuer.ports import Delivery, OutboxMessage

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


class FakePublisher:
    """Acknowledges everything except the message ids in ``fail`` (each failing ``times`` times)."""

    def __init__(self, fail: set[int] | None = None, times: int = 1) -> None:
        self.fail = dict.fromkeys(fail or set(), times)
        self.sent: list[int] = []
        self.resets = 0

    def publish(self, messages: Sequence[OutboxMessage]) -> list[Delivery]:
        out = []
        for m in messages:
            if self.fail.get(m.id, 0) > 0:
                self.fail[m.id] -= 1
                out.append(Delivery(m.id, "broker down", datetime.now(UTC)))
            else:
                self.sent.append(m.id)
                out.append(Delivery(m.id, None, datetime.now(UTC)))
        return out

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass


class FakeTopic:
    def __init__(self, created: bool = False, empty: bool = False) -> None:
        self.created, self.empty = created, empty
        self.ensured = 0

    def ensure_topic(self) -> bool:
        self.ensured += 1
        return self.created

    def is_empty(self) -> bool:
        return self.empty


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
