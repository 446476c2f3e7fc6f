"""The relay keeps the broker's users and ACLs: synced before a batch is published, nothing published while
the broker refuses, grace ends re-synced, everything reconciled at start and on republish (fakes only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet

from services.issuer import handlers
from services.issuer.adapters.broker import NoBrokerAccess
from services.issuer.adapters.relay import BrokerSyncFailed, OutboxRelay
from services.issuer.crypto import TokenCipher
from services.issuer.metrics import IssuerMetrics
from services.issuer.ports import BrokerAccess, Delivery, EnvironmentAccess, OutboxMessage
from shared.broker_access import broker_password
from tests.unit.issuer.fakes import FakeBrokerAccess, FakeStore
from tests.unit.issuer.test_relay import FakeOutbox, FakePublisher

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class World:
    """Handlers on a fake store, and a relay on a fake outbox fed from the store's outbox rows."""

    def __init__(self, broker: BrokerAccess | None = None) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.fake = FakeBrokerAccess()  # what the tests read: the relay's broker unless another is given
        self.broker: BrokerAccess = broker if broker is not None else self.fake
        self.deps = handlers.Deps(
            store=self.store,
            cipher=TokenCipher(Fernet.generate_key().decode()),
            clock=self.clock,
            broker_enforced=self.broker.enforcing,
        )
        self.outbox = FakeOutbox([])
        self.publisher = CheckingPublisher(self)
        self.relay = OutboxRelay(
            self.outbox,
            self.publisher,
            metrics=IssuerMetrics(),
            broker=self.broker,
            access=handlers.StoreAccessSource(self.store, self.deps.cipher, self.clock),
            clock=self.clock,
            backoff_max_s=0.02,
            poll_interval_s=0.02,
        )
        self.deps.broker_reconcile = self.relay.request_reconcile
        self._fed = 0

    def feed(self) -> None:
        """Move rows the handlers committed to the relay's outbox."""
        for env_id, generation, payload in self.store.state.outbox[self._fed :]:
            self._fed += 1
            self.outbox.pending.append(OutboxMessage(self._fed, env_id, generation, payload, T0))

    def passwords(self, env_id: str) -> dict[str, str]:
        """What the broker must hold for an environment: its two current tokens' broker passwords."""
        view = handlers.reveal_tokens(self.deps, env_id, actor="test")
        return {t.token_id: broker_password(t.token) for t in (view.token_1, view.token_2)}


