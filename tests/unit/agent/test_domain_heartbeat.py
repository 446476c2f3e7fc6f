"""Heartbeats (which token the child runs with) and adopting the new Token 2, driven with plain events."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, time

import pytest

from services.agent.domain import (
    Acknowledge,
    AdoptWindow,
    AgentMachine,
    AgentStarted,
    ChildExited,
    Credential,
    Effect,
    FetchToken,
    HeartbeatAnswered,
    Log,
    Phase,
    Policy,
    ReloadChild,
    ScheduleAdoption,
    ScheduleTimer,
    SendHeartbeat,
    StartChild,
    StopChild,
    Subscribe,
    Timer,
    TimerFired,
    TokenObtained,
    WebhookReceived,
    adoption_delay,
)

ENV = "acme-telemetry-dev"
T2_GEN1 = Credential("stk_a", "tid_a", 1, ENV, 2)  # Token 2 at generation 1
T2_GEN2 = Credential("stk_b", "tid_b", 2, ENV, 2)  # the new Token 2 after the rotation
HB = Policy(heartbeat_interval=30.0, stop_timeout=7.0)


def acts(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, Log)]


def logs(effects: list[Effect]) -> list[Log]:
    return [e for e in effects if isinstance(e, Log)]


def started(policy: Policy = HB, credential: Credential = T2_GEN1) -> AgentMachine:
    machine = AgentMachine(policy=policy)
    machine.handle(AgentStarted())
    effects = acts(machine.handle(TokenObtained(credential)))
    expected: list[Effect] = [Subscribe(credential), StartChild(credential)]
    if policy.heartbeat_interval:
        expected += [ScheduleTimer(Timer.HEARTBEAT, policy.heartbeat_interval), SendHeartbeat(credential)]
    assert effects == expected
    return machine


def ok(credential: Credential, slot: int | None) -> HeartbeatAnswered:
    return HeartbeatAnswered(credential.fingerprint, "ok", credential.token_id, slot, ENV)


def reload_webhook(generation: int = 2) -> WebhookReceived:
    return WebhookReceived(f"msg_{generation}", "streaming_tokens.rotated", "reload", generation)


# --- heartbeats ----------------------------------------------------------------------------------------


def test_no_heartbeats_unless_an_interval_is_set() -> None:
    machine = started(Policy())
    assert acts(machine.handle(TimerFired(Timer.HEARTBEAT))) == []


def test_a_heartbeat_at_start_then_one_per_interval_one_at_a_time() -> None:
    machine = started()
    answer = machine.handle(ok(T2_GEN1, 2))
    assert acts(answer) == []
    assert logs(answer)[0].event == "heartbeat"
    assert logs(answer)[0].level == "info"
    assert logs(answer)[0].fields == {"environment_id": ENV, "token_id": "tid_a", "slot": 2}
    assert acts(machine.handle(TimerFired(Timer.HEARTBEAT))) == [
        ScheduleTimer(Timer.HEARTBEAT, 30.0),
        SendHeartbeat(T2_GEN1),
    ]
    # The timer fires again before the resolver answered: no second request, only the next timer.
    assert acts(machine.handle(TimerFired(Timer.HEARTBEAT))) == [ScheduleTimer(Timer.HEARTBEAT, 30.0)]
    repeated = machine.handle(ok(T2_GEN1, 2))
    assert [(e.event, e.level) for e in logs(repeated)] == [("heartbeat", "debug")]  # unchanged: quiet
    assert acts(repeated) == [SendHeartbeat(T2_GEN1)]  # the one the timer asked for meanwhile


def test_a_restart_heartbeats_the_new_token_at_once() -> None:
    machine = started(Policy(heartbeat_interval=30.0, stop_timeout=7.0))
    machine.handle(ok(T2_GEN1, 2))
    restart = WebhookReceived("msg_2", "streaming_tokens.revoked", "restart", 2)
    assert acts(machine.handle(restart)) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(T2_GEN2))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(TimerFired(Timer.HEARTBEAT))) == [ScheduleTimer(Timer.HEARTBEAT, 30.0)]
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 3.0))) == [
        StartChild(T2_GEN2),
        SendHeartbeat(T2_GEN2),  # the periodic timer is already set: not a second one
        Acknowledge(2, T2_GEN2),
    ]


def test_a_resolver_without_the_route_stops_heartbeats_after_one_line() -> None:
    machine = started()
    effects = machine.handle(HeartbeatAnswered(T2_GEN1.fingerprint, "unsupported"))
    assert [log.event for log in logs(effects)] == ["heartbeat_unsupported"]
    assert acts(machine.handle(TimerFired(Timer.HEARTBEAT))) == []
    machine.handle(WebhookReceived("msg_2", "streaming_tokens.revoked", "restart", 2))
    machine.handle(TokenObtained(T2_GEN2))
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 3.0))) == [
        StartChild(T2_GEN2),
        Acknowledge(2, T2_GEN2),
    ]


def test_refusals_and_failures_warn_once_then_quietly() -> None:
    machine = started()
    refused = HeartbeatAnswered(T2_GEN1.fingerprint, "refused")
    assert [(e.event, e.level) for e in logs(machine.handle(refused))] == [("heartbeat_refused", "warning")]
    machine.handle(TimerFired(Timer.HEARTBEAT))
    assert [(e.event, e.level) for e in logs(machine.handle(refused))] == [("heartbeat_refused", "debug")]
    failed = HeartbeatAnswered(T2_GEN1.fingerprint, "failed", message="resolver unreachable")
    for level in ("warning", "debug"):
        machine.handle(TimerFired(Timer.HEARTBEAT))
        assert [(e.event, e.level) for e in logs(machine.handle(failed))] == [("heartbeat_failed", level)]
    machine.handle(TimerFired(Timer.HEARTBEAT))
    machine.handle(ok(T2_GEN1, 2))
    machine.handle(TimerFired(Timer.HEARTBEAT))
    assert [(e.event, e.level) for e in logs(machine.handle(failed))] == [("heartbeat_failed", "warning")]


def test_heartbeat_logs_never_carry_the_token() -> None:
    machine = started()
    effects = [*machine.handle(ok(T2_GEN1, 2)), *machine.handle(TimerFired(Timer.HEARTBEAT))]
    effects += machine.handle(HeartbeatAnswered(T2_GEN1.fingerprint, "refused"))
    for log in logs(effects):
        assert T2_GEN1.token not in repr(log.fields)


# --- adoption ------------------------------------------------------------------------------------------

WINDOW = AdoptWindow(time(2, 0), time(4, 0))


def rotated_by_reload(machine: AgentMachine) -> list[Effect]:
    """The zero-downtime rotation: a reload webhook, the new Token 2 fetched, the child told by a signal."""
    machine.handle(ok(T2_GEN1, 2))
    assert acts(machine.handle(reload_webhook())) == [FetchToken()]
    return machine.handle(TokenObtained(T2_GEN2))


def test_without_adoption_the_child_keeps_token_1_and_the_agent_warns_once() -> None:
    machine = started()
    effects = rotated_by_reload(machine)
    assert acts(effects) == [ReloadChild(T2_GEN2), Acknowledge(2, T2_GEN2)]
    assert "token_not_adopted" in [log.event for log in logs(effects)]
    assert machine.child_credential == T2_GEN1  # the signal does not hand the child a token
    machine.handle(TimerFired(Timer.HEARTBEAT))
    assert acts(machine.handle(ok(T2_GEN1, 1))) == []  # Token 1 now; nothing is done about it


def test_adopt_restart_schedules_one_graceful_restart_onto_the_new_token_2() -> None:
    policy = Policy(heartbeat_interval=30.0, stop_timeout=7.0, adopt="restart", adopt_window=WINDOW)
    machine = started(policy)
    effects = rotated_by_reload(machine)
    assert acts(effects) == [
        ReloadChild(T2_GEN2),
        Acknowledge(2, T2_GEN2),
        ScheduleAdoption(0.0, WINDOW, T2_GEN2),
    ]
    # The heartbeat says Token 1 meanwhile: the adoption is already scheduled, nothing more.
    machine.handle(TimerFired(Timer.HEARTBEAT))
    assert acts(machine.handle(ok(T2_GEN1, 1))) == []
    assert acts(machine.handle(TimerFired(Timer.ADOPT))) == [StopChild(signal.SIGTERM, 7.0)]
    assert machine.phase is Phase.RESTARTING
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 100.0))) == [
        StartChild(T2_GEN2),
        SendHeartbeat(T2_GEN2),
    ]  # no acknowledgement: the rotation was acknowledged already
    assert acts(machine.handle(TimerFired(Timer.ADOPT))) == []  # a stray timer: nothing


def test_a_heartbeat_on_token_1_makes_the_agent_look_for_the_new_token_2() -> None:
    # The reload webhook never came: the resolver's answer (slot 1) is how the agent learns of the rotation.
    machine = started(Policy(heartbeat_interval=30.0, adopt="restart", adopt_after=600.0))
    machine.handle(ok(T2_GEN1, 2))
    machine.handle(TimerFired(Timer.HEARTBEAT))
    effects = machine.handle(ok(T2_GEN1, 1))
    assert acts(effects) == [FetchToken()]
    assert "child_on_token_1" in [log.event for log in logs(effects)]
    assert acts(machine.handle(TokenObtained(T2_GEN2))) == [ScheduleAdoption(600.0, None, T2_GEN2)]


def test_a_crash_before_the_window_adopts_on_its_own_and_the_timer_then_does_nothing() -> None:
    policy = Policy(heartbeat_interval=30.0, adopt="restart", adopt_window=WINDOW, backoff_initial=1.0)
    machine = started(policy)
    rotated_by_reload(machine)
    assert acts(machine.handle(ChildExited(1, 50.0)))[-1] == ScheduleTimer(Timer.RESTART_CHILD, 1.0)
    machine.handle(TimerFired(Timer.RESTART_CHILD))
    assert acts(machine.handle(TokenObtained(T2_GEN2))) == [StartChild(T2_GEN2), SendHeartbeat(T2_GEN2)]
    assert acts(machine.handle(TimerFired(Timer.ADOPT))) == []


def test_an_adoption_due_while_a_rotation_is_applied_looks_again_shortly() -> None:
    policy = Policy(heartbeat_interval=30.0, adopt="restart", adopt_window=WINDOW, backoff_initial=0.5)
    machine = started(policy)
    rotated_by_reload(machine)
    assert acts(machine.handle(reload_webhook(3))) == [FetchToken()]
    assert acts(machine.handle(TimerFired(Timer.ADOPT))) == [ScheduleAdoption(1.0, WINDOW, T2_GEN2)]
    t2_gen3 = Credential("stk_c", "tid_c", 3, ENV, 2)
    assert acts(machine.handle(TokenObtained(t2_gen3))) == [ReloadChild(t2_gen3), Acknowledge(3, t2_gen3)]
    assert acts(machine.handle(TimerFired(Timer.ADOPT))) == [StopChild(signal.SIGTERM, 10.0)]
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 1.0)))[0] == StartChild(t2_gen3)


def test_adopt_reload_hands_the_child_the_new_token_2_with_the_rotation() -> None:
    machine = started(Policy(heartbeat_interval=30.0, adopt="reload"))
    effects = rotated_by_reload(machine)
    assert acts(effects) == [ReloadChild(T2_GEN2), SendHeartbeat(T2_GEN2), Acknowledge(2, T2_GEN2)]
    assert machine.child_credential == T2_GEN2
    assert machine.phase is Phase.RUNNING


def test_adopt_reload_after_a_missed_webhook() -> None:
    machine = started(Policy(heartbeat_interval=30.0, adopt="reload"))
    machine.handle(ok(T2_GEN1, 2))
    machine.handle(TimerFired(Timer.HEARTBEAT))
    assert acts(machine.handle(ok(T2_GEN1, 1))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(T2_GEN2))) == [ReloadChild(T2_GEN2), SendHeartbeat(T2_GEN2)]


def test_slot_1_deployments_never_adopt() -> None:
    token_1 = Credential("stk_a", "tid_a", 1, ENV, 1)
    machine = started(Policy(heartbeat_interval=30.0, adopt="restart"), token_1)
    assert acts(machine.handle(ok(token_1, 1))) == []


# --- the window ----------------------------------------------------------------------------------------


def at(hour: int, minute: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "after", "window", "expected"),
    [
        (at(10), 0.0, None, 0.0),
        (at(10), 90.0, None, 90.0),
        (at(3), 0.0, WINDOW, 0.0),  # inside: now
        (at(1, 30), 0.0, WINDOW, 1800.0),  # before: at its start
        (at(4), 0.0, WINDOW, 22 * 3600.0),  # its end is outside: tomorrow
        (at(3, 50), 1200.0, WINDOW, 22 * 3600.0 + 10 * 60),  # after pushes it past the end
        (at(23), 0.0, AdoptWindow(time(22, 0), time(2, 0)), 0.0),  # wraps midnight
        (at(1), 0.0, AdoptWindow(time(22, 0), time(2, 0)), 0.0),
        (at(12), 0.0, AdoptWindow(time(22, 0), time(2, 0)), 10 * 3600.0),
    ],
)
def test_adoption_delay(now: datetime, after: float, window: AdoptWindow | None, expected: float) -> None:
    assert adoption_delay(now, after, window) == expected


def test_an_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        AdoptWindow(time(2, 0), time(2, 0))


def test_a_webhook_after_the_heartbeat_found_the_new_token_2_does_not_warn_and_acknowledges() -> None:
    # The resolver applied the rotation before the notifier's webhook arrived: the heartbeat said Token 1,
    # the agent fetched the new Token 2 and scheduled the adoption; the webhook then finds it held already.
    machine = started(Policy(heartbeat_interval=30.0, adopt="restart", adopt_window=WINDOW))
    machine.handle(ok(T2_GEN1, 2))
    machine.handle(TimerFired(Timer.HEARTBEAT))
    assert acts(machine.handle(ok(T2_GEN1, 1))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(T2_GEN2))) == [ScheduleAdoption(0.0, WINDOW, T2_GEN2)]
    assert acts(machine.handle(reload_webhook())) == [FetchToken()]
    effects = machine.handle(TokenObtained(T2_GEN2))
    assert acts(effects) == [Acknowledge(2, T2_GEN2)]
    assert "token_unchanged" not in [log.event for log in logs(effects)]
    assert acts(machine.handle(TimerFired(Timer.ADOPT))) == [StopChild(signal.SIGTERM, 10.0)]
