"""The issuer's rules, free of I/O: an environment, its two tokens, rotation, revocation and grace periods.

An environment always holds exactly one current Token 1 and one current Token 2. Rotation deactivates
Token 1, promotes Token 2 to Token 1 and issues a new Token 2; an emergency revocation replaces both. Either
bumps the generation by one. During an optional grace period the outgoing Token 1 stays valid (slot 1 with
``valid_until``) next to the two current tokens. Only fingerprints and token ids leave this module's values;
plaintext tokens exist only in the :class:`NewToken` objects a transition hands to the caller to store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from shared.events import Change, ChangeType, TokenRef, TokenStateChanged
from shared.ids import environment_id
from shared.tokens import fingerprint, generate_token, new_token_id

Slot = Literal[1, 2]
MAX_GRACE = timedelta(days=7)


class DomainError(ValueError):
    """A command breaks a rule of the domain; the message says which."""


class GraceLimitReached(DomainError):
    """Another token in grace would exceed the environment's cap (resolvers hold at most 255 tokens)."""


DEFAULT_MAX_GRACE_TOKENS = 4


@dataclass(frozen=True)
class TokenRecord:
    """One token of an environment as the issuer keeps it: id, slot and fingerprint, never the value."""

    token_id: str
    slot: Slot
    fingerprint: str
    created_at: datetime
    valid_until: datetime | None = None  # set only for an outgoing Token 1 in its grace period

    @property
    def is_current(self) -> bool:
        return self.valid_until is None


@dataclass(frozen=True)
class NewToken:
    """A token just issued: its record and its plaintext value, which only the store (encrypted) keeps."""

    record: TokenRecord
    value: str

    def __repr__(self) -> str:  # never print the value
        return f"NewToken(token_id={self.record.token_id!r}, slot={self.record.slot})"


TokenFactory = Callable[[], tuple[str, str]]
"""Returns ``(token_id, token_value)`` for a new token."""


def default_token_factory() -> tuple[str, str]:
    return new_token_id(), generate_token()


@dataclass(frozen=True)
class Environment:
    """An environment and its valid tokens after ``generation`` changes."""

    id: str
    org: str
    project: str
    name: str
    generation: int
    tokens: tuple[TokenRecord, ...]
    last_change: Change

    @property
    def token_1(self) -> TokenRecord:
        return _current(self.tokens, 1)

    @property
    def token_2(self) -> TokenRecord:
        return _current(self.tokens, 2)

    @property
    def grace_tokens(self) -> tuple[TokenRecord, ...]:
        return tuple(t for t in self.tokens if not t.is_current)

    def valid_at(self, now: datetime) -> tuple[TokenRecord, ...]:
        """The tokens that authenticate at ``now``: the two current ones and any still in grace."""
        return tuple(t for t in self.tokens if t.valid_until is None or t.valid_until > now)


@dataclass(frozen=True)
class Transition:
    """The outcome of a command: the environment after it, the tokens it issued and the ids it ended."""

    before: Environment | None
    after: Environment
    issued: tuple[NewToken, ...]
    ended: tuple[str, ...]

    @property
    def change(self) -> Change:
        return self.after.last_change


def _current(tokens: tuple[TokenRecord, ...], slot: Slot) -> TokenRecord:
    found = [t for t in tokens if t.slot == slot and t.is_current]
    if len(found) != 1:
        raise DomainError(f"an environment must hold exactly one current Token {slot}, found {len(found)}")
    return found[0]


def _issue(slot: Slot, now: datetime, factory: TokenFactory) -> NewToken:
    token_id, value = factory()
    return NewToken(TokenRecord(token_id, slot, fingerprint(value), now), value)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise DomainError("times must carry a timezone")


def check_invariants(env: Environment) -> None:
    """Raise :class:`DomainError` unless ``env`` satisfies every rule of the domain."""
    env.token_1  # noqa: B018 - each raises when the slot does not hold exactly one current token
    env.token_2  # noqa: B018
    if env.generation < 1:
        raise DomainError("generation starts at 1")
    if any(t.slot != 1 for t in env.grace_tokens):
        raise DomainError("only an outgoing Token 1 may have a grace period")
    if len({t.fingerprint for t in env.tokens}) != len(env.tokens):
        raise DomainError("token fingerprints must be distinct")
    if len({t.token_id for t in env.tokens}) != len(env.tokens):
        raise DomainError("token ids must be distinct")


