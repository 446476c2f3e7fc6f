"""The agent's state machine, driven with plain events."""

from __future__ import annotations

import signal

import pytest

from services.agent.domain import (
    Acknowledge,
    Action,
    AgentMachine,
    AgentStarted,
    ChildExited,
    ChildStartFailed,
    Credential,
    Effect,
    Exit,
    FetchToken,
    KillChild,
    Log,
    Phase,
    Policy,
    ReloadChild,
    ScheduleTimer,
    SignalChild,
    SignalReceived,
    StartChild,
    StopChild,
    StopRequested,
    Subscribe,
    Timer,
    TimerFired,
    TokenFailed,
    TokenObtained,
    Unsubscribe,
    WebhookReceived,
    backoff_delay,
    exit_status,
)

OLD = Credential("stk_old", "tid_old", 1, "acme-telemetry-dev", 1)
NEW = Credential("stk_new", "tid_new", 2, "acme-telemetry-dev", 1)
NEWER = Credential("stk_newer", "tid_newer", 3, "acme-telemetry-dev", 1)


def acts(effects: list[Effect]) -> list[Effect]:
    """The effects without log lines."""
    return [e for e in effects if not isinstance(e, Log)]


def running(policy: Policy | None = None) -> AgentMachine:
    machine = AgentMachine(policy=policy or Policy(stop_timeout=7.0))
    assert acts(machine.handle(AgentStarted())) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(OLD))) == [Subscribe(OLD), StartChild(OLD)]
    assert machine.phase is Phase.RUNNING
    return machine


def phase_of(machine: AgentMachine) -> Phase:
    """``machine.phase`` read afresh: mypy keeps an asserted ``machine.phase`` narrowed past ``handle()``."""
    return machine.phase


def rotated(generation: int, action: Action = "restart", webhook_id: str | None = None) -> WebhookReceived:
    return WebhookReceived(webhook_id or f"msg_{generation}", "streaming_tokens.rotated", action, generation)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, 0.5, 4.0) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(10_000, 1.0, 30.0) == 30.0


def test_exit_status_follows_the_shell_convention() -> None:
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 143


def test_restart_webhook_fetches_then_stops_then_starts_with_the_new_token_and_acks() -> None:
    machine = running()
    assert acts(machine.handle(rotated(2))) == [FetchToken()]
    assert machine.phase is Phase.RUNNING  # the child keeps running while the new token is fetched
    assert acts(machine.handle(TokenObtained(NEW))) == [StopChild(signal.SIGTERM, 7.0)]
    assert phase_of(machine) is Phase.RESTARTING
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 30.0))) == [StartChild(NEW), Acknowledge(2, NEW)]
    assert phase_of(machine) is Phase.RUNNING
    assert machine.applied_generation == 2


def test_reload_webhook_reloads_without_stopping() -> None:
    machine = running()
    assert acts(machine.handle(rotated(2, "reload"))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(NEW))) == [ReloadChild(NEW), Acknowledge(2, NEW)]
    assert machine.phase is Phase.RUNNING


def test_revocation_restarts_even_a_reload_deployment() -> None:
    machine = running()
    revoked = WebhookReceived("msg_r", "streaming_tokens.revoked", "reload", 2)
    assert acts(machine.handle(revoked)) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(NEW))) == [StopChild(signal.SIGTERM, 7.0)]


def test_duplicate_webhook_id_is_applied_once() -> None:
    machine = running()
    machine.handle(rotated(2, webhook_id="msg_same"))
    assert acts(machine.handle(rotated(2, webhook_id="msg_same"))) == []
    assert any(
        isinstance(e, Log) and e.event == "webhook_duplicate"
        for e in machine.handle(rotated(2, webhook_id="msg_same"))
    )


def test_generation_already_applied_is_acknowledged_without_restart() -> None:
    machine = running()
    assert acts(machine.handle(rotated(1, webhook_id="late"))) == [Acknowledge(1, OLD)]
    assert machine.phase is Phase.RUNNING


