"""Any order of events the runtime can produce keeps the agent's invariants."""

from __future__ import annotations

import signal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.agent.domain import (
    Acknowledge,
    AgentMachine,
    AgentStarted,
    ChildExited,
    Credential,
    Event,
    Exit,
    FetchToken,
    Phase,
    ScheduleTimer,
    SignalReceived,
    StartChild,
    StopRequested,
    TimerFired,
    TokenFailed,
    TokenObtained,
    WebhookReceived,
)

STEPS = st.lists(
    st.sampled_from(
        ["token", "token_fails", "exit_ok", "exit_crash", "webhook_restart", "webhook_reload", "revoke",
         "duplicate", "timer", "stop", "hup"]
    ),
    max_size=60,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(STEPS, st.booleans())
def test_the_machine_never_runs_two_children_and_exits_once(steps: list[str], static_source: bool) -> None:
    machine = AgentMachine()
    child_running = False
    fetches = 0
    timers: list[TimerFired] = []
    generation = 1
    exits = 0
    last_webhook = "msg_0"
    applied: list[int] = []

    def feed(event: Event) -> None:
        nonlocal child_running, fetches, exits
        for effect in machine.handle(event):
            if isinstance(effect, StartChild):
                assert not child_running, "a second child would run"
                child_running = True
            elif isinstance(effect, FetchToken):
                fetches += 1
            elif isinstance(effect, ScheduleTimer):
                timers.append(TimerFired(effect.timer))
            elif isinstance(effect, Exit):
                exits += 1
            elif isinstance(effect, Acknowledge):
                applied.append(effect.generation)
                if effect.credential.generation is not None:
                    assert effect.credential.generation >= effect.generation, "acked a token it did not have"
        with_child = machine.phase in (Phase.RUNNING, Phase.RESTARTING, Phase.STOPPING)
        assert with_child == child_running, f"phase {machine.phase} but child running: {child_running}"

    feed(AgentStarted())
    for step in steps:
        if step == "token" and fetches:
            fetches -= 1
            gen = None if static_source else generation
            feed(TokenObtained(Credential(f"stk_{generation}", f"tid_{generation}", gen, "e", 1)))
        elif step == "token_fails" and fetches:
            fetches -= 1
            feed(TokenFailed("issuer unreachable"))
        elif step in ("exit_ok", "exit_crash") and child_running:
            child_running = False
            feed(ChildExited(0 if step == "exit_ok" else 1, 0.5))
        elif step in ("webhook_restart", "webhook_reload", "revoke"):
            generation += 1
            last_webhook = f"msg_{generation}"
            kind = "streaming_tokens.revoked" if step == "revoke" else "streaming_tokens.rotated"
            action = "reload" if step == "webhook_reload" else "restart"
            feed(WebhookReceived(last_webhook, kind, action, generation))  # type: ignore[arg-type]
        elif step == "duplicate":
            feed(WebhookReceived(last_webhook, "streaming_tokens.rotated", "restart", generation))
        elif step == "timer" and timers:
            feed(timers.pop(0))
        elif step == "stop":
            feed(StopRequested(signal.SIGTERM))
        elif step == "hup":
            feed(SignalReceived(signal.SIGHUP))
    assert exits <= 1
    assert (exits == 1) == (machine.phase is Phase.EXITED)
    assert applied == sorted(applied) or static_source
