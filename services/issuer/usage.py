"""Who still uses Token 1 (issue 12): the usage and readiness view, a rotation's live progress, and the
scheduled rotations, as plain functions over :class:`services.issuer.handlers.Deps` like the handlers.

Usage comes from the issuer's fold of the usage topic (``adapters.usage``); nothing here shows a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.issuer import handlers
from services.issuer.domain import Environment, TokenRecord
from services.issuer.handlers import Deps, IssuerError, NotFound, PreconditionFailed, TokenInUse
from services.issuer.ports import AuditEntry, RotationSchedule, StoreTx, TokenUsage
from shared.logs import get_logger

log = get_logger(__name__)

SCHEDULER_ACTOR = "scheduler"


# -- usage and readiness ----------------------------------------------------------------------------------


def _token_json(
    token: TokenRecord, usage: TokenUsage | None, slot: int | None, *, with_clients: bool = True
) -> dict[str, Any]:
    clients = [handlers.usage_client_json(c) for c in usage.clients] if usage is not None else []
    body: dict[str, Any] = {
        **({"slot": slot} if slot is not None else {}),
        "token_id": token.token_id,
        "fingerprint": token.fingerprint,
        "last_used_at": usage.last_used_at.isoformat() if usage and usage.last_used_at else None,
        "client_count": len(clients),
    }
    if with_clients:
        body["clients"] = clients
    if token.valid_until is not None:
        body["valid_until"] = token.valid_until.isoformat()
    return body


def _usage_of(deps: Deps, tx: StoreTx, env: Environment, now: datetime) -> dict[str, TokenUsage]:
    valid = env.valid_at(now)
    return tx.token_usage([t.token_id for t in valid], now - deps.usage_window)


def usage_view(deps: Deps, env_id: str) -> dict[str, Any]:
    """``GET .../streaming-tokens/usage``: per token its last use and the clients of the window, and per
    deployment (agents' heartbeats) the token it runs with — the readiness view of a rotation."""
    now = deps.clock()
    with deps.store.transaction() as tx:
        env = handlers._require(tx, env_id)
        usage = _usage_of(deps, tx, env, now)
    grace = [t for t in env.grace_tokens if t in env.valid_at(now)]
    slots = {env.token_1.token_id: 1, env.token_2.token_id: 2}
    deployments: dict[str, dict[str, Any]] = {}
    for token_id, found in usage.items():
        for client in found.clients:
            if client.deployment_id is None:
                continue
            held = deployments.get(client.deployment_id)
            if held is None or held["last_seen_at"] < client.last_seen_at:
                deployments[client.deployment_id] = {
                    "deployment_id": client.deployment_id,
                    "token_id": token_id,
                    "slot": slots.get(token_id),
                    "last_seen_at": client.last_seen_at,
                }
    return {
        "environment_id": env.id,
        "generation": env.generation,
        "window_seconds": int(deps.usage_window.total_seconds()),
        "tokens": [
            _token_json(env.token_1, usage.get(env.token_1.token_id), 1),
            _token_json(env.token_2, usage.get(env.token_2.token_id), 2),
        ],
        "grace_tokens": [_token_json(t, usage.get(t.token_id), None) for t in grace],
        "deployments": [
            {**d, "last_seen_at": d["last_seen_at"].isoformat()}
            for d in sorted(deployments.values(), key=lambda d: d["deployment_id"])
        ],
    }


def usage_summaries(
    deps: Deps, env_id: str, token_ids: Sequence[str], *, after_change: bool = False
) -> dict[str, dict[str, Any] | None]:
    """Per token id asked for: ``{"last_used_at", "client_count"}`` (what ``GET .../streaming-tokens`` adds).

    Asked by id, not for the tokens valid now: an answer shows the tokens of its own generation, and a
    concurrent rotation may already have ended one of them. ``after_change``: the answer of a change that
    has committed, so a database gone away since gives each token ``None`` (usage unknown) rather than
    turning the applied change into an error."""
    now = deps.clock()

    def read(tx: StoreTx) -> dict[str, TokenUsage]:
        handlers._require(tx, env_id)
        return tx.token_usage(list(token_ids), now - deps.usage_window)

    if after_change:
        found_usage = deps.store.read_back(read, wait_s=2.0)
        if found_usage is None:
            log.warning("usage_unavailable", environment_id=env_id, token_ids=list(token_ids))
            return dict.fromkeys(token_ids)
        usage = found_usage
    else:
        with deps.store.transaction() as tx:
            usage = read(tx)
    summaries: dict[str, dict[str, Any] | None] = {}
    for token_id in token_ids:
        found = usage.get(token_id)
        summaries[token_id] = {
            "last_used_at": found.last_used_at.isoformat() if found and found.last_used_at else None,
            "client_count": len(found.clients) if found else 0,
        }
    return summaries


# -- a rotation's progress --------------------------------------------------------------------------------


class NotifierUnavailable(Exception):
    """The notifier gave no usable answer; the message is one short line, never a secret."""


class NotifierProbe(Protocol):
    """The notifier's view of an environment's rotations (``GET /v1/environments/{id}/rotations``)."""

    def rotations(self, environment_id: str) -> dict[str, Any]: ...

    def warn(self, environment_id: str, notice: dict[str, Any]) -> int:
        """Have the notifier send ``notice`` to the environment's subscribed deployments (the number
        queued); raises :class:`NotifierUnavailable`."""
        ...

    def close(self) -> None: ...


STATES = ("publishing", "broker_applied", "resolvers_applied", "notified", "acknowledged")


def progress(deps: Deps, env_id: str, notifier: NotifierProbe | None) -> dict[str, Any]:
    """``GET .../streaming-tokens/progress``: how far the latest change has reached, in one view."""
    state = handlers.propagation(deps, env_id)  # validates the id, 404s, polls the resolvers
    with deps.store.transaction() as tx:
        env = handlers._require(tx, env_id)
    resolver_total = len(state.resolver_detail)
    resolver_applied = sum(1 for r in state.resolver_detail if r.applied(state.generation))
    deployments: dict[str, int] | None = None
    reason: str | None = None
    if notifier is None:
        reason = "no notifier configured (STREAMTOKEN_ISSUER_NOTIFIER_URL)"
    else:
        try:
            answer = notifier.rotations(env_id)
            subscribed = int(answer.get("subscriptions", 0))
            current = next(
                (r for r in answer.get("rotations", []) if int(r.get("generation", 0)) == env.generation),
                None,
            )
            deployments = {
                "subscribed": subscribed,
                "notified": int(current["notified"]) if current else 0,
                "acknowledged": int(current["acknowledged"]) if current else 0,
                "dead": int(current["dead"]) if current else 0,
            }
        except NotifierUnavailable as exc:
            reason = str(exc)
        except (KeyError, TypeError, ValueError):
            reason = "unexpected answer from the notifier"
    broker_applied = state.broker in ("applied", "off")
    resolvers_applied = state.resolvers == "applied" or (state.resolvers == "unknown" and broker_applied)
    phase = "publishing"
    if broker_applied:
        phase = "broker_applied"
        if resolvers_applied:
            phase = "resolvers_applied"
            if deployments is not None and deployments["subscribed"] > 0:
                if deployments["notified"] >= deployments["subscribed"]:
                    phase = "notified"
                if deployments["acknowledged"] >= deployments["subscribed"]:
                    phase = "acknowledged"
    return {
        "environment_id": env.id,
        "generation": env.generation,
        "rotation_id": env.last_change.rotation_id,
        "change": env.last_change.type.value,
        "changed_at": env.last_change.at.isoformat(),
        "broker": {
            "applied": broker_applied,
            "state": state.broker,
            "generation": state.broker_generation,
        },
        "resolvers": {
            "applied": resolver_applied,
            "total": resolver_total,
            "state": state.resolvers,
            "detail": state.to_json()["resolver_detail"],
        },
        "deployments": deployments,
        **({"deployments_reason": reason} if reason is not None else {}),
        "state": phase,
    }


# -- scheduled rotation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleTimes:
    due_at: datetime  # the last change + every_days
    warn_at: datetime
    forced_at: datetime | None  # the deadline: rotated even while Token 1 is used


def schedule_times(schedule: RotationSchedule, env: Environment) -> ScheduleTimes:
    due = env.last_change.at + timedelta(days=schedule.every_days)
    forced = None
    if schedule.deadline_days is not None:
        # Counted from when the schedule existed too: setting one never forces a rotation at once.
        start = max(due, schedule.created_at or due)
        forced = start + timedelta(days=schedule.deadline_days)
    return ScheduleTimes(due, due - timedelta(seconds=schedule.warn_before_seconds), forced)


def schedule_json(schedule: RotationSchedule, env: Environment) -> dict[str, Any]:
    times = schedule_times(schedule, env)
    return {
        "environment_id": schedule.environment_id,
        "every_days": schedule.every_days,
        "unused_window_seconds": schedule.unused_window_seconds,
        "deadline_days": schedule.deadline_days,
        "warn_before_seconds": schedule.warn_before_seconds,
        "grace_period_seconds": schedule.grace_period_seconds,
        "due_at": times.due_at.isoformat(),
        "warn_at": times.warn_at.isoformat(),
        "forced_at": times.forced_at.isoformat() if times.forced_at else None,
        "warned_generation": schedule.warned_generation,
        "last_outcome": schedule.last_outcome,
        "created_at": schedule.created_at.isoformat() if schedule.created_at else None,
        "updated_at": schedule.updated_at.isoformat() if schedule.updated_at else None,
    }


SCHEDULE_FIELDS = (
    "every_days",
    "unused_window_seconds",
    "deadline_days",
    "warn_before_seconds",
    "grace_period_seconds",
)


def get_schedule(deps: Deps, env_id: str) -> dict[str, Any]:
    with deps.store.transaction() as tx:
        env = handlers._require(tx, env_id)
        schedule = tx.rotation_schedule(env_id)
    if schedule is None:
        raise NotFound(f"environment {env_id!r} has no rotation schedule")
    return schedule_json(schedule, env)


def set_schedule(
    deps: Deps,
    env_id: str,
    values: dict[str, Any],
    *,
    actor: str,
    pat_id: str | None = None,
    replace_all: bool,
) -> dict[str, Any]:
    """``PUT`` (``replace_all``: every field from ``values``, defaults for the rest) or ``PATCH`` (only the
    fields given, on the existing schedule: 404 without one)."""
    now = deps.clock()
    with deps.store.transaction() as tx:
        env = handlers._require(tx, env_id, for_update=True)
        existing = tx.rotation_schedule(env_id)
        if replace_all:
            schedule = RotationSchedule(
                environment_id=env_id,
                every_days=values["every_days"],
                unused_window_seconds=values["unused_window_seconds"],
                deadline_days=values["deadline_days"],
                warn_before_seconds=values["warn_before_seconds"],
                grace_period_seconds=values["grace_period_seconds"],
                warned_generation=existing.warned_generation if existing else 0,
                created_at=existing.created_at if existing else now,
            )
        else:
            if existing is None:
                raise NotFound(f"environment {env_id!r} has no rotation schedule; create one with PUT")
            schedule = replace(existing, **{k: v for k, v in values.items() if k in SCHEDULE_FIELDS})
        if schedule.every_days <= 0:
            raise handlers.Invalid("every_days must be above 0")
        schedule = replace(schedule, last_outcome=None)
        tx.save_rotation_schedule(schedule, now)
        saved = tx.rotation_schedule(env_id)
        assert saved is not None
        tx.add_audit(
            AuditEntry(
                at=now,
                actor=actor,
                action="schedule_set",
                environment_id=env_id,
                detail={k: getattr(schedule, k) for k in SCHEDULE_FIELDS},
                pat_id=pat_id,
            )
        )
    log.info("rotation_schedule_set", environment_id=env_id, actor=actor, every_days=schedule.every_days)
    return schedule_json(saved, env)


def delete_schedule(deps: Deps, env_id: str, *, actor: str, pat_id: str | None = None) -> None:
    now = deps.clock()
    with deps.store.transaction() as tx:
        handlers._require(tx, env_id, for_update=True)
        if not tx.delete_rotation_schedule(env_id):
            raise NotFound(f"environment {env_id!r} has no rotation schedule")
        tx.add_audit(
            AuditEntry(at=now, actor=actor, action="schedule_delete", environment_id=env_id, pat_id=pat_id)
        )
    log.info("rotation_schedule_deleted", environment_id=env_id, actor=actor)


def _record_outcome(deps: Deps, env_id: str, outcome: str, *, warned_generation: int | None = None) -> None:
    with deps.store.transaction() as tx:
        schedule = tx.rotation_schedule(env_id)
        if schedule is None:
            return
        changed = replace(
            schedule,
            last_outcome=outcome[:200],
            warned_generation=warned_generation
            if warned_generation is not None
            else schedule.warned_generation,
        )
        if changed != schedule:
            tx.save_rotation_schedule(changed, deps.clock())


def run_schedules(deps: Deps, notifier: NotifierProbe | None) -> list[tuple[str, str]]:
    """One pass of the scheduler (the issuer's housekeeping thread calls it; tests call it with a clock):
    warn ahead of time, rotate once Token 1 is unused for the window, force after the deadline. Returns
    ``(environment id, outcome)`` of every schedule looked at."""
    with deps.store.transaction() as tx:
        schedules = tx.rotation_schedules()
    outcomes = []
    for schedule in schedules:
        try:
            outcome = _run_one(deps, schedule, notifier)
        except Exception as exc:  # one environment's trouble must not stop the others
            log.warning(
                "scheduled_rotation_failed", environment_id=schedule.environment_id, error=type(exc).__name__
            )
            outcome = f"error: {type(exc).__name__}"
        outcomes.append((schedule.environment_id, outcome))
    return outcomes


def _run_one(deps: Deps, schedule: RotationSchedule, notifier: NotifierProbe | None) -> str:
    now = deps.clock()
    env_id = schedule.environment_id
    with deps.store.transaction() as tx:
        env = tx.environment(env_id)
    if env is None:
        return "gone"
    times = schedule_times(schedule, env)
    if now < times.warn_at:
        return "not_due"
    if schedule.warned_generation < env.generation:
        outcome = _warn(deps, env, times, notifier)
        if now < times.due_at:
            return outcome
    if now < times.due_at:
        return "warned"
    forced = times.forced_at is not None and now >= times.forced_at
    try:
        view = handlers.rotate_tokens(
            deps,
            env_id,
            actor=SCHEDULER_ACTOR,
            grace_seconds=schedule.grace_period_seconds,
            expected_generation=env.generation,
            if_unused_seconds=schedule.unused_window_seconds,
            force=forced,
        )
    except TokenInUse as exc:
        outcome = (
            f"waiting: Token 1 used within {schedule.unused_window_seconds} s ({len(exc.clients)} clients)"
        )
        _record_outcome(deps, env_id, outcome)
        return "waiting"
    except PreconditionFailed:
        return "changed"  # rotated meanwhile: due again every_days after that change
    except IssuerError as exc:
        _record_outcome(deps, env_id, f"refused: {exc.code}")
        return f"refused: {exc.code}"
    outcome = "forced" if forced else "rotated"
    _record_outcome(deps, env_id, f"{outcome} to generation {view.generation} at {now.isoformat()}")
    log.info("scheduled_rotation", environment_id=env_id, generation=view.generation, forced=forced)
    return outcome


WARNING_PENDING = "warning pending"


def _warn(deps: Deps, env: Environment, times: ScheduleTimes, notifier: NotifierProbe | None) -> str:
    """Have the notifier send the warning of this generation's rotation, once: the notice id is the
    generation, so a retry or a second issuer replica never sends it twice. An unreachable notifier is
    asked again on the next pass (audited once as pending, then as sent); the rotation itself does not
    wait for it after its due time."""
    notice = {
        "kind": "rotation_due",
        "generation": env.generation,
        "due_at": times.due_at.isoformat(),
        "forced_at": times.forced_at.isoformat() if times.forced_at else None,
        "notice_id": f"rotation-due-g{env.generation}",
    }
    queued: int | None = None
    webhook = "no notifier configured"
    pending = False
    if notifier is not None:
        try:
            queued = notifier.warn(env.id, notice)
            webhook = "sent"
        except NotifierUnavailable as exc:
            webhook = f"pending: {exc}"[:200]
            pending = True
            log.warning("rotation_warning_pending", environment_id=env.id, reason=str(exc))
    now = deps.clock()
    with deps.store.transaction() as tx:
        schedule = tx.rotation_schedule(env.id)
    marker = f"{WARNING_PENDING} (generation {env.generation})"
    already_pending = schedule is not None and (schedule.last_outcome or "").startswith(marker)
    if not (pending and already_pending):  # one audit entry per outcome, not one per pass
        with deps.store.transaction() as tx:
            tx.add_audit(
                AuditEntry(
                    at=now,
                    actor=SCHEDULER_ACTOR,
                    action="rotation_warned",
                    environment_id=env.id,
                    token_ids=(env.token_1.token_id,),
                    detail={
                        "generation": env.generation,
                        "due_at": times.due_at.isoformat(),
                        "deployments": queued,
                        "webhook": webhook,
                    },
                )
            )
    if pending:
        if not already_pending:
            _record_outcome(deps, env.id, f"{marker} since {now.isoformat()}")
        return "warning_pending"
    _record_outcome(deps, env.id, f"warned at {now.isoformat()}", warned_generation=env.generation)
    log.info("rotation_warned", environment_id=env.id, generation=env.generation, deployments=queued)
    return "warned"
