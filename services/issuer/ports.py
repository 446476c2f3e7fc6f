"""What the issuer's handlers and relay need from the outside world, as small protocols.

The real adapters live in ``adapters/``; tests pass hand-written fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from services.issuer.domain import Environment, Transition

Clock = Callable[[], datetime]
T = TypeVar("T")


@dataclass(frozen=True)
class OutboxMessage:
    """One record waiting to go to the topic: key = environment id, value = event JSON or None (tombstone)."""

    id: int
    environment_id: str
    generation: int
    payload: bytes | None
    created_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str  # create | reveal | rotate | revoke | delete | purge | purge_topics | republish
    environment_id: str | None
    token_ids: tuple[str, ...] = ()
    detail: dict[str, str | int | None] = field(default_factory=dict)
    pat_id: str | None = None  # the jti of the PAT that did it (None: the system, the bootstrap)


@dataclass(frozen=True)
class PatRecord:
    """A personal access token as the issuer keeps it: never the JWT, only what it may do and until when."""

    jti: str
    subject: str
    role: str  # services.issuer.auth.Role
    environments: tuple[str, ...] | None  # None: every environment
    actions: tuple[str, ...] | None  # None: every action of the role
    created_at: datetime
    expires_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True)
class StoredTokens:
    """Ciphertexts of tokens by token id, as kept at rest."""

    ciphertexts: dict[str, str]


@dataclass(frozen=True)
class IdempotentResult:
    request_hash: str
    response_ciphertext: str


@dataclass(frozen=True)
class UsageClient:
    """One client of a token as the issuer folded it from the usage topic (``shared.usage``)."""

    address: str
    user_agent: str
    deployment_id: str | None
    source: str  # lookup | portal | whoami | heartbeat | notifier
    last_seen_at: datetime
    uses: int  # uses the resolvers counted (at least once: a replayed record counts again)


@dataclass(frozen=True)
class TokenUsage:
    """A token's last use (by anyone) and its clients seen since the window asked for, newest first."""

    token_id: str
    last_used_at: datetime | None
    clients: tuple[UsageClient, ...] = ()


@dataclass(frozen=True)
class RotationSchedule:
    """An environment's scheduled rotation: every ``every_days`` after the last rotation, once Token 1 has
    been unused for ``unused_window_seconds`` (forced ``deadline_days`` after it was due; ``None``: never
    forced), with a warning webhook ``warn_before_seconds`` before it is due."""

    environment_id: str
    every_days: float
    unused_window_seconds: int
    deadline_days: float | None
    warn_before_seconds: int
    grace_period_seconds: int = 0
    warned_generation: int = 0  # the generation whose coming rotation was warned about
    last_outcome: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class StoreConflict(Exception):
    """A write collided with a concurrent one (e.g. two creates of the same environment id)."""


class CommitOutcomeUnknown(Exception):
    """The connection to the database was lost while it committed: the transaction may or may not have
    been applied (PostgreSQL can commit and die before it says so). Read back to know."""