def test_a_token_older_than_the_rotation_is_fetched_again() -> None:
    machine = running()
    machine.handle(rotated(3))
    assert acts(machine.handle(TokenObtained(NEW))) == [ScheduleTimer(Timer.RETRY_FETCH, 0.5)]
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(NEWER))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(ChildExited(0, 1.0))) == [StartChild(NEWER), Acknowledge(3, NEWER)]


def test_second_rotation_while_fetching_is_merged_into_one_restart() -> None:
    machine = running()
    assert acts(machine.handle(rotated(2, "reload"))) == [FetchToken()]
    assert acts(machine.handle(rotated(3, "restart"))) == []  # the fetch under way will serve both
    assert acts(machine.handle(TokenObtained(NEWER))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(ChildExited(0, 1.0))) == [StartChild(NEWER), Acknowledge(3, NEWER)]


def test_crash_restarts_with_capped_exponential_backoff() -> None:
    machine = running(Policy(backoff_initial=1.0, backoff_max=4.0))
    delays = []
    for _ in range(5):
        effects = acts(machine.handle(ChildExited(1, 0.1)))
        assert machine.phase is Phase.BACKING_OFF
        (timer,) = effects
        assert isinstance(timer, ScheduleTimer)
        assert timer.timer is Timer.RESTART_CHILD
        delays.append(timer.delay)
        assert acts(machine.handle(TimerFired(Timer.RESTART_CHILD))) == [FetchToken()]
        assert acts(machine.handle(TokenObtained(OLD))) == [StartChild(OLD)]
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_child_that_ran_long_enough_resets_the_backoff() -> None:
    machine = running(Policy(backoff_initial=1.0, stable_after=10.0))
    for _ in range(3):
        machine.handle(ChildExited(1, 0.1))
        machine.handle(TimerFired(Timer.RESTART_CHILD))
        machine.handle(TokenObtained(OLD))
    assert acts(machine.handle(ChildExited(1, 60.0))) == [ScheduleTimer(Timer.RESTART_CHILD, 1.0)]


def test_crash_restart_uses_a_rotated_token_if_the_issuer_has_one() -> None:
    machine = running()
    machine.handle(ChildExited(1, 0.1))
    machine.handle(TimerFired(Timer.RESTART_CHILD))
    assert acts(machine.handle(TokenObtained(NEW))) == [StartChild(NEW)]


def test_crash_restart_keeps_the_old_token_when_the_issuer_is_down() -> None:
    machine = running()
    machine.handle(ChildExited(1, 0.1))
    machine.handle(TimerFired(Timer.RESTART_CHILD))
    assert acts(machine.handle(TokenFailed("issuer unreachable"))) == [StartChild(OLD)]


@pytest.mark.parametrize(
    ("policy", "status", "restarts"),
    [
        ("on-failure", 0, False),
        ("on-failure", 2, True),
        ("always", 0, True),
        ("never", 2, False),
    ],
)
def test_restart_policy(policy: str, status: int, restarts: bool) -> None:
    machine = running(Policy(restart_policy=policy))  # type: ignore[arg-type]
    effects = acts(machine.handle(ChildExited(status, 1.0)))
    if restarts:
        assert machine.phase is Phase.BACKING_OFF
    else:
        assert effects == [Unsubscribe(OLD), Exit(status)]


def test_stop_forwards_the_signal_and_exits_with_the_childs_status() -> None:
    machine = running()
    assert acts(machine.handle(StopRequested(signal.SIGINT))) == [StopChild(signal.SIGINT, 7.0)]
    assert machine.phase is Phase.STOPPING
    assert acts(machine.handle(StopRequested(signal.SIGINT))) == [KillChild()]
    assert acts(machine.handle(ChildExited(5, 1.0))) == [Unsubscribe(OLD), Exit(5)]
    assert machine.handle(ChildExited(5, 1.0)) == []  # exited: nothing more happens


def test_stop_while_restarting_waits_for_the_child_and_does_not_start_it_again() -> None:
    machine = running()
    machine.handle(rotated(2))
    machine.handle(TokenObtained(NEW))
    assert machine.phase is Phase.RESTARTING
    machine.handle(StopRequested(signal.SIGTERM))
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 1.0))) == [Unsubscribe(NEW), Exit(143)]


