"""The subscription rules that left the store's SQL: ownership, quotas, acknowledgements, replays."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from services.notifier import domain
from services.notifier.domain import (
    Action,
    DeliveryStatus,
    GenerationAhead,
    Owner,
    ReplayOutcome,
    Subscription,
    SubscriptionChange,
    SubscriptionForbidden,
    SubscriptionLimitReached,
)
from services.notifier.store import _COMPLETE_SQL
from services.notifier.tables import DELIVERIES

KEY = "mk_the-key"


def _subscription(**changes: object) -> Subscription:
    base = Subscription(
        id="sub_1",
        environment_id="acme-tele-prod",
        deployment_id="d",
        url="http://127.0.0.1:9/hook",
        action=Action.RESTART,
        secret="whsec_x",
        enabled=True,
        disabled_reason=None,
        last_notified_generation=3,
        acked_generation=3,
        created_at=1.0,
        updated_at=1.0,
        key_hash=domain.key_hash(KEY),
        owner_token_id="tid_a",
        owner_generation=3,
        ended_generation=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_only_the_management_key_proves_ownership() -> None:
    sub = _subscription()
    assert domain.require_key(sub, KEY) is sub
    for wrong in (None, "", "mk_other", KEY + " "):
        with pytest.raises(SubscriptionForbidden):
            domain.require_key(sub, wrong)
    with pytest.raises(SubscriptionForbidden):  # made before ownership existed: nobody can prove it
        domain.require_key(_subscription(key_hash=None), KEY)


def test_the_subscription_quota() -> None:
    domain.require_room(9, 10)
    domain.require_room(10_000, 0)  # no limit
    with pytest.raises(SubscriptionLimitReached):
        domain.require_room(10, 10)


def test_an_acknowledgement_may_not_run_ahead_of_the_environment() -> None:
    sub = _subscription()
    with pytest.raises(GenerationAhead) as ahead:
        domain.acknowledgement(sub, 5, current=4, owner=None)
    assert ahead.value.current == 4
    # The caller's own token may belong to a generation the consumer has not read yet.
    change = domain.acknowledgement(sub, 5, current=4, owner=Owner("tid_b", 5))
    assert change == SubscriptionChange(acked_generation=5, owner=Owner("tid_b", 5))


def test_an_acknowledgement_never_goes_back_and_revives_only_an_ended_subscription() -> None:
    assert domain.acknowledgement(_subscription(), 2, current=4, owner=None).empty
    ended = _subscription(enabled=False, ended_generation=4, disabled_reason=domain.TOKEN_ENDED)
    assert domain.acknowledgement(ended, 4, current=4, owner=Owner("tid_b", 4)).enabled is True
    assert domain.acknowledgement(ended, 4, current=4, owner=None).enabled is None
    disabled = _subscription(enabled=False, disabled_reason="the webhook answered 410 Gone")
    assert domain.acknowledgement(disabled, 4, current=4, owner=Owner("tid_b", 4)).enabled is None


def test_registering_again_and_patching() -> None:
    owner = Owner("tid_b", 7)
    again = domain.reregistration("http://h/x", Action.RELOAD, owner)
    assert (again.url, again.action, again.enabled, again.owner) == ("http://h/x", Action.RELOAD, True, owner)
    assert domain.patch(None, None, False, None).disabled_reason == domain.DISABLED_BY_API
    assert domain.patch(None, None, True, None).disabled_reason is None
    assert domain.patch(None, None, None, None).empty


def test_only_dead_or_disabled_deliveries_of_a_live_subscription_are_replayed() -> None:
    for status in (DeliveryStatus.DEAD, DeliveryStatus.DISABLED):
        assert domain.replay_outcome(status, True) is ReplayOutcome.REPLAYED
        assert domain.replay_outcome(status, False) is ReplayOutcome.SUBSCRIPTION_DISABLED
    for status in (DeliveryStatus.PENDING, DeliveryStatus.DELIVERED):
        assert domain.replay_outcome(status, True) is ReplayOutcome.NOT_REPLAYABLE


def test_new_credentials_are_random_and_never_printed() -> None:
    a, b = domain.new_credentials(), domain.new_credentials()
    assert len({a.subscription_id, b.subscription_id}) == 2
    assert a.secret != b.secret
    assert re.fullmatch(r"sub_[0-9a-f]{24}", a.subscription_id)
    assert a.secret.startswith("whsec_")
    assert a.management_key.startswith("mk_")
    assert a.secret not in repr(a)
    assert a.management_key not in repr(a)


def test_the_raw_result_statement_names_only_columns_of_the_delivery_table() -> None:
    """``_COMPLETE_SQL`` is hand-written for speed: its columns must stay those of ``DeliveryRow``."""
    assert _COMPLETE_SQL.startswith(f"UPDATE {DELIVERIES.name} SET ")
    named = re.findall(r"(\w+) = \?", _COMPLETE_SQL)
    assert named == [
        "status",
        "attempts",
        "next_attempt_at",
        "awaiting_ack_until",
        "last_status_code",
        "last_error",
        "delivered_at",
        "id",
    ]
    assert set(named) <= set(DELIVERIES.c.keys())
    assert "leased_until = 0.0" in _COMPLETE_SQL
    assert "leased_until" in DELIVERIES.c
