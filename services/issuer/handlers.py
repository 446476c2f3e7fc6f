"""The issuer's use cases as plain functions: load, apply a domain rule, store the change and its event.

Each command writes the new state, its outbox event and its audit entry in one transaction, then wakes the
relay. Plaintext tokens leave these functions only in the :class:`TokenView` returned to the caller.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from services.issuer import domain
from services.issuer.auth import MAX_SUBJECT, Role, check_scope, mint_pat, new_pat_id
from services.issuer.crypto import TokenCipher
from services.issuer.domain import Environment, TokenRecord, Transition
from services.issuer.metrics import IssuerMetrics
from services.issuer.ports import (
    AuditEntry,
    CommitOutcomeUnknown,
    EnvironmentAccess,
    IdempotentResult,
    IssuerStore,
    PatRecord,
    ResolverGeneration,
    ResolverProbe,
    StoreConflict,
    StoreTx,
    TopicPurge,
    UsageClient,
    Wakeup,
)
from shared.broker_access import broker_password, tenant_prefix
from shared.events import encode_event
from shared.ids import environment_id, validate_environment_id
from shared.logs import get_logger

log = get_logger(__name__)


class IssuerError(Exception):
    """A command cannot be done; ``code`` names why and the message says it in a sentence."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(IssuerError):
    code = "not_found"


class Conflict(IssuerError):
    code = "conflict"


class Invalid(IssuerError):
    code = "invalid_request"