def test_stop_during_backoff_exits_with_the_last_status() -> None:
    machine = running()
    machine.handle(ChildExited(4, 0.1))
    assert acts(machine.handle(StopRequested(signal.SIGTERM))) == [Unsubscribe(OLD), Exit(4)]
    assert machine.handle(TimerFired(Timer.RESTART_CHILD)) == []


def test_sighup_is_forwarded_to_a_running_child() -> None:
    machine = running()
    assert machine.handle(SignalReceived(signal.SIGHUP)) == [SignalChild(signal.SIGHUP)]


def test_permanent_token_error_at_start_exits_with_the_message() -> None:
    machine = AgentMachine()
    machine.handle(AgentStarted())
    effects = machine.handle(TokenFailed("the issuer refused the PAT (401)", permanent=True))
    assert effects == [Exit(1, "the issuer refused the PAT (401)")]


def test_transient_token_error_at_start_is_retried_then_given_up() -> None:
    machine = AgentMachine(policy=Policy(start_retries=2, backoff_initial=1.0))
    machine.handle(AgentStarted())
    assert acts(machine.handle(TokenFailed("issuer unreachable"))) == [ScheduleTimer(Timer.RETRY_FETCH, 1.0)]
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
    assert acts(machine.handle(TokenFailed("issuer unreachable"))) == [ScheduleTimer(Timer.RETRY_FETCH, 2.0)]
    machine.handle(TimerFired(Timer.RETRY_FETCH))
    assert acts(machine.handle(TokenFailed("issuer unreachable"))) == [Exit(1, "issuer unreachable")]


def test_token_error_during_rotation_keeps_the_child_and_retries() -> None:
    machine = running()
    machine.handle(rotated(2))
    assert acts(machine.handle(TokenFailed("issuer unreachable"))) == [ScheduleTimer(Timer.RETRY_FETCH, 0.5)]
    assert machine.phase is Phase.RUNNING
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]


def test_command_that_cannot_start_exits_127() -> None:
    machine = AgentMachine()
    machine.handle(AgentStarted())
    machine.handle(TokenObtained(OLD))
    effects = machine.handle(ChildStartFailed("nope: No such file or directory"))
    assert effects[-1] == Exit(127, "could not start the command: nope: No such file or directory")


def test_webhooks_before_the_first_token_are_ignored() -> None:
    machine = AgentMachine()
    machine.handle(AgentStarted())
    assert acts(machine.handle(rotated(2))) == []


def test_credential_repr_hides_the_token() -> None:
    assert "stk_old" not in repr(OLD)
    assert "stk_old" not in str(OLD.describe())


def test_rotation_arriving_while_the_child_stops_is_waited_for_before_starting() -> None:
    machine = running()
    machine.handle(rotated(2))
    assert acts(machine.handle(TokenObtained(NEW))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(rotated(3))) == [FetchToken()]
    assert acts(machine.handle(ChildExited(0, 1.0))) == []  # not on NEW: generation 3 is being fetched
    assert acts(machine.handle(TokenObtained(NEWER))) == [StartChild(NEWER), Acknowledge(3, NEWER)]
    assert machine.phase is Phase.RUNNING
    assert machine.applied_generation == 3


# --- a source that does not follow rotations (--token-env, a token file nobody updated) -------------------

STATIC = Credential("stk_static")  # what VariableTokenSource / FileTokenSource return: no generation
UPDATED = Credential("stk_updated")  # the token file after an operator updated it


def static_running(policy: Policy | None = None) -> AgentMachine:
    machine = AgentMachine(policy=policy or Policy(stop_timeout=7.0, backoff_initial=0.5, backoff_max=2.0))
    machine.handle(AgentStarted())
    assert acts(machine.handle(TokenObtained(STATIC))) == [Subscribe(STATIC), StartChild(STATIC)]
    return machine


def logged(effects: list[Effect], event: str) -> list[Log]:
    return [e for e in effects if isinstance(e, Log) and e.event == event]


