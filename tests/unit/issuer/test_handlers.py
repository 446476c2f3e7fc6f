"""The use cases on in-memory fakes: one transaction per command, its event and audit entry, no leaks."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from services.issuer import handlers
from services.issuer.crypto import TokenCipher
from services.issuer.ports import CommitOutcomeUnknown, T
from shared.events import ChangeType, decode_event
from tests.unit.issuer.fakes import CountingWakeup, FakeStore, FakeTx, State

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def deps() -> handlers.Deps:
    return handlers.Deps(
        store=FakeStore(),
        cipher=TokenCipher(Fernet.generate_key().decode()),
        wakeup=CountingWakeup(),
        clock=lambda: NOW,
    )


def store_of(deps: handlers.Deps) -> FakeStore:
    assert isinstance(deps.store, FakeStore)
    return deps.store


def test_create_writes_state_event_and_audit_in_one_commit(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="pat:alice")
    state = store_of(deps).state
    assert store_of(deps).commits == 1
    assert isinstance(deps.wakeup, CountingWakeup)
    assert deps.wakeup.count == 1
    (key, generation, payload) = state.outbox[0]
    event = decode_event(payload)
    assert (key, generation) == (env.id, 1)
    assert event is not None
    assert event.change.type is ChangeType.CREATED
    assert [e.action for e in state.audit] == ["create"]
    assert all("stk_" not in c for c in state.ciphertexts.values())  # encrypted at rest


def test_duplicate_and_invalid_environments(deps: handlers.Deps) -> None:
    handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    with pytest.raises(handlers.Conflict, match="already exists"):
        handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    with pytest.raises(handlers.Invalid):
        handlers.create_environment(deps, "ACME", "telemetry", "prod", actor="a")
    with pytest.raises(handlers.NotFound):
        handlers.rotate_tokens(deps, "acme-telemetry-none", actor="a")
    with pytest.raises(handlers.Invalid):
        handlers.reveal_tokens(deps, "Not An Id", actor="a")
    assert len(store_of(deps).state.outbox) == 1  # failed commands wrote nothing


def test_rotate_reveals_the_promoted_and_the_new_token(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    before = handlers.reveal_tokens(deps, env.id, actor="pat:bob")
    after = handlers.rotate_tokens(deps, env.id, actor="pat:alice")
    assert after.generation == 2
    assert after.token_1 == before.token_2
    assert after.token_2.token not in {before.token_1.token, before.token_2.token}
    assert "stk_" not in repr(after)
    actions = [(e.action, e.actor) for e in store_of(deps).state.audit]
    assert actions == [("create", "a"), ("reveal", "pat:bob"), ("rotate", "pat:alice")]


def test_idempotency_key_replays_and_refuses_a_different_body(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    first = handlers.rotate_tokens(deps, env.id, actor="a", idempotency_key="k")
    assert handlers.rotate_tokens(deps, env.id, actor="a", idempotency_key="k") == first
    assert handlers.get_environment(deps, env.id).generation == 2
    with pytest.raises(handlers.Conflict, match="Idempotency-Key"):
        handlers.rotate_tokens(deps, env.id, actor="a", idempotency_key="k", grace_seconds=5)
    with pytest.raises(handlers.Conflict):
        handlers.revoke_tokens(deps, env.id, actor="a", idempotency_key="k")
    stored = next(iter(store_of(deps).state.keys.values()))
    assert "stk_" not in stored.response_ciphertext  # the stored response is encrypted too


def test_delete_publishes_a_tombstone_and_republish_covers_everything(deps: handlers.Deps) -> None:
    prod = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    handlers.create_environment(deps, "acme", "telemetry", "dev", actor="a")
    handlers.delete_environment(deps, prod.id, actor="a")
    assert store_of(deps).state.outbox[-1] == (prod.id, 1, None)
    assert [e.id for e in handlers.list_environments(deps)] == ["acme-telemetry-dev"]
    assert handlers.republish_all(deps, actor="a") == {"environments": 1, "tombstones": 1}
    again = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    assert again.generation == 2
    assert [e.action for e in handlers.audit_log(deps, prod.id, 10)] == ["create", "delete", "create"]


def topic_after_publishing(state: State, topic: dict[str, tuple[int, bool]]) -> dict[str, tuple[int, bool]]:
    """What each key's last record is once the pending outbox rows went out on top of ``topic``."""
    last = dict(topic)
    for env_id, generation, payload in state.outbox[state.published :]:
        last[env_id] = (generation, payload is None)
    return last


