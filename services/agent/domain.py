"""The deployment agent's decisions: a small state machine, pure (no I/O, no clock, no randomness).

The runtime feeds it :data:`Event` values (a token was obtained, the child exited, a verified webhook
arrived, a signal was received, a timer fired, the resolver answered a heartbeat) and carries out the
:data:`Effect` values it returns (fetch a token, start, stop, signal or reload the child, acknowledge a
generation, report the child's token, schedule an adoption, exit). Everything the agent decides lives here,
so every rule is a unit test with plain data. The one rule that needs the time of day (when an adoption
window opens) is the pure function :func:`adoption_delay`, which the runtime calls with its clock.
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Literal

from shared.backoff import exponential
from shared.tokens import fingerprint

RESTART: Literal["restart"] = "restart"
RELOAD: Literal["reload"] = "reload"
Action = Literal["restart", "reload"]
RestartPolicy = Literal["always", "on-failure", "never"]
AdoptMode = Literal["restart", "reload", "off"]
HeartbeatOutcome = Literal["ok", "refused", "unsupported", "failed"]

ROTATED = "streaming_tokens.rotated"
REVOKED = "streaming_tokens.revoked"
# A scheduled rotation's warning ahead of time (the notifier's notices): logged, never a restart or reload.
ROTATION_DUE = "token.rotation_due"
_SEEN_WEBHOOKS = 1024


class Phase(StrEnum):
    STARTING = "starting"  # obtaining the first token; no child yet
    RUNNING = "running"  # the child runs (a rotation may be waiting for its token)
    RESTARTING = "restarting"  # asked the child to stop; it starts again with the new token once it exits
    BACKING_OFF = "backing_off"  # the child crashed; it starts again after a delay
    STOPPING = "stopping"  # asked to stop; exits with the child's status once the child exits
    EXITED = "exited"


class Timer(StrEnum):
    RESTART_CHILD = "restart_child"  # the back-off after a crash is over
    RETRY_FETCH = "retry_fetch"  # try to obtain the token again
    HEARTBEAT = "heartbeat"  # report the child's token to the resolver again
    ADOPT = "adopt"  # the adoption's moment has come (--adopt-after elapsed, inside --adopt-window)


@dataclass(frozen=True)
class Credential:
    """A streaming token and what is known about it. ``repr`` never shows the token."""

    token: str = field(repr=False)
    token_id: str | None = None
    generation: int | None = None
    environment_id: str | None = None
    slot: int | None = None

    @property
    def fingerprint(self) -> str:
        """The token's public SHA-256 fingerprint: how the agent tells two tokens apart in logs and state."""
        return fingerprint(self.token)

    def describe(self) -> dict[str, object]:
        """What may be logged about this credential: ids, never the token."""
        return {
            "environment_id": self.environment_id,
            "token_id": self.token_id,
            "generation": self.generation,
        }


@dataclass(frozen=True)
class AdoptWindow:
    """``--adopt-window HH:MM-HH:MM``, in UTC; ``start > end`` wraps midnight (``22:00-02:00``)."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("an adoption window must not be empty (start equals end)")

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} UTC"


def adoption_delay(now: datetime, after: float, window: AdoptWindow | None) -> float:
    """Seconds from ``now`` (UTC) until an adoption may happen: ``after`` seconds on, and inside ``window``.

    Pure: the runtime calls it with its clock when the machine asks for :class:`ScheduleAdoption`.
    """
    earliest = now + timedelta(seconds=max(after, 0.0))
    if window is not None and not window.contains(earliest.time()):
        start = earliest.replace(hour=window.start.hour, minute=window.start.minute, second=0, microsecond=0)
        if start <= earliest:
            start += timedelta(days=1)
        earliest = start
    return max((earliest - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class Policy:
    """How the agent behaves; most fields are ``streamtoken run`` options.

    The defaults here are the machine's (heartbeats off, no adoption); the command's defaults are in
    ``services.agent.settings``.
    """

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 10.0  # a child that ran this long before crashing resets the back-off
    stop_timeout: float = 10.0
    restart_policy: RestartPolicy = "on-failure"
    start_retries: int = 5
    # The issuer is the source of truth: after this many answers that do not reach a notified rotation
    # (older, or the token the agent holds), the issuer's word wins and the rotation is dropped.
    behind_answers: int = 5
    # A webhook may claim at most this many generations beyond what the agent knows; more is cut to it.
    generation_jump: int = 1000
    # Report the child's token to the resolver this often (and at once after every token change); 0: never.
    heartbeat_interval: float = 0.0
    # Zero-downtime strategy (--slot 2): move the child onto the environment's new Token 2 after a rotation
    # left it on the promoted token (now Token 1): a graceful restart, or a token-file reload.
    adopt: AdoptMode = "off"
    adopt_after: float = 0.0
    adopt_window: AdoptWindow | None = None
    # With adopt "reload" a reload hands the child its token (a rewritten --token-file-out the app reads
    # again on the signal): the child then runs on the reloaded token. Otherwise a reload leaves the child
    # on the token it was started with.


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Capped exponential back-off: ``initial``, ``2*initial``, ``4*initial``, ... at most ``maximum``."""
    return exponential(attempt, initial, maximum)


