"""The rules of safe and scheduled rotation over the in-memory fakes (the database versions run in
tests/integration/issuer/test_usage.py and test_schedule.py): the if-unused window's edges, the schedule's
times, and the progress state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet

from services.issuer import handlers, usage
from services.issuer.crypto import TokenCipher
from services.issuer.ports import RotationSchedule, TokenUsage, UsageClient
from tests.unit.issuer.fakes import CountingWakeup, FakeStore

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def deps() -> handlers.Deps:
    return handlers.Deps(
        store=FakeStore(),
        cipher=TokenCipher(Fernet.generate_key().decode()),
        wakeup=CountingWakeup(),
        clock=lambda: NOW,
    )


def _used(deps: handlers.Deps, token_id: str, at: datetime) -> None:
    assert isinstance(deps.store, FakeStore)
    client = UsageClient("10.0.0.1", "app/1", None, "lookup", at, 1)
    deps.store.state.usage[token_id] = TokenUsage(token_id, at, (client,))


@pytest.mark.parametrize(("ago", "refused"), [(899, True), (900, True), (901, False)])
def test_if_unused_refuses_a_use_within_the_window_and_passes_after_it(
    deps: handlers.Deps, ago: int, refused: bool
) -> None:
    env = handlers.create_environment(deps, "acme", "t", "prod", actor="a")
    _used(deps, env.token_1.token_id, NOW - timedelta(seconds=ago))
    if refused:
        with pytest.raises(handlers.TokenInUse) as caught:
            handlers.rotate_tokens(deps, env.id, actor="a", if_unused_seconds=900)
        assert caught.value.clients[0]["user_agent"] == "app/1"
        assert handlers.get_environment(deps, env.id).generation == 1
    else:
        assert handlers.rotate_tokens(deps, env.id, actor="a", if_unused_seconds=900).generation == 2


def test_a_use_of_token_2_does_not_hold_the_rotation_back(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "t", "prod", actor="a")
    _used(deps, env.token_2.token_id, NOW)
    assert handlers.rotate_tokens(deps, env.id, actor="a", if_unused_seconds=900).generation == 2


def test_schedule_times_never_force_at_once_when_set_late(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "t", "prod", actor="a")
    set_at = env.last_change.at + timedelta(days=100)
    schedule = RotationSchedule(env.id, 30, 900, 7, 3600, created_at=set_at)
    times = usage.schedule_times(schedule, env)
    assert times.due_at == env.last_change.at + timedelta(days=30)
    assert times.warn_at == times.due_at - timedelta(hours=1)
    assert times.forced_at == set_at + timedelta(days=7)
    assert usage.schedule_times(RotationSchedule(env.id, 30, 900, None, 0), env).forced_at is None


class _Notifier:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer

    def rotations(self, environment_id: str) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def warn(self, environment_id: str, notice: dict[str, Any]) -> int:
        raise usage.NotifierUnavailable("HTTP 404 from the notifier")

    def close(self) -> None:
        return None


def test_progress_states_and_a_failing_notifier(deps: handlers.Deps) -> None:
    env = handlers.create_environment(deps, "acme", "t", "prod", actor="a")
    # No broker enforcement, no resolvers configured: both count as applied.
    assert usage.progress(deps, env.id, None)["state"] == "resolvers_applied"
    answer = {
        "subscriptions": 2,
        "rotations": [{"generation": 1, "notified": 2, "acknowledged": 1, "pending": 0, "dead": 0}],
    }
    assert usage.progress(deps, env.id, _Notifier(answer))["state"] == "notified"
    answer["rotations"][0]["acknowledged"] = 2  # type: ignore[index]
    assert usage.progress(deps, env.id, _Notifier(answer))["state"] == "acknowledged"
    down = usage.progress(deps, env.id, _Notifier(usage.NotifierUnavailable("unreachable")))
    assert down["deployments"] is None
    assert down["deployments_reason"] == "unreachable"
    odd = usage.progress(deps, env.id, _Notifier({"subscriptions": "x"}))
    assert odd["deployments_reason"] == "unexpected answer from the notifier"


def test_a_warning_the_notifier_cannot_send_is_audited_once_and_the_rotation_still_happens(
    deps: handlers.Deps,
) -> None:
    env = handlers.create_environment(deps, "acme", "t", "prod", actor="a")
    usage.set_schedule(
        deps,
        env.id,
        {
            "every_days": 0.5,
            "unused_window_seconds": 900,
            "deadline_days": None,
            "warn_before_seconds": 3600,
            "grace_period_seconds": 0,
        },
        actor="a",
        replace_all=True,
    )
    clock = {"now": NOW + timedelta(hours=11, minutes=30)}
    deps.clock = lambda: clock["now"]
    notifier = _Notifier({})
    # Not sent: the warning stays pending (tried again on every pass), audited once.
    assert usage.run_schedules(deps, notifier) == [(env.id, "warning_pending")]
    assert usage.run_schedules(deps, notifier) == [(env.id, "warning_pending")]
    assert isinstance(deps.store, FakeStore)
    warned = [e for e in deps.store.state.audit if e.action == "rotation_warned"]
    assert len(warned) == 1
    assert warned[0].detail["webhook"] == "pending: HTTP 404 from the notifier"
    clock["now"] = NOW + timedelta(hours=12, minutes=1)
    assert usage.run_schedules(deps, notifier) == [(env.id, "rotated")]
