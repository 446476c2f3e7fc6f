"""What the issuer's handlers and relay need from the outside world, as small protocols.

The real adapters live in ``adapters/``; tests pass hand-written fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from services.issuer.domain import Environment, Transition

Clock = Callable[[], datetime]


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
    action: str  # create | reveal | rotate | revoke | delete | republish
    environment_id: str | None
    token_ids: tuple[str, ...] = ()
    detail: dict[str, str | int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredTokens:
    """Ciphertexts of tokens by token id, as kept at rest."""

    ciphertexts: dict[str, str]


@dataclass(frozen=True)
class IdempotentResult:
    request_hash: str
    response_ciphertext: str


class StoreConflict(Exception):
    """A write collided with a concurrent one (e.g. two creates of the same environment id)."""


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

    def add_audit(self, entry: AuditEntry) -> None: ...

    def idempotent_result(self, env_id: str, key: str) -> IdempotentResult | None: ...

    def save_idempotent_result(
        self, env_id: str, key: str, result: IdempotentResult, at: datetime
    ) -> None: ...


class IssuerStore(Protocol):
    def transaction(self) -> AbstractContextManager[StoreTx]: ...

    def audit_entries(self, environment_id: str | None, limit: int) -> list[AuditEntry]: ...


class OutboxClaim(Protocol):
    messages: list[OutboxMessage]

    def mark_published(self, ids: Sequence[int], at: datetime) -> None: ...


class OutboxStore(Protocol):
    def claim(self, limit: int) -> AbstractContextManager[OutboxClaim]: ...

    def pending_count(self) -> int: ...


class Wakeup(Protocol):
    """Tells the relay that rows were committed (called right after commit)."""

    def wake(self) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """The broker's answer for one outbox message: acknowledged, or the error."""

    message_id: int
    error: str | None
    acknowledged_at: datetime  # when the delivery report arrived


class Publisher(Protocol):
    """Sends outbox messages to the topic and waits for the broker's acknowledgement of each."""

    def publish(self, messages: Sequence[OutboxMessage]) -> list[Delivery]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class TopicAdmin(Protocol):
    def ensure_topic(self) -> bool:
        """Create the topic unless it exists; True when this call created it (the broker had lost it)."""
        ...

    def is_empty(self) -> bool:
        """True when the topic holds no record, read by a consumer (not ListOffsets, see BROKER.md)."""
        ...