def exit_status(returncode: int) -> int:
    """The shell convention: a child killed by signal N exits 128+N."""
    return 128 - returncode if returncode < 0 else returncode


# --- events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentStarted:
    pass


@dataclass(frozen=True)
class TokenObtained:
    credential: Credential


@dataclass(frozen=True)
class TokenFailed:
    message: str
    permanent: bool = False  # a refused PAT or an unknown environment will not fix itself


@dataclass(frozen=True)
class ChildStartFailed:
    message: str
    token_file: bool = False  # the --token-file-out could not be written (the command was not tried)


@dataclass(frozen=True)
class ChildExited:
    returncode: int
    ran_for: float


@dataclass(frozen=True)
class WebhookReceived:
    webhook_id: str
    type: str
    action: Action
    generation: int | None


@dataclass(frozen=True)
class StopRequested:
    signum: int


@dataclass(frozen=True)
class SignalReceived:
    """A signal to pass on to the child without stopping (SIGHUP)."""

    signum: int


@dataclass(frozen=True)
class TimerFired:
    timer: Timer


@dataclass(frozen=True)
class HeartbeatAnswered:
    """The resolver's answer to a heartbeat sent with the token of fingerprint ``fingerprint``.

    ``ok``: 200 with the token's ``token_id`` and ``slot`` (1, 2, or ``None`` when it knows no slot);
    ``refused``: 401, the token was rotated out or revoked; ``unsupported``: 404, a resolver without the
    route; ``failed``: unreachable, a 5xx, an unexpected answer (``message`` says which).
    """

    fingerprint: str
    outcome: HeartbeatOutcome
    token_id: str | None = None
    slot: int | None = None
    environment_id: str | None = None
    message: str = ""


Event = (
    AgentStarted
    | TokenObtained
    | TokenFailed
    | ChildStartFailed
    | ChildExited
    | WebhookReceived
    | StopRequested
    | SignalReceived
    | TimerFired
    | HeartbeatAnswered
)


# --- effects ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchToken:
    pass


@dataclass(frozen=True)
class Subscribe:
    credential: Credential


@dataclass(frozen=True)
class Unsubscribe:
    credential: Credential | None


@dataclass(frozen=True)
class StartChild:
    credential: Credential


@dataclass(frozen=True)
class StopChild:
    """Send ``signum`` to the child; SIGKILL it if it still runs after ``kill_after`` seconds."""

    signum: int
    kill_after: float


@dataclass(frozen=True)
class KillChild:
    pass


@dataclass(frozen=True)
class SignalChild:
    signum: int


@dataclass(frozen=True)
class ReloadChild:
    credential: Credential


@dataclass(frozen=True)
class Acknowledge:
    generation: int
    credential: Credential


@dataclass(frozen=True)
class ScheduleTimer:
    timer: Timer
    delay: float


@dataclass(frozen=True)
class SendHeartbeat:
    """Tell the resolver which token the child runs with (``POST /v1/heartbeat``, Bearer = that token)."""

    credential: Credential


@dataclass(frozen=True)
class ScheduleAdoption:
    """Fire :attr:`Timer.ADOPT` at the first moment ``after`` seconds from now inside ``window`` (UTC).

    The runtime computes the delay with :func:`adoption_delay` and its clock.
    """

    after: float
    window: AdoptWindow | None
    credential: Credential  # the token the child will be moved onto (logged by id)


@dataclass(frozen=True)
class Exit:
    status: int
    error: str | None = None