@pytest.mark.parametrize("kind", ["streaming_tokens.rotated", "streaming_tokens.revoked"])
def test_an_unchanged_token_after_a_restart_rotation_neither_restarts_nor_acks(kind: str) -> None:
    machine = static_running()
    assert acts(machine.handle(WebhookReceived("msg_2", kind, "restart", 2))) == [FetchToken()]
    effects = machine.handle(TokenObtained(STATIC))
    assert acts(effects) == [ScheduleTimer(Timer.RETRY_FETCH, 0.5)]  # no StopChild, no Acknowledge
    (error,) = logged(effects, "token_unchanged")
    assert error.level == "error"
    assert "update the token file" in str(error.fields["hint"])
    assert error.fields["fingerprint"] == STATIC.fingerprint
    assert "stk_static" not in str(error.fields)
    assert machine.phase is Phase.RUNNING
    # Retried with back-off, as long as the source keeps the old token.
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(STATIC))) == [ScheduleTimer(Timer.RETRY_FETCH, 1.0)]
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(STATIC))) == [ScheduleTimer(Timer.RETRY_FETCH, 2.0)]
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
    # The file was updated: now the child restarts on the new token and the rotation is acknowledged.
    assert acts(machine.handle(TokenObtained(UPDATED))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(ChildExited(0, 1.0))) == [StartChild(UPDATED), Acknowledge(2, UPDATED)]
    assert machine.rotation is None


def test_a_crash_while_the_token_is_unchanged_restarts_the_child_without_acknowledging() -> None:
    machine = static_running()
    machine.handle(rotated(2))
    machine.handle(TokenObtained(STATIC))  # unchanged: retry scheduled
    assert acts(machine.handle(ChildExited(1, 0.1)))[0] == ScheduleTimer(Timer.RESTART_CHILD, 0.5)
    machine.handle(TimerFired(Timer.RESTART_CHILD))
    effects = acts(machine.handle(TokenObtained(STATIC)))
    assert effects[0] == StartChild(STATIC)  # it must run again, on what there is
    assert not any(isinstance(e, Acknowledge) for e in effects)
    assert machine.retry_pending  # the retry scheduled before the crash still stands (one at a time)
    assert machine.rotation is not None  # still waiting for a new token
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]


def test_a_crash_while_the_source_fails_does_not_acknowledge_an_unchanged_token() -> None:
    machine = static_running()
    machine.handle(rotated(2))
    machine.handle(TokenObtained(STATIC))
    machine.handle(ChildExited(1, 0.1))
    machine.handle(TimerFired(Timer.RESTART_CHILD))
    effects = acts(machine.handle(TokenFailed("cannot read token file")))
    assert effects[0] == StartChild(STATIC)
    assert [e for e in effects if isinstance(e, Acknowledge)] == []
    assert machine.retry_pending  # the retry scheduled before the crash still stands (one at a time)
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]


def test_an_unchanged_token_on_reload_is_acknowledged_without_telling_the_child() -> None:
    machine = static_running()
    effects = machine.handle(rotated(2, "reload"))
    assert acts(effects) == [FetchToken()]
    effects = machine.handle(TokenObtained(STATIC))
    assert acts(effects) == [Acknowledge(2, STATIC)]  # still valid (now Token 1): nothing to reload
    assert logged(effects, "token_unchanged")[0].level == "warning"


def test_a_replayed_notification_after_an_agent_restart_does_not_restart_a_static_token() -> None:
    # A fresh agent on a variable knows no generation; a replay of an old rotation (within the signature's
    # 5 minutes) re-reads the source, finds the token it runs on, and leaves the child alone.
    machine = static_running()
    assert acts(machine.handle(rotated(5, webhook_id="msg_replayed"))) == [FetchToken()]
    assert not any(isinstance(e, StopChild | Acknowledge) for e in machine.handle(TokenObtained(STATIC)))
    assert machine.phase is Phase.RUNNING


def test_notifications_not_newer_than_the_generation_at_start_do_not_restart() -> None:
    machine = AgentMachine()
    machine.handle(AgentStarted())
    machine.handle(TokenObtained(NEWER))  # generation 3 at start
    for generation in (1, 2, 3):
        effects = acts(machine.handle(rotated(generation, webhook_id=f"replay_{generation}")))
        assert effects == [Acknowledge(generation, NEWER)]
    assert machine.phase is Phase.RUNNING