class StoreTx(Protocol):
    """One database transaction. Writes become visible together at commit, or not at all."""

    def environment(self, env_id: str, *, for_update: bool = False) -> Environment | None: ...

    def deleted_generation(self, env_id: str) -> int | None: ...

    def nested_environment_ids(self, env_id: str) -> list[str]:
        """Other ids, deleted ones included, that ``env_id`` extends (``a-b`` for ``a-b-c``) or that extend
        it (``a-b-c-d``): ids that must not exist beside it (see ``shared.ids.hyphen_prefixes``)."""

    def environments(self, *, for_update: bool = False) -> list[Environment]: ...

    def deleted_environment_ids(self) -> list[str]: ...

    def save(self, transition: Transition, ciphertexts: dict[str, str]) -> None: ...

    def mark_deleted(self, env: Environment, at: datetime) -> None:
        """End the environment and its tokens, and forget its idempotency keys: a key reused after the id
        is created again must rotate the new environment, not replay the deleted one's tokens."""

    def ciphertexts(self, token_ids: Sequence[str]) -> dict[str, str]: ...

    def add_outbox(
        self, environment_id: str, generation: int, payload: bytes | None, at: datetime
    ) -> None: ...

    def pending_outbox_heads(self) -> dict[str, tuple[int, bool]]:
        """For each environment with unpublished outbox rows: ``(generation, is_tombstone)`` of the newest
        of them (the state its publication will leave last on the topic)."""
        ...

    def add_audit(self, entry: AuditEntry) -> None: ...

    def idempotent_result(self, env_id: str, key: str) -> IdempotentResult | None: ...

    def save_idempotent_result(
        self, env_id: str, key: str, result: IdempotentResult, at: datetime
    ) -> None: ...

    def lock_environment_ids(self) -> None:
        """Serialise environment creation across the database (PostgreSQL: a transaction-scoped advisory
        lock), so that two concurrent creates cannot both pass the nesting check."""

    def broker_generation(self, env_id: str) -> int | None:
        """The generation of ``env_id`` the broker was last made to match (None: never)."""

    def add_pat(self, record: PatRecord) -> None: ...

    def pat(self, jti: str) -> PatRecord | None: ...

    def pats(self, limit: int, after: str | None = None) -> list[PatRecord]:
        """PATs oldest first, ``limit`` of them, starting after the one whose jti is ``after``."""
        ...

    def revoke_pat(self, jti: str, at: datetime) -> PatRecord | None:
        """Mark the PAT revoked (kept revoked when it already was); None when it is unknown."""
        ...

    def purge_environment(self, env_id: str) -> bool:
        """Let a deleted id be created again with another org/project/name (False: not deleted)."""
        ...

    def deleted_names(self, env_id: str) -> tuple[str, str, str] | None:
        """``(org, project, name)`` of a deleted id (None: not deleted)."""
        ...

    def purged(self, env_id: str) -> bool:
        """The deleted id was purged: it may be created again with another org/project/name."""
        ...

    def record_broker_generation(self, env_id: str, generation: int, at: datetime) -> None:
        """Remember that the broker matches ``generation`` of ``env_id`` (never lowers a recorded one)."""

    def request_topic_purge(self, env_id: str, at: datetime) -> None:
        """Record that the topics ``{env_id}-*`` of the purged id must be deleted at the broker (the relay
        does it, :class:`TopicPurgeSource`); the id cannot be created again until that is done."""
        ...

    def topic_purge_pending(self, env_id: str) -> bool:
        """The id's topics are still to be deleted at the broker."""
        ...

    def pending_topic_purges(self) -> list[tuple[str, datetime]]:
        """``(environment id, requested at)`` of every topic purge not done yet, oldest first."""
        ...

    def finish_topic_purge(self, env_id: str, requested_at: datetime) -> bool:
        """Mark the purge requested at ``requested_at`` done (False: none pending, or requested again
        since, which stays pending)."""
        ...

    def token_usage(self, token_ids: Sequence[str], clients_since: datetime) -> dict[str, TokenUsage]:
        """Usage of these tokens (absent: never used), with the clients seen at or after
        ``clients_since``."""
        ...

    def rotation_schedule(self, env_id: str) -> RotationSchedule | None: ...

    def save_rotation_schedule(self, schedule: RotationSchedule, at: datetime) -> None: ...

    def delete_rotation_schedule(self, env_id: str) -> bool: ...

    def rotation_schedules(self) -> list[RotationSchedule]:
        """Every schedule of an environment that exists."""
        ...


class IssuerStore(Protocol):
    def transaction(self) -> AbstractContextManager[StoreTx]:
        """Raises :class:`CommitOutcomeUnknown` when the commit itself was cut off."""
        ...

    def read_back(self, read: Callable[[StoreTx], T], wait_s: float) -> T | None:
        """``read`` in a new transaction, retried while the database is unavailable for up to ``wait_s``
        seconds: its answer, or None when the database stayed unreachable."""
        ...

    def audit_entries(self, environment_id: str | None, limit: int) -> list[AuditEntry]: ...

    def pat_record(self, jti: str) -> PatRecord | None:
        """One PAT's record, read outside any command (the per-request check)."""
        ...


class OutboxClaim(Protocol):
    messages: list[OutboxMessage]

    def mark_published(self, ids: Sequence[int], at: datetime) -> None: ...


@dataclass(frozen=True)
class Backlog:
    """The outbox rows not yet acknowledged by Kafka: how many, and when the oldest was committed."""

    pending: int
    oldest_created_at: datetime | None


class OutboxStore(Protocol):
    def claim(self, limit: int) -> AbstractContextManager[OutboxClaim]: ...

    def pending_count(self) -> int: ...

    def backlog(self) -> Backlog: ...


class Wakeup(Protocol):
    """Tells the relay that rows were committed (called right after commit)."""

    def wake(self) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """The broker's answer for one outbox message: acknowledged, or the error."""

    message_id: int
    error: str | None
    acknowledged_at: datetime  # when the delivery report arrived
    partition: int | None = None  # where the broker wrote it (acknowledged records only)
    offset: int | None = None


class Publisher(Protocol):
    """Sends outbox messages to the topic and waits for the broker's acknowledgement of each."""

    def publish(self, messages: Sequence[OutboxMessage]) -> list[Delivery]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TopicIdentity:
    """Which topic the broker holds under the control topic's name now: a recreated topic has a new id."""

    topic_id: str
    partitions: tuple[int, ...]