@dataclass(frozen=True)
class Log:
    event: str
    level: Literal["debug", "info", "warning", "error"] = "info"
    fields: dict[str, object] = field(default_factory=dict)


Effect = (
    FetchToken
    | Subscribe
    | Unsubscribe
    | StartChild
    | StopChild
    | KillChild
    | SignalChild
    | ReloadChild
    | Acknowledge
    | ScheduleTimer
    | SendHeartbeat
    | ScheduleAdoption
    | Exit
    | Log
)


@dataclass
class Rotation:
    """What the notifier asked for and the agent has not applied yet.

    ``replaced`` is the fingerprint of the token the agent held when it was notified: obtaining that same
    token again means the source has not followed the rotation (a ``--token-env`` variable, a token file
    nobody updated), and restarting with it would only restart on a deactivated token.
    """

    action: Action
    generation: int | None
    replaced: str | None = None
    behind: int = 0  # answers from the issuer that did not reach this rotation


@dataclass
class AgentMachine:
    """The agent's state and its transitions: ``handle(event)`` returns the effects to carry out."""

    policy: Policy = field(default_factory=Policy)
    phase: Phase = Phase.STARTING
    credential: Credential | None = None
    applied_generation: int | None = None
    rotation: Rotation | None = None
    fetching: bool = False
    retry_pending: bool = False  # a RETRY_FETCH timer is set: fetches wait for it (no tight loop)
    fetch_failures: int = 0
    crashes: int = 0
    restart_due: bool = False  # the back-off is over; the child starts once the token fetch is done
    last_status: int | None = None
    seen_webhooks: deque[str] = field(default_factory=lambda: deque(maxlen=_SEEN_WEBHOOKS))
    child_credential: Credential | None = None  # the token the child runs with: what heartbeats report
    heartbeat_supported: bool = True  # False once the resolver answered 404 (no heartbeat route)
    heartbeat_in_flight: bool = False
    heartbeat_again: bool = False  # the child's token changed while a heartbeat was under way
    heartbeat_timer: bool = False  # a HEARTBEAT timer is set
    heartbeat_failures: int = 0
    heartbeat_reported: tuple[str | None, int | None] | None = None  # (token id, slot) last answered
    heartbeat_refused: str | None = None  # fingerprint whose refusal was logged as a warning
    adoption_pending: bool = False  # an ADOPT timer is set
    adoption_warned: str | None = None  # fingerprint of the Token 2 the "not adopted" warning was about

    def handle(self, event: Event) -> list[Effect]:
        if self.phase is Phase.EXITED:
            return []
        match event:
            case AgentStarted():
                return self._fetch()
            case TokenObtained(credential):
                return self._token_obtained(credential)
            case TokenFailed(message, permanent):
                return self._token_failed(message, permanent)
            case ChildStartFailed(message, token_file):
                if token_file:
                    return self._exit(1, f"could not write the token file (--token-file-out): {message}")
                return self._exit(127, f"could not start the command: {message}")
            case ChildExited(returncode, ran_for):
                return self._child_exited(returncode, ran_for)
            case WebhookReceived():
                return self._webhook(event)
            case StopRequested(signum):
                return self._stop(signum)
            case SignalReceived(signum):
                if self.phase in (Phase.RUNNING, Phase.RESTARTING, Phase.STOPPING):
                    return [SignalChild(signum)]
                return []
            case TimerFired(timer):
                return self._timer(timer)
            case HeartbeatAnswered():
                return self._heartbeat_answered(event)
        raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover

    # --- tokens ------------------------------------------------------------------------------------------

    def _fetch(self, *, crashed: bool = False) -> list[Effect]:
        # While a retry is scheduled, a notification waits for it: webhooks cannot turn the back-off into a
        # tight loop of reveals. A crashed child's restart does not wait (its own back-off bounds it).
        if self.fetching or (self.retry_pending and not crashed):
            return []
        self.fetching = True
        return [FetchToken()]

    def _retry_fetch(self, attempt: int) -> list[Effect]:
        if self.retry_pending:
            return []
        self.retry_pending = True
        return [ScheduleTimer(Timer.RETRY_FETCH, self._delay(attempt))]

    def _behind(self, rotation: Rotation, credential: Credential) -> bool:
        """The issuer's answer does not reach the notified rotation (older, or the very token held)."""
        if credential.generation is None:
            return False  # a variable or a file: no issuer to take the word of (see _token_unchanged)
        if rotation.generation is not None and credential.generation < rotation.generation:
            return True
        return rotation.action == RESTART and rotation.replaced == credential.fingerprint

    def _token_obtained(self, credential: Credential) -> list[Effect]:
        self.fetching = False
        rotation = self.rotation
        dropped: list[Effect] = []
        if rotation is not None and self._behind(rotation, credential):
            rotation.behind += 1
            if rotation.behind < self.policy.behind_answers:
                return self._wait_for_issuer(rotation, credential)
            dropped = self._issuer_wins(rotation, credential)
            if self.rotation is None:
                return dropped
            rotation = self.rotation
        unchanged = rotation is not None and rotation.replaced == credential.fingerprint
        stale_for_restart = unchanged and rotation is not None and rotation.action == RESTART
        self.fetch_failures = self.fetch_failures + 1 if stale_for_restart else 0
        self.credential = credential
        log = Log("token_obtained", "info", credential.describe())
        if self.phase is Phase.STARTING:
            self.phase = Phase.RUNNING
            self.applied_generation = credential.generation
            return [log, Subscribe(credential), *self._start_child(credential)]
        if self.phase is Phase.BACKING_OFF:
            return [*dropped, log, *self._start_after_backoff()] if self.restart_due else [*dropped, log]
        if rotation is None and self.phase is Phase.RUNNING:
            return [*dropped, log, *self._consider_adoption()]
        if rotation is None or self.phase is not Phase.RUNNING:
            return [*dropped, log]
        if stale_for_restart:
            # Restarting would only start the child again on the token that was just rotated out, and an
            # acknowledgement would claim a generation the deployment does not have. Wait for the source.
            return self._token_unchanged(credential)
        if unchanged and self._adopting(credential):
            # The agent already learnt this Token 2 (a heartbeat said the child is on Token 1) and moves
            # the child onto it (--adopt): the rotation is applied as far as the deployment is concerned.
            return [log, *self._rotation_applied()]
        if unchanged:
            # Zero-downtime strategy: the token the child holds is still valid (it moved to slot 1); there
            # is nothing to tell the child, but the next rotation will refuse it.
            return [
                log,
                Log(
                    "token_unchanged",
                    "warning",
                    {
                        **credential.describe(),
                        "fingerprint": credential.fingerprint,
                        "hint": "the child keeps its token, which the next rotation deactivates: update the "
                        "token variable or file, or take the token from the issuer (--environment)",
                    },
                ),
                *self._rotation_applied(),
            ]
        if rotation.action == RESTART:
            self.phase = Phase.RESTARTING
            return [
                *dropped,
                log,
                Log("restarting_child", "info", {**credential.describe(), "reason": "rotation"}),
                StopChild(signal.SIGTERM, self.policy.stop_timeout),
            ]
        return [
            *dropped,
            log,
            *self._reload_child(credential),
            *self._rotation_applied(),
            *self._consider_adoption(),
        ]

    def _wait_for_issuer(self, rotation: Rotation, credential: Credential) -> list[Effect]:
        """The issuer is behind the notification (a lagging replica, or a forged generation): ask again later.

        A crashed child waiting for its token starts again at once on the newest token there is: a pending
        rotation never keeps a deployment down.
        """
        self.fetch_failures += 1
        effects: list[Effect] = [
            Log(
                "token_older_than_rotation",
                "warning",
                {
                    **credential.describe(),
                    "wanted": rotation.generation,
                    "answers": rotation.behind,
                    "of": self.policy.behind_answers,
                },
            )
        ]
        if self.phase is Phase.BACKING_OFF and self.restart_due:
            self._adopt(credential)
            effects += self._start_after_backoff()
        return effects + self._retry_fetch(self.fetch_failures)

    def _issuer_wins(self, rotation: Rotation, credential: Credential) -> list[Effect]:
        """Enough answers were behind the notification: what the issuer says is what there is to apply."""
        held = self.credential.fingerprint if self.credential is not None else None
        same_token = credential.fingerprint in (rotation.replaced, held)
        effects: list[Effect] = [
            Log(
                "rotation_dropped" if same_token else "rotation_capped",
                "warning",
                {
                    **credential.describe(),
                    "wanted": rotation.generation,
                    "answers": rotation.behind,
                    "hint": "the issuer is the source of truth and did not reach the generation the webhook "
                    "claimed; "
                    + (
                        "nothing to apply, the child keeps its token"
                        if same_token
                        else "the issuer's newer token is applied instead"
                    ),
                },
            )
        ]
        if not same_token:
            rotation.generation = credential.generation
            return effects
        self.rotation = None
        self.fetch_failures += 1  # fruitless too: the cool-down keeps growing with each such rotation
        self._adopt(credential)
        if self.phase is Phase.BACKING_OFF and self.restart_due:
            effects += self._start_after_backoff()
        # A cool-down before the next fetch: notifications that keep claiming more wait for the back-off.
        return effects + self._retry_fetch(self.fetch_failures)

    def _adopt(self, credential: Credential) -> None:
        """Hold ``credential`` unless the one held is newer (an issuer replica answering from the past)."""
        held = self.credential
        if held is None or held.generation is None or (credential.generation or 0) >= held.generation:
            self.credential = credential

    def _token_unchanged(self, credential: Credential) -> list[Effect]:
        delay = self._delay(self.fetch_failures)
        assert self.rotation is not None
        return [
            Log(
                "token_unchanged",
                "error",
                {
                    **credential.describe(),
                    "fingerprint": credential.fingerprint,
                    "wanted": self.rotation.generation,
                    "retry_in": delay,
                    "hint": "the token source still holds the token that was rotated out, so the child is "
                    "not restarted and the rotation is not acknowledged: update the token file (it is read "
                    "again), restart the agent with the new token in its variable, or take the token "
                    "from the issuer (--environment)",
                },
            ),
            *self._retry_fetch(self.fetch_failures),
        ]

    def _token_failed(self, message: str, permanent: bool) -> list[Effect]:
        self.fetching = False
        self.fetch_failures += 1
        if self.phase is Phase.STARTING:
            if permanent or self.fetch_failures > self.policy.start_retries:
                return self._exit(1, message)
            delay = self._delay(self.fetch_failures)
            return [
                Log("token_unavailable", "warning", {"error": message, "retry_in": delay}),
                *self._retry_fetch(self.fetch_failures),
            ]
        if self.phase is Phase.BACKING_OFF:
            # The child must run again; it keeps the token it had and the rotation is retried.
            effects: list[Effect] = [Log("token_unavailable", "error", {"error": message})]
            if self.restart_due:
                effects += self._start_after_backoff(fetch_failed=True)
            if self.rotation is not None:
                effects += self._retry_fetch(self.fetch_failures)
            return effects
        if self.rotation is not None and self.phase is Phase.RUNNING:
            delay = self._delay(self.fetch_failures)
            return [
                Log("token_unavailable", "error", {"error": message, "retry_in": delay}),
                *self._retry_fetch(self.fetch_failures),
            ]
        return [Log("token_unavailable", "error", {"error": message})]

    # --- the child ---------------------------------------------------------------------------------------

    def _child_exited(self, returncode: int, ran_for: float) -> list[Effect]:
        status = exit_status(returncode)
        self.last_status = status
        fields: dict[str, object] = {"status": status, "ran_for": round(ran_for, 3)}
        if self.phase is Phase.STOPPING:
            return [Log("child_stopped", "info", fields), *self._exit(status)]
        if self.phase is Phase.RESTARTING:
            self.crashes = 0
            if self.fetching:
                # A newer rotation arrived while the child stopped: start it once that token is here.
                self.phase = Phase.BACKING_OFF
                self.restart_due = True
                return [Log("child_stopped", "info", fields)]
            self.phase = Phase.RUNNING
            assert self.credential is not None
            stopped: list[Effect] = [Log("child_stopped", "info", fields)]
            effects = stopped + self._start_child(self.credential)
            if self.rotation is not None and not self._credential_covers_rotation():
                # A newer generation was notified while the child stopped and its token is not here (the
                # fetch failed, or waits for the back-off): fetch it; nothing is claimed meanwhile.
                return effects + self._fetch()
            return effects + self._rotation_applied()
        if self.phase is not Phase.RUNNING:
            return []
        policy = self.policy.restart_policy
        if policy == "never" or (policy == "on-failure" and status == 0):
            return [Log("child_exited", "info", fields), *self._exit(status)]
        if ran_for >= self.policy.stable_after:
            self.crashes = 0
        self.crashes += 1
        delay = self._delay(self.crashes)
        self.phase = Phase.BACKING_OFF
        return [
            Log("child_crashed", "warning", {**fields, "restart_in": delay, "crashes": self.crashes}),
            ScheduleTimer(Timer.RESTART_CHILD, delay),
        ]

    def _start_after_backoff(self, fetch_failed: bool = False) -> list[Effect]:
        assert self.credential is not None
        self.phase = Phase.RUNNING
        self.restart_due = False
        effects: list[Effect] = self._start_child(self.credential)
        if self.rotation is None or self.fetching:
            return effects
        if self.rotation.action == RESTART and self.rotation.replaced == self.credential.fingerprint:
            # The child must run again, but on the token that was rotated out: not an applied rotation.
            if not fetch_failed:  # (after a failed fetch, the caller schedules the retry)
                effects += self._token_unchanged(self.credential)
        elif self._credential_covers_rotation():
            effects += self._rotation_applied()
        return effects

    def _credential_covers_rotation(self) -> bool:
        assert self.rotation is not None
        assert self.credential is not None
        wanted, have = self.rotation.generation, self.credential.generation
        return wanted is None or have is None or have >= wanted

    def _timer(self, timer: Timer) -> list[Effect]:
        if timer is Timer.HEARTBEAT:
            return self._heartbeat_timer()
        if timer is Timer.ADOPT:
            return self._adopt_now()
        if timer is Timer.RESTART_CHILD and self.phase is Phase.BACKING_OFF:
            # Fetch again first: a crash may be the old token being refused after a missed notification.
            # When a fetch is already under way, its answer starts the child.
            self.restart_due = True
            return self._fetch(crashed=True)
        if timer is not Timer.RETRY_FETCH:
            return []
        self.retry_pending = False
        wanted = self.phase is Phase.STARTING or (
            self.rotation is not None and self.phase in (Phase.RUNNING, Phase.BACKING_OFF)
        )
        return self._fetch() if wanted else []

    # --- notifications -----------------------------------------------------------------------------------

    def _webhook(self, event: WebhookReceived) -> list[Effect]:
        fields: dict[str, object] = {
            "webhook_id": event.webhook_id,
            "type": event.type,
            "action": event.action,
            "generation": event.generation,
        }
        if event.webhook_id in self.seen_webhooks:
            return [Log("webhook_duplicate", "info", fields)]
        self.seen_webhooks.append(event.webhook_id)
        if self.phase not in (Phase.RUNNING, Phase.RESTARTING, Phase.BACKING_OFF):
            return [Log("webhook_ignored", "info", {**fields, "phase": str(self.phase)})]
        # After a revocation both tokens are new: no token the child holds still works, so it must restart.
        action: Action = RESTART if event.type == REVOKED else event.action
        applied = self.applied_generation
        if event.generation is not None and applied is not None and event.generation <= applied:
            assert self.credential is not None
            return [
                Log("webhook_already_applied", "info", {**fields, "applied_generation": applied}),
                Acknowledge(event.generation, self.credential),
            ]
        effects: list[Effect] = []
        generation = event.generation
        known = self._known_generation()
        if generation is not None and known is not None and generation > known + self.policy.generation_jump:
            # Nothing the agent knows of makes such a jump plausible (a forged record, a leaked secret):
            # wait for at most this much; the issuer has the last word anyway.
            generation = known + self.policy.generation_jump
            effects.append(Log("webhook_generation_capped", "warning", {**fields, "capped_to": generation}))
        held = self.credential.fingerprint if self.credential is not None else None
        if self.rotation is None:
            self.rotation = Rotation(action, generation, held)
        else:
            self.rotation.replaced = held
            if action == RESTART:
                self.rotation.action = RESTART
            if generation is not None:
                self.rotation.generation = max(generation, self.rotation.generation or 0)
        return [
            *effects,
            Log("rotation_notified", "info", {**fields, "apply": self.rotation.action}),
            *self._fetch(),
        ]

    def _known_generation(self) -> int | None:
        known = [g for g in (self.applied_generation, self.credential and self.credential.generation) if g]
        return max(known) if known else None

    def _rotation_applied(self) -> list[Effect]:
        rotation, credential = self.rotation, self.credential
        self.rotation = None
        if rotation is None or credential is None:
            return []
        generation = rotation.generation if rotation.generation is not None else credential.generation
        if credential.generation is not None:
            self.applied_generation = max(credential.generation, generation or 0)
        elif generation is not None:
            self.applied_generation = generation
        effects: list[Effect] = [
            Log("rotation_applied", "info", {**credential.describe(), "action": rotation.action})
        ]
        if generation is not None:
            effects.append(Acknowledge(generation, credential))
        return effects

    # --- the child's token: heartbeats and adoption ---------------------------------------------------

    def _start_child(self, credential: Credential) -> list[Effect]:
        """Start the child on ``credential`` and report it: a token change is heartbeated at once."""
        self.child_credential = credential
        self.adoption_pending = False  # a pending adoption's timer finds the child on the token it wanted
        return [StartChild(credential), *self._report()]

    def _reload_child(self, credential: Credential) -> list[Effect]:
        effects: list[Effect] = [ReloadChild(credential)]
        if self.policy.adopt == RELOAD:
            # The app reads the rewritten token file again on the signal: it now runs on this token.
            self.child_credential = credential
            effects += self._report()
        return effects

    def _heartbeats_on(self) -> bool:
        return self.policy.heartbeat_interval > 0 and self.heartbeat_supported

    def _report(self) -> list[Effect]:
        """A heartbeat now (the child's token changed), and the periodic timer if it is not set yet."""
        if not self._heartbeats_on():
            return []
        effects: list[Effect] = []
        if not self.heartbeat_timer:
            self.heartbeat_timer = True
            effects.append(ScheduleTimer(Timer.HEARTBEAT, self.policy.heartbeat_interval))
        return effects + self._send_heartbeat()

    def _send_heartbeat(self) -> list[Effect]:
        if not self._heartbeats_on() or self.child_credential is None or self.phase is not Phase.RUNNING:
            self.heartbeat_again = False  # no child to report on (it starts again, with a heartbeat)
            return []
        if self.heartbeat_in_flight:
            self.heartbeat_again = True  # one at a time: the answer sends the next one
            return []
        self.heartbeat_in_flight = True
        return [SendHeartbeat(self.child_credential)]

    def _heartbeat_timer(self) -> list[Effect]:
        self.heartbeat_timer = False
        if not self._heartbeats_on():
            return []
        self.heartbeat_timer = True
        effects: list[Effect] = [ScheduleTimer(Timer.HEARTBEAT, self.policy.heartbeat_interval)]
        if self.phase is Phase.RUNNING:  # no child, or one that is being stopped: nothing to report
            effects += self._send_heartbeat()
        return effects

    def _heartbeat_answered(self, answer: HeartbeatAnswered) -> list[Effect]:
        self.heartbeat_in_flight = False
        again, self.heartbeat_again = self.heartbeat_again, False
        child = self.child_credential
        current = child is not None and child.fingerprint == answer.fingerprint
        fields: dict[str, object] = {
            "environment_id": answer.environment_id or (child.environment_id if child else None),
            "token_id": answer.token_id or (child.token_id if child and current else None),
            "slot": answer.slot,
        }
        effects: list[Effect] = []
        if answer.outcome == "unsupported":
            self.heartbeat_supported = False
            self.heartbeat_timer = False  # a timer still set fires into nothing
            return [
                Log(
                    "heartbeat_unsupported",
                    "info",
                    {
                        **fields,
                        "hint": "the resolver has no POST /v1/heartbeat (an older version): heartbeats stop; "
                        "its readiness view will not list this deployment by id",
                    },
                )
            ]
        if answer.outcome == "ok":
            self.heartbeat_failures = 0
            self.heartbeat_refused = None
            reported = (answer.token_id, answer.slot)
            level: Literal["debug", "info"] = "debug" if reported == self.heartbeat_reported else "info"
            self.heartbeat_reported = reported
            effects.append(Log("heartbeat", level, fields))
            if current and answer.slot == 1:
                effects += self._child_not_on_token_2("child_on_token_1")
        elif answer.outcome == "refused":
            first = self.heartbeat_refused != answer.fingerprint
            self.heartbeat_refused = answer.fingerprint
            effects.append(
                Log(
                    "heartbeat_refused",
                    "warning" if first else "debug",
                    {
                        **fields,
                        "hint": "the resolver refuses the token the child runs with: it was rotated out or "
                        "revoked (a notification the agent did not get?)",
                    },
                )
            )
            if current:
                effects += self._child_not_on_token_2("child_token_refused")
        else:
            self.heartbeat_failures += 1
            effects.append(
                Log(
                    "heartbeat_failed",
                    "warning" if self.heartbeat_failures == 1 else "debug",
                    {**fields, "error": answer.message, "failures": self.heartbeat_failures},
                )
            )
        if again or not current:
            effects += self._send_heartbeat()
        return effects

    def _child_not_on_token_2(self, event: str) -> list[Effect]:
        """The resolver says the child's token is Token 1 (or no longer valid): under adoption, move on."""
        if self.policy.adopt == "off" or self.phase is not Phase.RUNNING:
            return []
        held, child = self.credential, self.child_credential
        if held is None or held.slot != 2:
            return []  # only the zero-downtime strategy (Token 2) adopts
        if child is not None and held.fingerprint == child.fingerprint:
            # The agent knows no newer Token 2 (a notification it did not get): ask the issuer.
            return [Log(event, "info", {**child.describe(), "adopt": self.policy.adopt}), *self._fetch()]
        return self._consider_adoption()

    def _consider_adoption(self) -> list[Effect]:
        """The child runs on another token than the one of ``--slot`` the agent holds: move it there."""
        policy, held, child = self.policy, self.credential, self.child_credential
        if self.phase is not Phase.RUNNING or self.rotation is not None or held is None or child is None:
            return []
        if held.fingerprint == child.fingerprint or held.slot != 2:
            return []
        if policy.adopt == "off":
            if self.adoption_warned == held.fingerprint:
                return []
            self.adoption_warned = held.fingerprint
            return [
                Log(
                    "token_not_adopted",
                    "warning",
                    {
                        **held.describe(),
                        "child_token_id": child.token_id,
                        "hint": "the child keeps the promoted token (now Token 1), which the next rotation "
                        "deactivates: --adopt restart with --adopt-window, or --adopt reload with "
                        "--token-file-out for an app that reads the file again",
                    },
                )
            ]
        if policy.adopt == RELOAD:
            return [
                Log("adopting_token", "info", {**held.describe(), "action": RELOAD, "from": child.token_id}),
                *self._reload_child(held),
            ]
        if self.adoption_pending:
            return []
        self.adoption_pending = True
        return [ScheduleAdoption(policy.adopt_after, policy.adopt_window, held)]

    def _adopting(self, held: Credential) -> bool:
        """An adoption onto ``held`` is scheduled, or done (the child already runs on it)."""
        child = self.child_credential
        if self.policy.adopt == "off" or held.slot != 2 or child is None:
            return False
        return child.fingerprint == held.fingerprint or self.adoption_pending

    def _adopt_now(self) -> list[Effect]:
        if not self.adoption_pending:
            return []
        self.adoption_pending = False
        held, child = self.credential, self.child_credential
        if self.phase is not Phase.RUNNING or held is None or child is None:
            return []  # a restart under way, or a crashed child, starts on the newest token anyway
        if held.fingerprint == child.fingerprint:
            return []
        if self.rotation is not None or self.fetching:
            # A rotation is being applied: look again shortly (inside the window still, or at the next).
            self.adoption_pending = True
            retry = max(self.policy.backoff_initial, 1.0)
            return [ScheduleAdoption(retry, self.policy.adopt_window, held)]
        self.phase = Phase.RESTARTING
        return [
            Log("restarting_child", "info", {**held.describe(), "reason": "adopt", "from": child.token_id}),
            StopChild(signal.SIGTERM, self.policy.stop_timeout),
        ]

    # --- stopping ----------------------------------------------------------------------------------------

    def _stop(self, signum: int) -> list[Effect]:
        if self.phase is Phase.STOPPING:
            return [Log("child_killed", "warning", {"signal": signal.Signals(signum).name}), KillChild()]
        if self.phase in (Phase.STARTING, Phase.BACKING_OFF):
            status = self.last_status if self.last_status is not None else 128 + signum
            return self._exit(status)
        self.phase = Phase.STOPPING
        return [
            Log("stopping", "info", {"signal": signal.Signals(signum).name}),
            StopChild(signum, self.policy.stop_timeout),
        ]

    def _exit(self, status: int, error: str | None = None) -> list[Effect]:
        self.phase = Phase.EXITED
        effects: list[Effect] = []
        if self.credential is not None:
            effects.append(Unsubscribe(self.credential))
        effects.append(Exit(status, error))
        return effects

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.policy.backoff_initial, self.policy.backoff_max)