def test_a_token_file_out_that_cannot_be_written_is_its_own_error() -> None:
    machine = AgentMachine()
    machine.handle(AgentStarted())
    machine.handle(TokenObtained(OLD))
    effects = machine.handle(ChildStartFailed("/ro/token: Read-only file system", token_file=True))
    message = "could not write the token file (--token-file-out): /ro/token: Read-only file system"
    assert effects[-1] == Exit(1, message)


# --- finding 7: a webhook with an inflated generation cannot strand the agent -----------------------------

INFLATED = 9007199254740993  # the review's repro: 2**53 + 1, far beyond anything the issuer has


def inflated(webhook_id: str = "msg_forged") -> WebhookReceived:
    return WebhookReceived(webhook_id, "streaming_tokens.rotated", "restart", INFLATED)


def test_after_a_bounded_number_of_older_answers_the_issuers_word_wins() -> None:
    machine = running(Policy(stop_timeout=7.0, behind_answers=3))
    effects = machine.handle(inflated())
    assert acts(effects) == [FetchToken()]
    fetches = 1
    for answer in range(1, 3):  # the issuer keeps answering generation 1 (nothing was rotated)
        effects = machine.handle(TokenObtained(OLD))
        assert acts(effects) == [ScheduleTimer(Timer.RETRY_FETCH, backoff_delay(answer, 0.5, 30.0))]
        assert logged(effects, "token_older_than_rotation")[0].fields["answers"] == answer
        assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
        fetches += 1
    effects = machine.handle(TokenObtained(OLD))
    (dropped,) = logged(effects, "rotation_dropped")
    assert dropped.level == "warning"
    assert dropped.fields["generation"] == 1
    assert machine.rotation is None
    assert not any(isinstance(e, StopChild | Acknowledge | FetchToken) for e in effects)  # nothing to apply
    assert fetches == 3  # bounded: not one reveal every 30 s forever
    # Later, real rotations are still applied: the agent is not stranded.
    machine.handle(TimerFired(Timer.RETRY_FETCH))  # the cool-down is over
    assert acts(machine.handle(rotated(2))) == [FetchToken()]
    assert acts(machine.handle(TokenObtained(NEW))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(ChildExited(0, 1.0))) == [StartChild(NEW), Acknowledge(2, NEW)]


def test_the_issuers_newer_token_is_applied_when_the_webhook_claimed_more() -> None:
    machine = running(Policy(stop_timeout=7.0, behind_answers=2))
    machine.handle(rotated(50))  # the issuer only reached generation 2
    machine.handle(TokenObtained(NEW))
    machine.handle(TimerFired(Timer.RETRY_FETCH))
    effects = machine.handle(TokenObtained(NEW))
    assert logged(effects, "rotation_capped")
    assert acts(effects) == [StopChild(signal.SIGTERM, 7.0)]
    # The acknowledgement claims what the deployment has, not the webhook's generation.
    assert acts(machine.handle(ChildExited(0, 1.0))) == [StartChild(NEW), Acknowledge(2, NEW)]
    assert machine.applied_generation == 2


def test_a_crashed_child_is_restarted_while_a_rotation_waits_for_the_issuer() -> None:
    # The review's repro: an inflated webhook, then kill -9 of the child. It used to stay down for good.
    machine = running()
    machine.handle(inflated())
    machine.handle(TokenObtained(OLD))  # older: a retry is scheduled
    assert machine.retry_pending
    killed = ChildExited(-signal.SIGKILL, 5.0)
    assert acts(machine.handle(killed)) == [ScheduleTimer(Timer.RESTART_CHILD, 0.5)]
    # The crash restart does not wait for the rotation's retry, and an older answer still starts the child.
    assert acts(machine.handle(TimerFired(Timer.RESTART_CHILD))) == [FetchToken()]
    effects = acts(machine.handle(TokenObtained(OLD)))
    assert effects == [StartChild(OLD)]
    assert machine.phase is Phase.RUNNING
    assert machine.rotation is not None  # still waited for, with back-off


