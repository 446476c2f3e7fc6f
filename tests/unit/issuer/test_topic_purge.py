"""Purging an environment id deletes its topics ``{id}-*`` at the broker (SECURITY_REVIEW.md finding 9):
recorded with the purge, done by the relay after the commit, retried while the broker fails, audited with
the number of topics deleted; the id cannot be created again under any names until then (fakes only)."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.issuer import handlers
from services.issuer.adapters.broker import NoBrokerAccess
from services.issuer.adapters.relay import BrokerSyncFailed
from services.issuer.ports import AuditEntry, TopicPurge
from tests.unit.issuer.fakes import FakeBrokerAccess, FakeStore
from tests.unit.issuer.test_relay_broker_access import World


def purge_world(broker: FakeBrokerAccess | NoBrokerAccess | None = None) -> World:
    world = World(broker)
    world.relay._purges = handlers.StoreTopicPurges(world.store, world.clock)
    return world


def audited(store: FakeStore, action: str) -> list[AuditEntry]:
    return [e for e in store.state.audit if e.action == action]


def test_purge_deletes_exactly_the_environments_topics_after_the_commit_and_audits_the_count() -> None:
    world = purge_world()
    assert isinstance(world.broker, FakeBrokerAccess)
    env = handlers.create_environment(world.deps, "acme", "data-prod", "eu", actor="a")
    world.broker.topics |= {
        f"{env.id}-f1",
        f"{env.id}-f2",
        "acme-data-prod-eux-f1",
        "acme-data-prod",
        "other",
    }
    world.feed()
    world.relay.run_once()

    handlers.delete_environment(world.deps, env.id, actor="a", purge=True)
    assert world.broker.topics >= {f"{env.id}-f1", f"{env.id}-f2"}  # nothing at the broker inside the commit
    with pytest.raises(handlers.Conflict, match="still being deleted"):
        handlers.create_environment(world.deps, "acme-data", "prod", "eu", actor="a")
    with pytest.raises(handlers.Conflict, match="still being deleted"):  # the same names wait too
        handlers.create_environment(world.deps, "acme", "data-prod", "eu", actor="a")

    world.feed()
    world.relay.run_once()
    assert world.broker.topics == {"acme-data-prod-eux-f1", "acme-data-prod", "other"}
    # The tombstone's sync (no tokens) came before the topics went.
    calls = world.broker.calls
    assert calls.index(("sync", env.id), 2) < calls.index(("delete_topics", f"{env.id}-"))
    [entry] = audited(world.store, "purge_topics")
    assert (entry.environment_id, entry.actor, entry.detail) == (
        env.id,
        "system:relay",
        {"topics_deleted": 2},
    )
    assert world.store.state.topic_purges == {}

    other = handlers.create_environment(world.deps, "acme-data", "prod", "eu", actor="a")
    assert (other.id, other.org) == (env.id, "acme-data")
    world.relay.run_once()
    assert len(audited(world.store, "purge_topics")) == 1  # done once


def test_a_broker_outage_delays_the_purge_and_the_relay_retries_it() -> None:
    world = purge_world(FakeBrokerAccess())
    assert isinstance(world.broker, FakeBrokerAccess)
    env = handlers.create_environment(world.deps, "acme", "telemetry", "prod", actor="a")
    world.broker.topics |= {f"{env.id}-f1"}
    world.feed()
    world.relay.run_once()
    handlers.delete_environment(world.deps, env.id, actor="a", purge=True)
    world.feed()
    world.relay.run_once()  # the tombstone goes out and its sync ...
    assert world.broker.topics == set()
    # ... and a later purge of an already deleted id while the broker is down
    env2 = handlers.create_environment(world.deps, "acme", "telemetry", "dev", actor="a")
    handlers.delete_environment(world.deps, env2.id, actor="a")
    world.feed()
    world.relay.run_once()
    world.broker.topics |= {f"{env2.id}-f1"}
    handlers.delete_environment(world.deps, env2.id, actor="a", purge=True)
    world.broker.fail = 3
    for _ in range(3):
        with pytest.raises(BrokerSyncFailed, match="broker down"):
            world.relay.run_once()
        assert world.store.state.topic_purges.keys() == {env2.id}  # still pending, not lost
        with pytest.raises(handlers.Conflict, match="still being deleted"):
            handlers.create_environment(world.deps, "acme", "telemetry", "dev", actor="a")
    world.relay.run_once()
    assert world.broker.topics == set()
    assert [e.detail for e in audited(world.store, "purge_topics")] == [
        {"topics_deleted": 1},
        {"topics_deleted": 1},
    ]


def test_topics_of_a_longer_id_are_kept() -> None:
    """Ids never nest, but data from before the nesting rule may hold one: its topics stay."""
    store = FakeStore()
    purges = handlers.StoreTopicPurges(store, lambda: datetime(2026, 12, 1))
    store.state.deleted.update({"a-b-c": 1, "a-b-c-d-e": 1})  # both deleted, the longer one not purged
    with store.transaction() as tx:
        tx.request_topic_purge("a-b-c", datetime(2026, 12, 1))
    [purge] = purges.pending()
    assert purge == TopicPurge("a-b-c", datetime(2026, 12, 1), ("a-b-c-d-e-",))
    broker = FakeBrokerAccess()
    broker.topics = {"a-b-c-f1", "a-b-c-d-e-f1", "a-b-cd-f1"}
    assert broker.delete_topics("a-b-c-", purge.keep) == ["a-b-c-f1"]
    assert broker.topics == {"a-b-c-d-e-f1", "a-b-cd-f1"}


def test_a_broker_that_cannot_enforce_frees_the_id_with_its_no_op() -> None:
    world = purge_world(NoBrokerAccess())
    env = handlers.create_environment(world.deps, "acme", "data-prod", "eu", actor="a")
    handlers.delete_environment(world.deps, env.id, actor="a", purge=True)
    world.feed()
    world.relay.run_once()
    [entry] = audited(world.store, "purge_topics")
    assert entry.detail == {"topics_deleted": 0, "broker": "off"}
    assert handlers.create_environment(world.deps, "acme-data", "prod", "eu", actor="a").generation == 2