def create_environment(
    org: str,
    project: str,
    name: str,
    *,
    actor: str,
    now: datetime,
    factory: TokenFactory = default_token_factory,
    previous_generation: int = 0,
) -> Transition:
    """A new environment with a fresh Token 1 and Token 2.

    ``previous_generation`` continues the count of an id that was deleted before, so consumers that still
    remember the old generation accept the new environment's records.
    """
    _require_aware(now)
    env_id = environment_id(org, project, name)
    issued = (_issue(1, now, factory), _issue(2, now, factory))
    after = Environment(
        id=env_id,
        org=org,
        project=project,
        name=name,
        generation=previous_generation + 1,
        tokens=tuple(t.record for t in issued),
        last_change=Change(type=ChangeType.CREATED, actor=actor, at=now),
    )
    check_invariants(after)
    return Transition(None, after, issued, ())


def rotate(
    env: Environment,
    *,
    actor: str,
    now: datetime,
    rotation_id: str,
    grace: timedelta = timedelta(0),
    factory: TokenFactory = default_token_factory,
    max_grace_tokens: int = DEFAULT_MAX_GRACE_TOKENS,
) -> Transition:
    """Deactivate Token 1 (or keep it valid for ``grace``), promote Token 2, issue a new Token 2.

    At most ``max_grace_tokens`` tokens are in grace at once: a rotation with a grace period that would
    add one more is refused (:class:`GraceLimitReached`); one without a grace period always works."""
    _require_aware(now)
    if grace < timedelta(0) or grace > MAX_GRACE:
        raise DomainError(f"grace period must be between 0 and {int(MAX_GRACE.total_seconds())} seconds")
    old_1, old_2 = env.token_1, env.token_2
    still_in_grace = tuple(t for t in env.grace_tokens if t.valid_until is not None and t.valid_until > now)
    if grace > timedelta(0) and len(still_in_grace) >= max_grace_tokens:
        ends = [t.valid_until for t in still_in_grace if t.valid_until is not None]
        first = f", or wait until the first one ends at {min(ends).isoformat()}" if ends else ""
        raise GraceLimitReached(
            f"environment {env.id!r} already has {len(still_in_grace)} tokens in their grace period, the "
            f"most allowed (STREAMTOKEN_ISSUER_MAX_GRACE_TOKENS={max_grace_tokens}); rotate without a grace "
            f"period{first}"
        )
    new_2 = _issue(2, now, factory)
    kept: list[TokenRecord] = [replace(old_2, slot=1), new_2.record, *still_in_grace]
    if grace > timedelta(0):
        kept.append(replace(old_1, valid_until=now + grace))
    ended = [t.token_id for t in env.tokens if t.token_id not in {k.token_id for k in kept}]
    after = replace(
        env,
        generation=env.generation + 1,
        tokens=tuple(kept),
        last_change=Change(type=ChangeType.ROTATED, actor=actor, at=now, rotation_id=rotation_id),
    )
    check_invariants(after)
    return Transition(env, after, (new_2,), tuple(ended))


def revoke(
    env: Environment,
    *,
    actor: str,
    now: datetime,
    rotation_id: str,
    factory: TokenFactory = default_token_factory,
) -> Transition:
    """Emergency: end every token of the environment at once, including any in grace; issue two new ones."""
    _require_aware(now)
    issued = (_issue(1, now, factory), _issue(2, now, factory))
    after = replace(
        env,
        generation=env.generation + 1,
        tokens=tuple(t.record for t in issued),
        last_change=Change(type=ChangeType.REVOKED, actor=actor, at=now, rotation_id=rotation_id),
    )
    check_invariants(after)
    return Transition(env, after, issued, tuple(t.token_id for t in env.tokens))


def delete(env: Environment) -> tuple[str, ...]:
    """Deleting an environment ends all its tokens; the ids that end."""
    return tuple(t.token_id for t in env.tokens)


def to_event(env: Environment, *, now: datetime | None = None) -> TokenStateChanged:
    """The full token state of ``env`` as the event on the topic (fingerprints only).

    Grace tokens already expired at ``now`` are left out: they no longer authenticate.
    """
    tokens = env.tokens if now is None else env.valid_at(now)
    return TokenStateChanged(
        environment_id=env.id,
        org=env.org,
        project=env.project,
        environment=env.name,
        generation=env.generation,
        tokens=tuple(
            TokenRef(slot=t.slot, token_id=t.token_id, fingerprint=t.fingerprint, valid_until=t.valid_until)
            for t in tokens
        ),
        change=env.last_change,
    )