class CheckingPublisher(FakePublisher):
    """Records, for each published message, what the broker held for its environment at that moment."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.broker_at_publish: list[set[str]] = []

    def publish(self, messages: Sequence[OutboxMessage]) -> list[Delivery]:
        broker = self.world.fake
        for m in messages:
            held = (
                broker.environments.get(m.environment_id, {}) if isinstance(broker, FakeBrokerAccess) else {}
            )
            self.broker_at_publish.append(set(held))
        return super().publish(messages)


@pytest.fixture
def world() -> World:
    return World()


def test_the_broker_is_synced_before_the_batch_is_published(world: World) -> None:
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    world.feed()
    assert handlers.propagation(world.deps, env.id).broker == "pending"
    assert world.relay.drain() == 1
    expected = world.passwords(env.id)
    assert world.fake.environments[env.id] == expected  # token ids → broker_password(token)
    assert world.publisher.broker_at_publish == [set(expected)]
    state = handlers.propagation(world.deps, env.id)
    assert (state.broker, state.broker_generation, state.generation) == ("applied", 1, 1)

    view = handlers.rotate_tokens(world.deps, env.id, actor="a")
    assert view.propagation is not None
    unpolled = {"broker": "pending", "broker_generation": 1, "resolvers": "unknown", "resolver_detail": []}
    assert view.propagation.to_json() == unpolled
    assert view.to_json()["propagation"] == unpolled
    world.feed()
    world.relay.drain()
    assert set(world.fake.environments[env.id]) == {view.token_1.token_id, view.token_2.token_id}
    assert handlers.propagation(world.deps, env.id).broker == "applied"
    assert handlers.reveal_tokens(world.deps, env.id, actor="a").propagation == handlers.Propagation(
        2, "applied", 2
    )


def test_a_refused_sync_publishes_nothing_of_the_batch_and_is_retried(world: World) -> None:
    a = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    b = handlers.create_environment(world.deps, "acme", "telemetry", "dev", actor="a")
    world.feed()
    world.fake.fail = 1
    with pytest.raises(BrokerSyncFailed, match="broker down"):
        world.relay.drain()
    assert world.publisher.sent == []
    assert [m.id for m in world.outbox.pending] == [1, 2]  # nothing of the batch left the outbox
    assert handlers.propagation(world.deps, a.id).broker == "pending"
    assert world.relay.drain() == 2
    assert set(world.fake.environments) == {a.id, b.id}
    assert world.outbox.pending == []


def test_a_running_relay_reports_the_broker_failure_in_one_line_then_recovers(world: World) -> None:
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    world.feed()
    token = handlers.reveal_tokens(world.deps, env.id, actor="a").token_1.token
    world.fake.fail = 10**6
    world.fake.error = "KafkaException: CLUSTER_AUTHORIZATION_FAILED: not allowed\nsecond line"
    world.relay.start()
    try:
        deadline = time.monotonic() + 5
        while world.relay.broker_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        error = world.relay.broker_error
        assert error is not None
        assert "CLUSTER_AUTHORIZATION_FAILED" in error
        assert "\n" not in error
        assert token not in error
        assert not world.relay.healthy
        assert world.publisher.sent == []
        assert world.fake.closed  # the admin client dropped: the next try starts from fresh metadata
        world.fake.fail = 0
        while world.publisher.sent != [1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert world.publisher.sent == [1]
        while world.relay.broker_error is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert world.relay.broker_error is None
        assert world.relay.healthy
    finally:
        world.relay.stop()
    assert world.fake.closed


def test_a_grace_token_loses_broker_access_when_its_grace_ends(world: World) -> None:
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    old_1 = env.token_1.token_id
    view = handlers.rotate_tokens(world.deps, env.id, actor="a", grace_seconds=60)
    world.feed()
    world.relay.drain()
    assert set(world.fake.environments[env.id]) == {old_1, view.token_1.token_id, view.token_2.token_id}
    world.clock.now = T0 + timedelta(seconds=59)
    assert world.relay.resync_expired() == []
    world.clock.now = T0 + timedelta(seconds=60)
    assert world.relay.resync_expired() == [env.id]
    assert set(world.fake.environments[env.id]) == {view.token_1.token_id, view.token_2.token_id}
    assert world.relay.resync_expired() == []  # remembered no more


def test_the_relay_reconciles_everything_first_and_again_on_republish(world: World) -> None:
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    world.fake.environments = {"gone-env-x": {"tid_stale": "pw"}, env.id: {"tid_other": "pw"}}
    world.feed()
    world.relay.start()
    try:
        deadline = time.monotonic() + 5
        while world.publisher.sent != [1] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        world.relay.stop()
    assert world.fake.calls[0] == ("reconcile", "*")  # before the first batch's sync and publish
    assert world.fake.environments == {env.id: world.passwords(env.id)}
    assert world.fake.users().isdisjoint({"tid_stale", "tid_other"})

    world.fake.environments["gone-env-x"] = {"tid_stale": "pw"}
    world.fake.calls.clear()
    handlers.republish_all(world.deps, actor="a")  # asks the relay to reconcile before publishing
    world.relay.reconcile_if_needed()
    assert world.fake.calls == [("reconcile", "*")]
    assert "gone-env-x" not in world.fake.environments
    world.relay.reconcile_if_needed()  # done: not again until asked
    assert world.fake.calls == [("reconcile", "*")]


def test_a_deleted_environment_is_removed_from_the_broker(world: World) -> None:
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    world.feed()
    world.relay.drain()
    handlers.delete_environment(world.deps, env.id, actor="a")
    world.feed()
    world.relay.drain()
    assert env.id not in world.fake.environments
    assert world.publisher.broker_at_publish[-1] == set()  # tombstone published after the removal


def test_without_an_enforcing_broker_nothing_is_read_and_propagation_is_off() -> None:
    world = World(NoBrokerAccess())
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    world.feed()
    assert world.relay.drain() == 1
    assert not world.relay.broker_enforced
    assert handlers.propagation(world.deps, env.id) == handlers.Propagation(1, "off", None)


def test_environment_access_never_prints_a_password() -> None:
    access = EnvironmentAccess("a-b-c", 1, (("tid_1", "bkp_secret"),))
    assert "bkp_secret" not in repr(access)
    assert "tid_1" in repr(access)


def test_creation_takes_the_environment_ids_lock(world: World) -> None:
    handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    assert world.store.state.creation_locks == 1


def test_reconcile_is_resynced_for_an_environment_changed_meanwhile(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change committed between reading the desired state and applying it is synced right after."""
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    rotated = threading.Event()
    original = world.fake.reconcile_all

    def reconcile_then_rotate(desired: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        original(desired)
        if not rotated.is_set():
            rotated.set()
            handlers.rotate_tokens(world.deps, env.id, actor="b")  # another replica, meanwhile

    monkeypatch.setattr(world.fake, "reconcile_all", reconcile_then_rotate)
    world.relay.reconcile_if_needed()
    assert world.fake.environments[env.id] == world.passwords(env.id)
    assert handlers.propagation(world.deps, env.id).broker == "applied"
