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
    Policy,
    ScheduleTimer,
    SignalReceived,
    StartChild,
    StopChild,
    StopRequested,
    TimerFired,
    TokenFailed,
    TokenObtained,
    WebhookReceived,
)

STEPS = st.lists(
    st.sampled_from(
        ["token", "token_fails", "exit_ok", "exit_crash", "webhook_restart", "webhook_reload", "revoke",
         "duplicate", "inflated", "timer", "stop", "hup"]
    ),
    max_size=60,
)  # fmt: skip
FORGED = 2**62  # a webhook generation the issuer never reaches (finding 7)
POLICY = Policy(behind_answers=3)


class Driver:
    """Feeds the machine as the runtime would and checks the invariants after every event.

    The issuer's state is ``generation``: legitimate webhooks rotate it first, forged ones do not.
    """

    def __init__(self, static_source: bool) -> None:
        self.machine = AgentMachine(policy=POLICY)
        self.static_source = static_source
        self.child_running = False
        self.stop_sent = False
        self.fetches = 0
        self.fetch_count = 0
        self.timers: list[TimerFired] = []
        self.generation = 1
        self.exits = 0
        self.last_webhook = "msg_0"
        self.acked: list[int] = []

    def credential(self) -> Credential:
        gen = None if self.static_source else self.generation
        return Credential(f"stk_{self.generation}", f"tid_{self.generation}", gen, "e", 1)

    def feed(self, event: Event) -> None:
        machine = self.machine
        retry_was_pending = machine.retry_pending
        for effect in machine.handle(event):
            if isinstance(effect, StartChild):
                assert not self.child_running, "a second child would run"
                self.child_running = True
                self.stop_sent = False
            elif isinstance(effect, StopChild):
                self.stop_sent = True
            elif isinstance(effect, FetchToken):
                assert not isinstance(event, TokenObtained | TokenFailed), "an answer fetched again at once"
                assert not (isinstance(event, WebhookReceived) and retry_was_pending), (
                    "a webhook fetched while a retry was scheduled (back-off bypassed)"
                )
                self.fetches += 1
                self.fetch_count += 1
            elif isinstance(effect, ScheduleTimer):
                assert effect.delay > 0, "a zero delay is a tight loop"
                self.timers.append(TimerFired(effect.timer))
            elif isinstance(effect, Exit):
                self.exits += 1
            elif isinstance(effect, Acknowledge):
                self.acked.append(effect.generation)
                if effect.credential.generation is not None:
                    assert effect.credential.generation >= effect.generation, "acked a token it did not have"
                if not self.static_source:
                    assert effect.generation <= self.generation, "acked a generation the issuer never had"
        with_child = machine.phase in (Phase.RUNNING, Phase.RESTARTING, Phase.STOPPING)
        assert with_child == self.child_running, f"phase {machine.phase}, child running: {self.child_running}"
        # A crashed child due to start again is never left waiting on nothing (a pending rotation included).
        assert not (machine.phase is Phase.BACKING_OFF and machine.restart_due and not machine.fetching)
        assert self.fetches <= 1, "two fetches at once"

    def step(self, step: str) -> None:
        if step == "token" and self.fetches:
            self.fetches -= 1
            self.feed(TokenObtained(self.credential()))
        elif step == "token_fails" and self.fetches:
            self.fetches -= 1
            self.feed(TokenFailed("issuer unreachable"))
        elif step in ("exit_ok", "exit_crash") and self.child_running:
            self.child_running = False
            self.feed(ChildExited(0 if step == "exit_ok" else 1, 0.5))
        elif step in ("webhook_restart", "webhook_reload", "revoke"):
            self.generation += 1
            self.last_webhook = f"msg_{self.generation}"
            kind = "streaming_tokens.revoked" if step == "revoke" else "streaming_tokens.rotated"
            action = "reload" if step == "webhook_reload" else "restart"
            self.feed(WebhookReceived(self.last_webhook, kind, action, self.generation))  # type: ignore[arg-type]
        elif step == "inflated":
            forged = f"forged_{len(self.acked)}_{self.fetch_count}"
            self.feed(WebhookReceived(forged, "streaming_tokens.rotated", "restart", FORGED))
        elif step == "duplicate":
            again = WebhookReceived(self.last_webhook, "streaming_tokens.rotated", "restart", self.generation)
            self.feed(again)
        elif step == "timer" and self.timers:
            self.feed(self.timers.pop(0))
        elif step == "stop":
            self.feed(StopRequested(signal.SIGTERM))
        elif step == "hup":
            self.feed(SignalReceived(signal.SIGHUP))

    def settle(self) -> None:
        """From now on the issuer answers, timers fire and a stopped child exits: what the machine reaches."""
        for _ in range(200):
            if self.fetches:
                self.step("token")
            elif self.child_running and self.stop_sent:
                self.child_running = False
                self.feed(ChildExited(-signal.SIGTERM, 1.0))
            elif self.timers:
                self.step("timer")
            else:
                return
        raise AssertionError("the machine never settles: a loop of fetches or timers")


@settings(max_examples=300, deadline=None)
@given(STEPS, st.booleans())
def test_the_machine_never_runs_two_children_and_exits_once(steps: list[str], static_source: bool) -> None:
    driver = Driver(static_source)
    driver.feed(AgentStarted())
    for step in steps:
        driver.step(step)
    assert driver.exits <= 1
    assert (driver.exits == 1) == (driver.machine.phase is Phase.EXITED)
    assert driver.acked == sorted(driver.acked) or static_source


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_agent_is_never_stranded_on_a_rotation_the_issuer_does_not_confirm(steps: list[str]) -> None:
    # Whatever came before (forged generations, crashes, a failing issuer), once the issuer answers the agent
    # ends with a running child on the issuer's token and nothing pending, after a bounded number of reveals.
    driver = Driver(static_source=False)
    driver.feed(AgentStarted())
    for step in steps:
        driver.step(step)
    before = driver.fetch_count
    driver.settle()
    machine = driver.machine
    if machine.phase is Phase.EXITED:
        return
    if machine.phase is not Phase.STARTING:  # STARTING: it gave up before the first token (start_retries)
        assert machine.phase is Phase.RUNNING
        assert driver.child_running
        assert machine.rotation is None, "a rotation is still waited for"
        assert machine.credential is not None
        assert machine.credential.generation == driver.generation, "not on the issuer's token"
    assert driver.fetch_count - before <= POLICY.behind_answers + 2, "reveals were not bounded"