class TopicAdmin(Protocol):
    def ensure_topic(self) -> bool:
        """Create the topic unless it exists; True when this call created it (the broker had lost it)."""
        ...

    def is_empty(self) -> bool:
        """True when the topic holds no record, read by a consumer (not ListOffsets, see BROKER.md)."""
        ...

    def identity(self) -> TopicIdentity | None:
        """The topic's id and partitions (None: the broker says it does not exist). Raises when the broker
        does not answer."""
        ...

    def latest_offsets(self) -> dict[int, int]:
        """The end offset of each partition as ListOffsets says (cheap; wrong on Tansu after multi-record
        batches, so a drop is confirmed with :meth:`high_watermarks`)."""
        ...

    def high_watermarks(self) -> dict[int, int]:
        """The end offset of each partition as fetch responses carry it (a consumer: right everywhere)."""
        ...


@dataclass(frozen=True)
class EnvironmentAccess:
    """Who may reach one environment on the broker now: its valid tokens as ``(token_id, broker password)``.

    ``tokens`` is empty for a deleted (or unknown) environment; ``expires_at`` is the earliest end of a grace
    period among them, when the environment must be synced again."""

    environment_id: str
    generation: int
    tokens: tuple[tuple[str, str], ...] = field(repr=False)
    expires_at: datetime | None = None

    def __repr__(self) -> str:  # never print a password
        ids = [token_id for token_id, _ in self.tokens]
        return (
            f"EnvironmentAccess({self.environment_id!r}, generation={self.generation}, tokens={ids}, "
            f"expires_at={self.expires_at})"
        )


class AccessSource(Protocol):
    """The relay's view of the store for broker access: current valid tokens, and where the broker is."""

    def current(self, env_ids: Sequence[str]) -> dict[str, EnvironmentAccess]: ...

    def everything(self) -> dict[str, EnvironmentAccess]:
        """Every existing environment (deleted ones are absent: reconcile removes what is not listed)."""
        ...

    def record_applied(self, applied: Sequence[EnvironmentAccess]) -> None: ...


class BrokerAccess(Protocol):
    """Makes the broker's SCRAM users and ACLs match the valid tokens (``shared.broker_access``).

    ``tokens`` are ``(token_id, broker_password)``. Both calls are idempotent and raise when the broker
    refuses or cannot be reached; a message never carries a password."""

    enforcing: bool  # False: this broker cannot enforce anything (Tansu), the calls do nothing

    def sync_environment(self, environment_id: str, tokens: Sequence[tuple[str, str]]) -> None:
        """Exactly these tokens reach the environment: missing users and ACLs are created, every tenant
        principal holding ACLs on the ``{environment_id}-`` prefix that is not one of them is removed.
        An empty ``tokens``: the environment was deleted."""
        ...

    def reconcile_all(self, desired: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        """Like :meth:`sync_environment` for every environment at once, and every ``tid_…`` user and
        ``User:tid_…`` ACL not in ``desired`` is deleted."""
        ...

    def delete_topics(self, prefix: str, keep: Sequence[str] = ()) -> list[str]:
        """Delete every topic whose name starts with ``prefix`` (a purged environment's ``{id}-``) except
        those starting with one of ``keep`` (other environments' prefixes that extend it), never the
        control topic nor an internal one; the names deleted. Idempotent (a topic already gone is no
        error); raises when the broker refuses or cannot be reached. A broker that cannot enforce does
        nothing and answers ``[]``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TopicPurge:
    """A purged environment id whose topics are still to be deleted at the broker."""

    environment_id: str
    requested_at: datetime
    keep: tuple[str, ...] = ()  # topic prefixes of other environment ids that extend this one


class TopicPurgeSource(Protocol):
    """The relay's view of the store for purges: what to delete, and where to record that it was done."""

    def pending(self) -> list[TopicPurge]: ...

    def done(self, purge: TopicPurge, deleted: Sequence[str], *, enforced: bool) -> None:
        """Record the purge done and audit it (``purge_topics``, the number of topics deleted)."""
        ...


@dataclass(frozen=True)
class ResolverGeneration:
    """What one resolver replica answered about one environment (``error``: why it answered nothing usable;
    one line, never a secret)."""

    url: str
    generation: int | None
    ready: bool
    error: str | None = None

    def applied(self, generation: int) -> bool:
        """This replica serves ``generation`` (or newer) of the environment now."""
        return (
            self.error is None
            and self.ready
            and self.generation is not None
            and self.generation >= generation
        )


class ResolverProbe(Protocol):
    """Asks every configured resolver replica which generation of an environment it holds."""

    @property
    def urls(self) -> Sequence[str]: ...

    def generations(self, environment_id: str) -> list[ResolverGeneration]:
        """One answer per URL, in the order of ``urls``; never raises for an unreachable replica."""
        ...

    def close(self) -> None: ...