def test_a_crashed_child_is_restarted_when_the_fetch_after_a_restart_is_behind() -> None:
    # A rotation arrives while the child stops for the previous one; the issuer's answer is behind it.
    machine = running()
    machine.handle(rotated(2))
    machine.handle(TokenObtained(NEW))
    machine.handle(rotated(INFLATED, webhook_id="msg_forged"))
    assert acts(machine.handle(ChildExited(0, 1.0))) == []  # waits for the fetch under way
    assert acts(machine.handle(TokenObtained(NEW)))[0] == StartChild(NEW)
    assert machine.phase is Phase.RUNNING


def test_webhooks_do_not_bypass_the_retry_back_off() -> None:
    machine = running()
    machine.handle(inflated("msg_a"))
    machine.handle(TokenObtained(OLD))  # a retry is scheduled
    for n in range(20):  # a flood of validly signed notifications (a leaked secret)
        effects = machine.handle(inflated(f"msg_flood_{n}"))
        assert not any(isinstance(e, FetchToken) for e in effects)
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]


def test_the_next_inflated_webhook_after_a_drop_waits_for_the_back_off() -> None:
    machine = running(Policy(behind_answers=2, backoff_initial=1.0, backoff_max=8.0))
    delays: list[float] = []

    def answer_until_dropped() -> None:
        while True:
            for effect in machine.handle(TokenObtained(OLD)):
                if isinstance(effect, ScheduleTimer):
                    delays.append(effect.delay)
            if machine.rotation is None:
                return
            assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]

    machine.handle(inflated("msg_1"))
    answer_until_dropped()
    assert machine.retry_pending  # a cool-down
    assert acts(machine.handle(inflated("msg_2"))) == []  # no reveal at once
    assert acts(machine.handle(TimerFired(Timer.RETRY_FETCH))) == [FetchToken()]
    answer_until_dropped()
    assert delays == sorted(delays)  # the back-off keeps growing: no fresh run of quick retries
    assert delays[-1] == 8.0


def test_a_generation_jump_beyond_what_the_agent_knows_is_capped() -> None:
    machine = running(Policy(generation_jump=10))
    effects = machine.handle(inflated())
    (capped,) = logged(effects, "webhook_generation_capped")
    assert capped.fields["capped_to"] == 11
    assert machine.rotation is not None
    assert machine.rotation.generation == 11
    # A plausible jump (rotations the agent missed) is taken as it is.
    fresh = running(Policy(generation_jump=10))
    assert not logged(fresh.handle(rotated(11)), "webhook_generation_capped")
    assert fresh.rotation is not None
    assert fresh.rotation.generation == 11


def test_an_issuer_answering_the_held_token_to_a_restart_is_not_asked_forever() -> None:
    # A webhook without a generation (or one the issuer has, with the same token): the issuer says no.
    machine = running(Policy(behind_answers=2))
    machine.handle(WebhookReceived("msg_nogen", "streaming_tokens.rotated", "restart", None))
    machine.handle(TokenObtained(OLD))
    machine.handle(TimerFired(Timer.RETRY_FETCH))
    assert logged(machine.handle(TokenObtained(OLD)), "rotation_dropped")
    assert machine.rotation is None
    assert machine.phase is Phase.RUNNING


def test_a_rotation_notified_while_the_child_stops_is_not_acknowledged_on_the_older_token() -> None:
    # Found by the property test: a revocation (generation 3) arrives while the child stops for generation 2,
    # and its fetch fails. The child starts on the token of generation 2, which must not acknowledge 3.
    machine = running()
    machine.handle(rotated(2))
    assert acts(machine.handle(TokenObtained(NEW))) == [StopChild(signal.SIGTERM, 7.0)]
    revoked = WebhookReceived("msg_3", "streaming_tokens.revoked", "restart", 3)
    assert acts(machine.handle(revoked)) == [FetchToken()]
    assert acts(machine.handle(TokenFailed("issuer unreachable"))) == []
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 1.0))) == [StartChild(NEW), FetchToken()]
    assert acts(machine.handle(TokenObtained(NEWER))) == [StopChild(signal.SIGTERM, 7.0)]
    assert acts(machine.handle(ChildExited(-signal.SIGTERM, 1.0))) == [
        StartChild(NEWER),
        Acknowledge(3, NEWER),
    ]