def test_the_relays_republish_skips_environments_whose_newest_state_is_already_pending(
    deps: handlers.Deps,
) -> None:
    for name in ("published", "rotated", "gone", "deleting"):
        handlers.create_environment(deps, "acme", "telemetry", name, actor="a")
    handlers.delete_environment(deps, "acme-telemetry-gone", actor="a")
    state = store_of(deps).state
    state.published = len(state.outbox)  # all of that reached the topic ... which the broker then lost
    handlers.rotate_tokens(deps, "acme-telemetry-rotated", actor="a")  # pending: generation 2
    handlers.delete_environment(deps, "acme-telemetry-deleting", actor="a")  # pending: a tombstone
    handlers.create_environment(deps, "acme", "telemetry", "other", actor="a")  # pending: generation 1
    before = len(store_of(deps).state.outbox)

    queued = handlers.republish_all(deps, actor="system:relay", reconcile_broker=False, skip_pending=True)

    state = store_of(deps).state
    assert queued == {"environments": 1, "tombstones": 1}
    assert [(k, g, p is None) for k, g, p in state.outbox[before:]] == [
        ("acme-telemetry-published", 1, False),
        ("acme-telemetry-gone", 0, True),
    ]
    assert state.audit[-1].detail == {"environments": 1, "tombstones": 1, "already_pending": 3}
    # The topic (empty: it was lost) ends with every environment's newest state once the outbox drained.
    current = {e.id: (e.generation, False) for e in handlers.list_environments(deps)}
    gone = {e: (0, True) for e in ("acme-telemetry-gone", "acme-telemetry-deleting")}
    last = topic_after_publishing(state, {})
    assert {k: (g, t) for k, (g, t) in last.items() if not t} == current
    assert {k for k, (_, t) in last.items() if t} == set(gone)

    # The relay checking the topic again before anything went out (a retry) queues nothing more.
    assert handlers.republish_all(deps, actor="system:relay", skip_pending=True) == {
        "environments": 0,
        "tombstones": 0,
    }
    assert len(store_of(deps).state.outbox) == before + 2


def test_a_republish_after_the_pending_rows_went_out_queues_them_again(deps: handlers.Deps) -> None:
    handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    handlers.rotate_tokens(deps, "acme-telemetry-prod", actor="a")
    state = store_of(deps).state
    assert handlers.republish_all(deps, actor="r", skip_pending=True) == {"environments": 0, "tombstones": 0}
    store_of(deps).state.published = len(state.outbox)  # generation 2 reached the topic, then it was lost
    assert handlers.republish_all(deps, actor="r", skip_pending=True) == {"environments": 1, "tombstones": 0}
    assert store_of(deps).state.outbox[-1][:2] == ("acme-telemetry-prod", 2)


def test_an_admins_republish_queues_everything_even_when_pending(deps: handlers.Deps) -> None:
    handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    handlers.create_environment(deps, "acme", "telemetry", "dev", actor="a")
    handlers.delete_environment(deps, "acme-telemetry-dev", actor="a")
    assert handlers.republish_all(deps, actor="pat:alice") == {"environments": 1, "tombstones": 1}
    assert "already_pending" not in store_of(deps).state.audit[-1].detail


def test_idempotent_replay_of_a_rotation_with_grace_is_identical(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    first = handlers.rotate_tokens(deps, env.id, actor="a", grace_seconds=60, idempotency_key="g")
    assert len(first.grace_tokens) == 1
    assert handlers.rotate_tokens(deps, env.id, actor="a", grace_seconds=60, idempotency_key="g") == first


def test_an_expired_grace_token_is_no_longer_shown(deps: handlers.Deps) -> None:
    from datetime import timedelta

    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    handlers.rotate_tokens(deps, env.id, actor="a", grace_seconds=60)
    assert len(handlers.reveal_tokens(deps, env.id, actor="a").grace_tokens) == 1
    deps.clock = lambda: NOW + timedelta(seconds=61)
    assert handlers.reveal_tokens(deps, env.id, actor="a").grace_tokens == ()


def test_an_id_clash_between_different_names_is_explained(deps: handlers.Deps) -> None:
    handlers.create_environment(deps, "acme-eu", "telemetry", "prod", actor="a")
    with pytest.raises(handlers.Conflict, match="already used by org 'acme-eu'"):
        handlers.create_environment(deps, "acme", "eu-telemetry", "prod", actor="a")


class CuttingStore(FakeStore):
    """A store whose next commit is cut off: applied or not (``applies``), and then readable back or not
    (``readable``) — the three outcomes of a PostgreSQL connection lost during COMMIT."""

    def __init__(self, applies: bool, readable: bool) -> None:
        super().__init__()
        self.applies = applies
        self.readable = readable
        self.armed = False
        self.read_backs = 0

    @contextmanager
    def transaction(self) -> Iterator[FakeTx]:
        if not self.armed:
            with super().transaction() as tx:
                yield tx
            return
        self.armed = False
        before = copy.deepcopy(self.state)
        with super().transaction() as tx:
            yield tx
        if not self.applies:
            self.state = before
        lost = sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        raise CommitOutcomeUnknown("the connection was lost during COMMIT") from lost

    def read_back(self, read: Callable[[FakeTx], T], wait_s: float) -> T | None:
        self.read_backs += 1
        return super().read_back(read, wait_s) if self.readable else None


@pytest.mark.parametrize(
    ("applies", "readable"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_a_cut_off_commit_is_answered_for_what_the_read_back_finds(applies: bool, readable: bool) -> None:
    store = CuttingStore(applies, readable)
    deps = handlers.Deps(store=store, cipher=TokenCipher(Fernet.generate_key().decode()), clock=lambda: NOW)
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    store.armed = True
    if applies and readable:
        view = handlers.rotate_tokens(deps, env.id, actor="a")  # landed: the usual answer
        assert view.generation == 2
        assert store.state.environments[env.id].token_2.token_id == view.token_2.token_id
    elif readable:
        with pytest.raises(sa.exc.OperationalError):  # not landed: the plain "changed nothing" 503
            handlers.rotate_tokens(deps, env.id, actor="a")
    else:
        with pytest.raises(CommitOutcomeUnknown):  # nobody can say: database_commit_unknown
            handlers.rotate_tokens(deps, env.id, actor="a")
    assert store.read_backs == 1
    assert store.state.environments[env.id].generation == (2 if applies else 1)
    assert [e.action for e in store.state.audit].count("rotate") == (1 if applies else 0)