class TokenInUse(IssuerError):
    """A rotation asked for Token 1 to be unused for a window, and it was used within it."""

    code = "token_1_in_use"

    def __init__(self, message: str, clients: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.clients = clients


class PreconditionFailed(IssuerError):
    """The environment is not at the generation the caller expected (``If-Match``)."""

    code = "precondition_failed"

    def __init__(self, message: str, generation: int) -> None:
        super().__init__(message)
        self.generation = generation


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _NoWakeup:
    def wake(self) -> None:
        return None


def _no_reconcile() -> None:
    return None


@dataclass
class Deps:
    """What the handlers use; :func:`services.issuer.bootstrap.build_app` wires the real ones."""

    store: IssuerStore
    cipher: TokenCipher
    wakeup: Wakeup = field(default_factory=_NoWakeup)
    clock: Callable[[], datetime] = _utcnow
    token_factory: domain.TokenFactory = domain.default_token_factory
    metrics: IssuerMetrics = field(default_factory=IssuerMetrics)
    broker_enforced: bool = False  # the relay keeps the broker's users and ACLs (else propagation "off")
    broker_reconcile: Callable[[], None] = _no_reconcile  # asks the relay to reconcile the whole broker
    resolvers: ResolverProbe | None = None  # polled for the propagation view (None: "unknown")
    jwt_secret: str = field(default="", repr=False)  # signs the PATs minted here
    pat_default_ttl: timedelta = timedelta(days=30)
    pat_max_ttl: timedelta = timedelta(days=90)
    pat_revoked: Callable[[str], None] = lambda _jti: None  # drop a revoked PAT from the request cache
    max_grace_tokens: int = 4
    usage_window: timedelta = timedelta(minutes=15)  # clients shown: those seen within this window
    commit_read_back_s: float = 15.0  # how long a commit cut off by a lost connection is read back for


@dataclass(frozen=True)
class Propagation:
    """How far an environment's current generation has reached: the broker's users and ACLs, and the
    resolver replicas' tables."""

    generation: int
    broker: str  # applied | pending | off
    broker_generation: int | None
    resolvers: str = "unknown"  # applied | pending | unknown (no resolver configured)
    resolver_detail: tuple[ResolverGeneration, ...] = ()  # empty when not polled

    def to_json(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "broker_generation": self.broker_generation,
            "resolvers": self.resolvers,
            "resolver_detail": [
                {
                    "url": r.url,
                    "generation": r.generation,
                    "applied": r.applied(self.generation),
                    "ready": r.ready,
                    "error": r.error,
                }
                for r in self.resolver_detail
            ],
        }


@dataclass(frozen=True)
class RevealedToken:
    token_id: str
    token: str
    fingerprint: str
    created_at: datetime

    def __repr__(self) -> str:
        return f"RevealedToken(token_id={self.token_id!r}, fingerprint={self.fingerprint[:12]!r})"


@dataclass(frozen=True)
class TokenView:
    """What ``GET .../streaming-tokens`` shows: both current tokens in plaintext, grace tokens by id only."""

    environment_id: str
    generation: int
    token_1: RevealedToken
    token_2: RevealedToken
    grace_tokens: tuple[TokenRecord, ...] = ()
    rotation_id: str | None = None
    propagation: Propagation | None = None  # current, never stored with an idempotent result
    only_slot: int | None = None  # show only this token (a deployment's read, or ``?slot=``)

    def to_json(self) -> dict[str, Any]:
        def token(t: RevealedToken) -> dict[str, Any]:
            return {
                "token_id": t.token_id,
                "token": t.token,
                "fingerprint": t.fingerprint,
                "created_at": t.created_at.isoformat(),
            }

        shown = {1: self.only_slot in (None, 1), 2: self.only_slot in (None, 2)}
        return {
            "environment_id": self.environment_id,
            "generation": self.generation,
            "token_1": token(self.token_1) if shown[1] else None,
            "token_2": token(self.token_2) if shown[2] else None,
            "grace_tokens": [
                {
                    "token_id": t.token_id,
                    "fingerprint": t.fingerprint,
                    "created_at": t.created_at.isoformat(),
                    "valid_until": t.valid_until.isoformat() if t.valid_until else None,
                }
                for t in self.grace_tokens
                if self.only_slot is None
            ],
            "rotation_id": self.rotation_id,
            **({"propagation": self.propagation.to_json()} if self.propagation is not None else {}),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> TokenView:
        def token(d: dict[str, Any]) -> RevealedToken:
            return RevealedToken(
                d["token_id"], d["token"], d["fingerprint"], datetime.fromisoformat(d["created_at"])
            )

        return TokenView(
            environment_id=data["environment_id"],
            generation=data["generation"],
            token_1=token(data["token_1"]),
            token_2=token(data["token_2"]),
            grace_tokens=tuple(
                TokenRecord(
                    token_id=g["token_id"],
                    slot=1,
                    fingerprint=g["fingerprint"],
                    created_at=datetime.fromisoformat(g["created_at"]),
                    valid_until=datetime.fromisoformat(g["valid_until"]),
                )
                for g in data.get("grace_tokens", [])
            ),
            rotation_id=data.get("rotation_id"),
        )


# -- helpers ----------------------------------------------------------------------------------------------


def _require(tx: StoreTx, env_id: str, *, for_update: bool = False) -> Environment:
    try:
        validate_environment_id(env_id)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    env = tx.environment(env_id, for_update=for_update)
    if env is None:
        raise NotFound(f"environment {env_id!r} does not exist")
    return env


def usage_client_json(client: UsageClient) -> dict[str, Any]:
    return {
        "address": client.address,
        "user_agent": client.user_agent,
        "deployment_id": client.deployment_id,
        "source": client.source,
        "last_seen_at": client.last_seen_at.isoformat(),
        "uses": client.uses,
    }


def _check_unused(tx: StoreTx, env: Environment, now: datetime, window_seconds: int) -> None:
    """Raise :class:`TokenInUse` when Token 1 was used (by anyone) within the last ``window_seconds``."""
    since = now - timedelta(seconds=window_seconds)
    usage = tx.token_usage([env.token_1.token_id], since).get(env.token_1.token_id)
    if usage is None or usage.last_used_at is None or usage.last_used_at < since:
        return
    clients = [usage_client_json(c) for c in usage.clients]
    raise TokenInUse(
        f"Token 1 ({env.token_1.token_id}) of {env.id!r} was last used at {usage.last_used_at.isoformat()}, "
        f"within the last {window_seconds} s, by {len(clients)} client(s) listed in 'clients'; nothing was "
        "rotated. Move them to Token 2 first, or rotate with force",
        clients,
    )


def _store_transition(
    deps: Deps,
    tx: StoreTx,
    transition: Transition,
    action: str,
    actor: str,
    pat_id: str | None,
    detail: dict[str, str | int | None] | None = None,
) -> None:
    after = transition.after
    now = after.last_change.at
    ciphertexts = {t.record.token_id: deps.cipher.encrypt(t.value) for t in transition.issued}
    tx.save(transition, ciphertexts)
    tx.add_outbox(after.id, after.generation, encode_event(domain.to_event(after)), now)
    tx.add_audit(
        AuditEntry(
            at=now,
            actor=actor,
            action=action,
            environment_id=after.id,
            token_ids=tuple(t.record.token_id for t in transition.issued) + transition.ended,
            detail={
                "generation": after.generation,
                "rotation_id": after.last_change.rotation_id,
                **(detail or {}),
            },
            pat_id=pat_id,
        )
    )


def _view(deps: Deps, tx: StoreTx, env: Environment, issued: dict[str, str] | None = None) -> TokenView:
    known = dict(issued or {})
    missing = [t.token_id for t in (env.token_1, env.token_2) if t.token_id not in known]
    if missing:
        for token_id, ciphertext in tx.ciphertexts(missing).items():
            known[token_id] = deps.cipher.decrypt(ciphertext)

    def reveal(t: TokenRecord) -> RevealedToken:
        return RevealedToken(t.token_id, known[t.token_id], t.fingerprint, t.created_at)

    return TokenView(
        environment_id=env.id,
        generation=env.generation,
        token_1=reveal(env.token_1),
        token_2=reveal(env.token_2),
        grace_tokens=tuple(t for t in env.grace_tokens if t in env.valid_at(deps.clock())),
        rotation_id=env.last_change.rotation_id,
    )


def _propagation(deps: Deps, tx: StoreTx, env_id: str, generation: int) -> Propagation:
    """The broker's part (from the store); resolvers "pending" (not polled here) or "unknown"."""
    applied = tx.broker_generation(env_id)
    if not deps.broker_enforced:
        state = "off"
    elif applied is not None and applied >= generation:
        state = "applied"
    else:
        state = "pending"
    resolvers = "unknown" if deps.resolvers is None or not deps.resolvers.urls else "pending"
    return Propagation(generation=generation, broker=state, broker_generation=applied, resolvers=resolvers)


def _poll_resolvers(deps: Deps, env_id: str, propagation: Propagation) -> Propagation:
    """Ask every resolver replica (outside any transaction: a slow replica must not hold the database)."""
    if deps.resolvers is None or not deps.resolvers.urls:
        return propagation
    answers = tuple(deps.resolvers.generations(env_id))
    applied = bool(answers) and all(a.applied(propagation.generation) for a in answers)
    return replace(propagation, resolvers="applied" if applied else "pending", resolver_detail=answers)


def _log_change(event: str, transition: Transition) -> None:
    after = transition.after
    log.info(
        event,
        environment_id=after.id,
        generation=after.generation,
        rotation_id=after.last_change.rotation_id,
        actor=after.last_change.actor,
        token_1=after.token_1.token_id,
        token_1_fingerprint=after.token_1.fingerprint,
        token_2=after.token_2.token_id,
        token_2_fingerprint=after.token_2.fingerprint,
        ended=list(transition.ended),
    )


# -- commands ---------------------------------------------------------------------------------------------


def create_environment(
    deps: Deps, org: str, project: str, name: str, *, actor: str, pat_id: str | None = None
) -> Environment:
    now = deps.clock()
    try:
        env_id = environment_id(org, project, name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    try:
        with deps.store.transaction() as tx:
            tx.lock_environment_ids()  # the nesting check below reads other rows: one creation at a time
            existing = tx.environment(env_id, for_update=True)
            if existing is not None:
                if (existing.org, existing.project, existing.name) != (org, project, name):
                    raise Conflict(
                        f"environment id {env_id!r} is already used by org {existing.org!r}, project "
                        f"{existing.project!r}, environment {existing.name!r}; ids are "
                        "'{org}-{project}-{environment}', so choose other names"
                    )
                raise Conflict(f"environment {env_id!r} already exists")
            if tx.topic_purge_pending(env_id):
                raise Conflict(
                    f"environment id {env_id!r} was purged and its topics are still being deleted at the "
                    "broker; it can be created again once that is done (the relay retries while the broker "
                    "is unreachable), so try again shortly"
                )
            before = tx.deleted_names(env_id)
            if before is not None and before != (org, project, name) and not tx.purged(env_id):
                # Its topics and subscriptions may still exist: other names must not inherit them.
                raise Conflict(
                    f"environment id {env_id!r} belonged to org {before[0]!r}, project {before[1]!r}, "
                    f"environment {before[2]!r}, which was deleted; its topics and subscriptions may "
                    "still exist, so other names may take the id only after an admin purged it "
                    f"(DELETE /v1/environments/{env_id}?purge=true)"
                )
            nested = tx.nested_environment_ids(env_id)
            if nested:
                raise Conflict(
                    f"environment id {env_id!r} cannot exist beside {nested[0]!r}: one id would be a prefix "
                    "of the other's topic ids, so each could reach the other's topics; choose other names"
                )
            previous = tx.deleted_generation(env_id) or 0
            transition = domain.create_environment(
                org,
                project,
                name,
                actor=actor,
                now=now,
                factory=deps.token_factory,
                previous_generation=previous,
            )
            _store_transition(deps, tx, transition, "create", actor, pat_id)
    except StoreConflict:
        raise Conflict(f"environment {env_id!r} already exists") from None
    deps.wakeup.wake()
    deps.metrics.changes.labels("created").inc()
    _log_change("environment_created", transition)
    return transition.after


def list_environments(deps: Deps, only: Sequence[str] | None = None) -> list[Environment]:
    """Every environment, or (``only``) those of a PAT limited to environments."""
    with deps.store.transaction() as tx:
        found = tx.environments()
    return found if only is None else [e for e in found if e.id in set(only)]


def get_environment(deps: Deps, env_id: str) -> Environment:
    with deps.store.transaction() as tx:
        return _require(tx, env_id)


def reveal_tokens(
    deps: Deps, env_id: str, *, actor: str, pat_id: str | None = None, slot: int | None = None
) -> TokenView:
    """Both current tokens (or, ``slot``, only that one), audit-logged. The resolvers are not polled here
    (agents call this): ``propagation.resolvers`` is "pending" or "unknown"; ask :func:`propagation`."""
    with deps.store.transaction() as tx:
        env = _require(tx, env_id)
        view = _view(deps, tx, env)
        broker_state = _propagation(deps, tx, env.id, env.generation)
        shown = {1: (env.token_1.token_id,), 2: (env.token_2.token_id,)}.get(
            slot or 0, (env.token_1.token_id, env.token_2.token_id)
        )
        tx.add_audit(
            AuditEntry(
                at=deps.clock(),
                actor=actor,
                action="reveal",
                environment_id=env.id,
                token_ids=shown,
                detail={"generation": env.generation, **({"slot": slot} if slot else {})},
                pat_id=pat_id,
            )
        )
    log.info("tokens_revealed", environment_id=env.id, actor=actor, generation=env.generation, slot=slot)
    return replace(view, propagation=broker_state, only_slot=slot)


def _request_hash(operation: str, **fields: Any) -> str:
    body = json.dumps({"operation": operation, **fields}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _replay(
    deps: Deps,
    tx: StoreTx,
    env_id: str,
    key: str,
    request_hash: str,
    operation: str,
    actor: str,
    pat_id: str | None,
    now: datetime,
) -> TokenView | None:
    """The answer kept for this Idempotency-Key (a display again, so audited), or None for a new key."""
    prior = tx.idempotent_result(env_id, key)
    if prior is None:
        return None
    if prior.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was already used with a different request on this environment; send a "
            "new key for a new request"
        )
    log.info("idempotent_replay", environment_id=env_id, operation=operation, actor=actor)
    replayed = TokenView.from_json(json.loads(deps.cipher.decrypt(prior.response_ciphertext)))
    tx.add_audit(
        AuditEntry(
            at=now,
            actor=actor,
            action="reveal",
            environment_id=env_id,
            token_ids=(replayed.token_1.token_id, replayed.token_2.token_id),
            detail={"generation": replayed.generation, "replay_of": operation},
            pat_id=pat_id,
        )
    )
    return replace(replayed, propagation=_propagation(deps, tx, env_id, replayed.generation))


def _transition(
    deps: Deps, env: Environment, operation: str, *, actor: str, now: datetime, grace_seconds: int
) -> Transition:
    """The domain's rotation or revocation of ``env``; its refusals as handler errors."""
    rotation_id = f"rot_{uuid.uuid4().hex[:16]}"
    try:
        if operation == "rotate":
            return domain.rotate(
                env,
                actor=actor,
                now=now,
                rotation_id=rotation_id,
                grace=timedelta(seconds=grace_seconds),
                factory=deps.token_factory,
                max_grace_tokens=deps.max_grace_tokens,
            )
        return domain.revoke(env, actor=actor, now=now, rotation_id=rotation_id, factory=deps.token_factory)
    except domain.GraceLimitReached as exc:
        raise Conflict(str(exc)) from None
    except domain.DomainError as exc:
        raise Invalid(str(exc)) from None


def _change_tokens(
    deps: Deps,
    env_id: str,
    operation: str,
    *,
    actor: str,
    pat_id: str | None,
    idempotency_key: str | None,
    grace_seconds: int = 0,
    expected_generation: int | None = None,
    if_unused_seconds: int | None = None,
    force: bool = False,
) -> TokenView:
    request_hash = _request_hash(
        operation,
        grace_period_seconds=grace_seconds,
        **({"expected_generation": expected_generation} if expected_generation is not None else {}),
        **({"if_unused_seconds": if_unused_seconds} if if_unused_seconds is not None else {}),
        **({"force": True} if force else {}),
    )
    now = deps.clock()
    issued: list[str] = []  # token ids only this change creates: how a cut-off commit is read back
    try:
        with deps.store.transaction() as tx:
            env = _require(tx, env_id, for_update=True)
            if idempotency_key is not None:
                replayed = _replay(
                    deps, tx, env_id, idempotency_key, request_hash, operation, actor, pat_id, now
                )
                if replayed is not None:
                    return replayed
            if expected_generation is not None and expected_generation != env.generation:
                raise PreconditionFailed(
                    f"environment {env_id!r} is at generation {env.generation}, not {expected_generation}: "
                    f"it changed since it was read, so nothing was done; read it again and retry if still "
                    f"meant",
                    env.generation,
                )
            detail: dict[str, str | int | None] = {}
            if if_unused_seconds is not None:
                detail["if_unused_seconds"] = if_unused_seconds
                try:
                    _check_unused(tx, env, now, if_unused_seconds)
                except TokenInUse as exc:
                    if not force:
                        raise
                    detail["forced_in_use_clients"] = len(exc.clients)
                    log.info(
                        "rotation_forced_in_use", environment_id=env_id, actor=actor, clients=len(exc.clients)
                    )
            transition = _transition(deps, env, operation, actor=actor, now=now, grace_seconds=grace_seconds)
            issued.extend(t.record.token_id for t in transition.issued)
            _store_transition(deps, tx, transition, operation, actor, pat_id, detail)
            view = _view(deps, tx, transition.after, {t.record.token_id: t.value for t in transition.issued})
            if idempotency_key is not None:
                ciphertext = deps.cipher.encrypt(json.dumps(view.to_json()))
                tx.save_idempotent_result(
                    env_id, idempotency_key, IdempotentResult(request_hash, ciphertext), now
                )
            view = replace(view, propagation=_propagation(deps, tx, env_id, transition.after.generation))
    except CommitOutcomeUnknown as exc:
        if not issued:
            raise
        _settle_cut_off_commit(deps, exc, env_id, operation, issued[0])
    deps.wakeup.wake()
    deps.metrics.changes.labels("rotated" if operation == "rotate" else "revoked").inc()
    if operation == "rotate":
        deps.metrics.rotations.inc()
    _log_change("tokens_rotated" if operation == "rotate" else "tokens_revoked", transition)
    return view


def _settle_cut_off_commit(
    deps: Deps, exc: CommitOutcomeUnknown, env_id: str, operation: str, marker: str
) -> None:
    """A commit cut off by a lost connection is read back: the new token ``marker`` exists only if it
    landed (read under the environment's row lock, so an unfinished commit is waited for, not missed).
    Returns when it did (the caller answers as usual); raises the database error when it did not (a plain
    503: nothing changed, retry) and ``exc`` when the database stayed away or the lock was not released
    within the wait (a 503 saying to read before retrying)."""

    def read(tx: StoreTx) -> bool:
        # The environment's row lock first: a commit the server has not finished (a synchronous standby,
        # a connection cut by the network rather than a crash) still holds it, and is waited for.
        tx.environment(env_id, for_update=True)
        return bool(tx.ciphertexts([marker]))

    landed = deps.store.read_back(read, deps.commit_read_back_s)
    log.warning(
        "commit_cut_off",
        environment_id=env_id,
        operation=operation,
        token_id=marker,
        landed={True: "yes", False: "no", None: "unknown"}[landed],
        detail=str(exc),
    )
    if landed is None:
        raise exc
    if not landed:
        raise exc.__cause__ or exc


def rotate_tokens(
    deps: Deps,
    env_id: str,
    *,
    actor: str,
    pat_id: str | None = None,
    grace_seconds: int = 0,
    idempotency_key: str | None = None,
    expected_generation: int | None = None,
    if_unused_seconds: int | None = None,
    force: bool = False,
) -> TokenView:
    """Rotate; with ``if_unused_seconds``, only if Token 1 was not used within that window (else
    :class:`TokenInUse` listing its clients), unless ``force``."""
    return _change_tokens(
        deps,
        env_id,
        "rotate",
        actor=actor,
        pat_id=pat_id,
        idempotency_key=idempotency_key,
        grace_seconds=grace_seconds,
        expected_generation=expected_generation,
        if_unused_seconds=if_unused_seconds,
        force=force,
    )


def revoke_tokens(
    deps: Deps,
    env_id: str,
    *,
    actor: str,
    pat_id: str | None = None,
    idempotency_key: str | None = None,
    expected_generation: int | None = None,
) -> TokenView:
    return _change_tokens(
        deps,
        env_id,
        "revoke",
        actor=actor,
        pat_id=pat_id,
        idempotency_key=idempotency_key,
        expected_generation=expected_generation,
    )


def delete_environment(
    deps: Deps, env_id: str, *, actor: str, pat_id: str | None = None, purge: bool = False
) -> None:
    """End the environment and its tokens (a tombstone goes out). ``purge``: also let the id be created
    again under other names; an id already deleted can be purged later the same way. A purge also records
    that the topics ``{id}-*`` are to be deleted at the broker: the relay does it after the commit (and
    retries while the broker is unreachable), and the id cannot be created again until then."""
    now = deps.clock()
    ended: tuple[str, ...] | None = None  # None: an id deleted before, purged now
    with deps.store.transaction() as tx:
        try:
            validate_environment_id(env_id)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        env = tx.environment(env_id, for_update=True)
        if env is None:
            if not (purge and tx.purge_environment(env_id)):
                raise NotFound(f"environment {env_id!r} does not exist")
            tx.request_topic_purge(env_id, now)
            tx.add_audit(
                AuditEntry(at=now, actor=actor, action="purge", environment_id=env_id, pat_id=pat_id)
            )
        else:
            ended = domain.delete(env)
            tx.mark_deleted(env, now)
            tx.add_outbox(env.id, env.generation, None, now)
            tx.add_audit(
                AuditEntry(
                    at=now,
                    actor=actor,
                    action="delete",
                    environment_id=env.id,
                    token_ids=ended,
                    detail={"generation": env.generation, **({"purge": 1} if purge else {})},
                    pat_id=pat_id,
                )
            )
            if purge:
                tx.purge_environment(env.id)
                tx.request_topic_purge(env.id, now)
    deps.wakeup.wake()
    if ended is None:
        log.info("environment_purged", environment_id=env_id, actor=actor)
        return
    deps.metrics.changes.labels("deleted").inc()
    log.info("environment_deleted", environment_id=env_id, actor=actor, ended=list(ended), purged=purge)


# -- personal access tokens -------------------------------------------------------------------------------


def create_pat(
    deps: Deps,
    subject: str,
    role: str,
    *,
    actor: str,
    pat_id: str | None = None,
    environments: Sequence[str] | None = None,
    actions: Sequence[str] | None = None,
    ttl: timedelta | None = None,
    require_existing: bool = True,
) -> tuple[PatRecord, str]:
    """Record a PAT and return it with its JWT (shown once: only the record is kept)."""
    subject = subject.strip()
    if not subject or len(subject) > MAX_SUBJECT or not subject.isprintable():
        raise Invalid(f"a PAT subject is 1 to {MAX_SUBJECT} printable characters")
    try:
        chosen_role = Role(role)
    except ValueError:
        raise Invalid(f"role must be one of {', '.join(r.value for r in Role)}, not {role!r}") from None
    try:
        envs, chosen_actions = check_scope(chosen_role, environments, actions)
        for env_id in envs or ():
            validate_environment_id(env_id)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    lifetime = ttl if ttl is not None else min(deps.pat_default_ttl, deps.pat_max_ttl)
    if not timedelta(0) < lifetime <= deps.pat_max_ttl:
        raise Invalid(
            f"a PAT lives at most {deps.pat_max_ttl.days} days (STREAMTOKEN_ISSUER_PAT_MAX_TTL_DAYS); "
            f"asked for {lifetime.total_seconds() / 86400:g} days"
        )
    if not deps.jwt_secret:
        raise IssuerError("this issuer has no JWT secret to sign PATs with")
    now = deps.clock()
    jti = new_pat_id()
    record = PatRecord(
        jti=jti,
        subject=subject,
        role=chosen_role.value,
        environments=envs,
        actions=tuple(sorted(chosen_actions)) if chosen_actions is not None else None,
        created_at=now,
        expires_at=now + lifetime,
        created_by=actor,
    )
    with deps.store.transaction() as tx:
        if require_existing:
            missing = [e for e in envs or () if tx.environment(e) is None]
            if missing:
                raise NotFound(f"environment {missing[0]!r} does not exist")
        tx.add_pat(record)
        tx.add_audit(
            AuditEntry(
                at=now,
                actor=actor,
                action="pat_create",
                environment_id=envs[0] if envs and len(envs) == 1 else None,
                detail={"pat": jti, "subject": subject, "role": chosen_role.value},
                pat_id=pat_id,
            )
        )
    token = mint_pat(deps.jwt_secret, subject, chosen_role, lifetime, now=now, jti=jti)
    log.info("pat_created", pat=jti, subject=subject, role=chosen_role.value, actor=actor)
    return record, token


def list_pats(deps: Deps, limit: int, after: str | None = None) -> list[PatRecord]:
    with deps.store.transaction() as tx:
        return tx.pats(limit, after)


def revoke_pat(deps: Deps, jti: str, *, actor: str, pat_id: str | None = None) -> PatRecord:
    now = deps.clock()
    with deps.store.transaction() as tx:
        record = tx.revoke_pat(jti, now)
        if record is None:
            raise NotFound(f"personal access token {jti[:64]!r} does not exist")
        tx.add_audit(
            AuditEntry(
                at=now,
                actor=actor,
                action="pat_revoke",
                environment_id=None,
                detail={"pat": jti, "subject": record.subject},
                pat_id=pat_id,
            )
        )
    deps.pat_revoked(jti)
    log.info("pat_revoked", pat=jti, subject=record.subject, actor=actor)
    return record


def republish_all(
    deps: Deps,
    *,
    actor: str,
    pat_id: str | None = None,
    reconcile_broker: bool = True,
    skip_pending: bool = False,
) -> dict[str, int]:
    """Queue the current state of every environment (and a tombstone for every deleted one) again, and
    (unless ``reconcile_broker`` is False) have the relay reconcile the broker's users and ACLs first.

    ``skip_pending`` (the relay's republish when it found the topic missing or empty): an environment whose
    newest state is already the newest unpublished outbox row of its key gets no second record, since that
    row will put the same state last on the topic anyway. Every other environment is queued as usual, so
    the topic still ends with every environment's newest state; an admin's republish queues everything."""
    now = deps.clock()
    skipped = 0
    with deps.store.transaction() as tx:
        envs = tx.environments(for_update=True)
        deleted = tx.deleted_environment_ids()
        heads = tx.pending_outbox_heads() if skip_pending else {}

        def already_pending(env_id: str, generation: int | None) -> bool:
            head = heads.get(env_id)
            if head is None:
                return False
            head_generation, tombstone = head
            return tombstone if generation is None else not tombstone and head_generation >= generation

        queued_envs = [e for e in envs if not already_pending(e.id, e.generation)]
        queued_deleted = [e for e in deleted if not already_pending(e, None)]
        skipped = len(envs) - len(queued_envs) + len(deleted) - len(queued_deleted)
        for env in queued_envs:
            tx.add_outbox(env.id, env.generation, encode_event(domain.to_event(env, now=now)), now)
        for env_id in queued_deleted:
            tx.add_outbox(env_id, 0, None, now)
        tx.add_audit(
            AuditEntry(
                at=now,
                actor=actor,
                action="republish",
                environment_id=None,
                detail={
                    "environments": len(queued_envs),
                    "tombstones": len(queued_deleted),
                    **({"already_pending": skipped} if skip_pending else {}),
                },
                pat_id=pat_id,
            )
        )
    if reconcile_broker:
        deps.broker_reconcile()
    deps.wakeup.wake()
    log.info(
        "republish_queued",
        actor=actor,
        environments=len(queued_envs),
        tombstones=len(queued_deleted),
        already_pending=skipped,
    )
    return {"environments": len(queued_envs), "tombstones": len(queued_deleted)}


def audit_log(deps: Deps, environment_id: str | None, limit: int) -> list[AuditEntry]:
    return deps.store.audit_entries(environment_id, limit)


def propagation(deps: Deps, env_id: str) -> Propagation:
    """Whether the broker and every resolver replica hold the environment's current generation yet (no
    token is read; the resolvers are polled now)."""
    with deps.store.transaction() as tx:
        env = _require(tx, env_id)
        state = _propagation(deps, tx, env.id, env.generation)
    return _poll_resolvers(deps, env.id, state)


# -- broker access: what the relay makes the broker match -------------------------------------------------


class StoreAccessSource:
    """:class:`~services.issuer.ports.AccessSource` on the issuer's store: the tokens valid now (grace
    tokens until their ``valid_until``) with their broker passwords, decrypted only here."""

    def __init__(self, store: IssuerStore, cipher: TokenCipher, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._cipher = cipher
        self._clock = clock

    def _access(self, tx: StoreTx, env: Environment, now: datetime) -> EnvironmentAccess:
        valid = env.valid_at(now)
        ciphertexts = tx.ciphertexts([t.token_id for t in valid])
        tokens = tuple(
            (t.token_id, broker_password(self._cipher.decrypt(ciphertexts[t.token_id]))) for t in valid
        )
        ends = [t.valid_until for t in valid if t.valid_until is not None]
        return EnvironmentAccess(env.id, env.generation, tokens, min(ends) if ends else None)

    def current(self, env_ids: Sequence[str]) -> dict[str, EnvironmentAccess]:
        now = self._clock()
        found: dict[str, EnvironmentAccess] = {}
        with self._store.transaction() as tx:
            for env_id in dict.fromkeys(env_ids):
                env = tx.environment(env_id)
                if env is None:  # deleted (or never created): nobody may reach it
                    found[env_id] = EnvironmentAccess(env_id, tx.deleted_generation(env_id) or 0, ())
                else:
                    found[env_id] = self._access(tx, env, now)
        return found

    def everything(self) -> dict[str, EnvironmentAccess]:
        now = self._clock()
        with self._store.transaction() as tx:
            return {env.id: self._access(tx, env, now) for env in tx.environments()}

    def record_applied(self, applied: Sequence[EnvironmentAccess]) -> None:
        now = self._clock()
        with self._store.transaction() as tx:
            for access in applied:
                if access.generation > 0:
                    tx.record_broker_generation(access.environment_id, access.generation, now)


# -- purges: the relay deletes a purged id's topics -------------------------------------------------------


class StoreTopicPurges:
    """:class:`~services.issuer.ports.TopicPurgeSource` on the issuer's store: the purged ids whose topics
    are still to be deleted, each with the topic prefixes of other ids (live or deleted) that extend it —
    the nesting rule keeps such ids from existing, so ``keep`` is empty unless older data holds one."""

    def __init__(self, store: IssuerStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    def pending(self) -> list[TopicPurge]:
        with self._store.transaction() as tx:
            found = []
            for env_id, requested_at in tx.pending_topic_purges():
                longer = [i for i in tx.nested_environment_ids(env_id) if i.startswith(tenant_prefix(env_id))]
                found.append(TopicPurge(env_id, requested_at, tuple(tenant_prefix(i) for i in longer)))
            return found

    def done(self, purge: TopicPurge, deleted: Sequence[str], *, enforced: bool) -> None:
        now = self._clock()
        with self._store.transaction() as tx:
            if not tx.finish_topic_purge(purge.environment_id, purge.requested_at):
                return  # another replica recorded it, or it was purged again (done on a later pass)
            detail: dict[str, str | int | None] = {"topics_deleted": len(deleted)}
            if purge.keep:
                detail["kept_prefixes"] = ",".join(purge.keep)
            if not enforced:
                detail["broker"] = "off"  # this broker enforces nothing: no topic was deleted
            tx.add_audit(
                AuditEntry(
                    at=now,
                    actor="system:relay",
                    action="purge_topics",
                    environment_id=purge.environment_id,
                    detail=detail,
                )
            )
        log.info(
            "environment_topics_purged",
            environment_id=purge.environment_id,
            topics_deleted=len(deleted),
            broker_enforced=enforced,
        )
