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
    HeartbeatAnswered,
    Phase,
    Policy,
    ReloadChild,
    ScheduleAdoption,
    ScheduleTimer,
    SendHeartbeat,
    SignalReceived,
    StartChild,
    StopChild,
    StopRequested,
    Timer,
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


# --- heartbeats and adoption (the zero-downtime strategy: the agent holds Token 2) ------------------------

SLOT2_STEPS = st.lists(
    st.sampled_from(
        ["token", "token_fails", "crash", "rotate_reload", "rotate_missed", "revoke", "timer", "hb_timer",
         "hb_answer", "hb_fail", "hb_unsupported", "adopt_timer", "stop"]
    ),
    max_size=60,
)  # fmt: skip


class Slot2Driver:
    """The issuer at generation ``g`` has Token 1 = ``t{g-1}`` (the promoted Token 2) and Token 2 = ``t{g}``;
    the resolver answers heartbeats from that. Rotations come with a reload webhook, or are missed."""

    def __init__(self, adopt: str, unsupported_at_most: bool = True) -> None:
        self.policy = Policy(behind_answers=3, heartbeat_interval=30.0, adopt=adopt, adopt_after=5.0)  # type: ignore[arg-type]
        self.machine = AgentMachine(policy=self.policy)
        self.generation = 1
        self.child: str | None = None  # the token the child runs with
        self.stop_sent = False
        self.fetches = 0
        self.timers: list[TimerFired] = []
        self.heartbeat_timers = 0
        self.heartbeats: list[str] = []  # in flight: the token each was sent with
        self.unsupported = False
        self.adopt_timers = 0
        self.exits = 0

    def token_2(self) -> Credential:
        g = self.generation
        return Credential(f"stk_t{g}", f"tid_t{g}", g, "e", 2)

    def slot_of(self, token: str) -> int | None:
        if token == f"stk_t{self.generation}":
            return 2
        if token == f"stk_t{self.generation - 1}":
            return 1
        return None

    def feed(self, event: Event) -> None:
        for effect in self.machine.handle(event):
            if isinstance(effect, StartChild):
                assert self.child is None, "a second child would run"
                self.child = effect.credential.token
                self.stop_sent = False
            elif isinstance(effect, StopChild):
                if not isinstance(event, StopRequested):
                    assert isinstance(event, TokenObtained | TimerFired), f"a restart on {event!r}"
                    if isinstance(event, TimerFired):
                        assert event.timer is Timer.ADOPT, "an adoption restart outside its timer"
                        assert self.policy.adopt == "restart"
                self.stop_sent = True
            elif isinstance(effect, ReloadChild):
                if self.policy.adopt == "reload":
                    self.child = effect.credential.token
            elif isinstance(effect, SendHeartbeat):
                assert not self.unsupported, "a heartbeat after the resolver said it has no route"
                assert not self.heartbeats, "two heartbeats at once"
                assert effect.credential.token == self.child, "a heartbeat not about the child's token"
                self.heartbeats.append(effect.credential.token)
            elif isinstance(effect, FetchToken):
                self.fetches += 1
            elif isinstance(effect, ScheduleTimer):
                assert effect.delay > 0
                if effect.timer is Timer.HEARTBEAT:
                    self.heartbeat_timers += 1
                    assert self.heartbeat_timers <= 1, "two heartbeat timers"
                else:
                    self.timers.append(TimerFired(effect.timer))
            elif isinstance(effect, ScheduleAdoption):
                assert self.policy.adopt == "restart", "an adoption scheduled without --adopt restart"
                self.adopt_timers += 1
                assert self.adopt_timers <= 1, "two adoption timers"
            elif isinstance(effect, Exit):
                self.exits += 1
        assert self.fetches <= 1, "two fetches at once"

    def step(self, step: str) -> None:
        if step == "token" and self.fetches:
            self.fetches -= 1
            self.feed(TokenObtained(self.token_2()))
        elif step == "token_fails" and self.fetches:
            self.fetches -= 1
            self.feed(TokenFailed("issuer unreachable"))
        elif step == "crash" and self.child is not None:
            self.child = None
            self.feed(ChildExited(1 if not self.stop_sent else -signal.SIGTERM, 20.0))
        elif step in ("rotate_reload", "rotate_missed", "revoke"):
            self.generation += 1
            if step == "revoke":  # both tokens new: the child's is refused
                self.generation += 1
                self.feed(WebhookReceived(f"r{self.generation}", "streaming_tokens.revoked", "restart",
                                          self.generation))  # fmt: skip
            elif step == "rotate_reload":
                self.feed(WebhookReceived(f"m{self.generation}", "streaming_tokens.rotated", "reload",
                                          self.generation))  # fmt: skip
        elif step == "timer" and self.timers:
            self.feed(self.timers.pop(0))
        elif step == "hb_timer" and self.heartbeat_timers:
            self.heartbeat_timers -= 1
            self.feed(TimerFired(Timer.HEARTBEAT))
        elif step in ("hb_answer", "hb_fail", "hb_unsupported") and self.heartbeats:
            token = self.heartbeats.pop(0)
            fp = Credential(token).fingerprint
            if step == "hb_fail":
                self.feed(HeartbeatAnswered(fp, "failed", message="unreachable"))
            elif step == "hb_unsupported":
                self.unsupported = True
                self.feed(HeartbeatAnswered(fp, "unsupported"))
            else:
                slot = self.slot_of(token)
                answer = (
                    HeartbeatAnswered(fp, "refused")
                    if slot is None
                    else HeartbeatAnswered(fp, "ok", "t", slot)
                )
                self.feed(answer)
        elif step == "adopt_timer" and self.adopt_timers:
            self.adopt_timers -= 1
            self.feed(TimerFired(Timer.ADOPT))
        elif step == "stop":
            self.feed(StopRequested(signal.SIGTERM))

    def settle(self) -> None:
        """The issuer answers, timers fire, heartbeats are answered truthfully, a stopped child exits."""
        for _ in range(300):
            if self.fetches:
                self.step("token")
            elif self.child is not None and self.stop_sent:
                self.step("crash")
            elif self.heartbeats:
                self.step("hb_answer")
            elif self.timers:
                self.step("timer")
            elif self.adopt_timers:
                self.step("adopt_timer")
            else:
                return
        raise AssertionError("the machine never settles")


@settings(max_examples=300, deadline=None)
@given(SLOT2_STEPS, st.sampled_from(["restart", "reload", "off"]))
def test_heartbeats_report_the_childs_token_and_adoption_restarts_only_on_its_timer(
    steps: list[str], adopt: str
) -> None:
    driver = Slot2Driver(adopt)
    driver.feed(AgentStarted())
    for step in steps:
        driver.step(step)
    driver.settle()
    assert driver.exits <= 1
    machine = driver.machine
    if machine.phase is not Phase.RUNNING or adopt == "off":
        return
    # One heartbeat round (the resolver says Token 1 if a rotation was missed), then settle again: an agent
    # that adopts ends with its child on the issuer's current Token 2.
    if driver.heartbeat_timers and not driver.unsupported:
        driver.step("hb_timer")
        driver.settle()
    if machine.phase is Phase.RUNNING and not driver.unsupported:
        assert driver.child == driver.token_2().token, "the child was not moved onto the new Token 2"
