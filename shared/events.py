"""The event on the ``streaming-tokens`` topic (DESIGN.md, "The event").

Every record carries the whole current token state of one environment, keyed by the environment id, so
compaction may drop any older record. A null value (tombstone) means the environment was deleted.
Decoding is strict: unknown fields or schema versions are a clear :class:`EventDecodeError`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the token")]


class EventDecodeError(ValueError):
    """A record on the topic cannot be read by this build; the message says why and what to do."""


class ChangeType(StrEnum):
    CREATED = "created"
    ROTATED = "rotated"
    REVOKED = "revoked"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenRef(_Strict):
    """One valid token of an environment, by its public id and fingerprint (never the token)."""

    slot: Literal[1, 2]
    token_id: str = Field(min_length=1, max_length=64)
    fingerprint: Fingerprint
    valid_until: datetime | None = None

    @field_validator("valid_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("valid_until must carry a timezone")
        return value


class Change(_Strict):
    type: ChangeType
    actor: str = Field(min_length=1, max_length=200)
    at: datetime
    rotation_id: str | None = None


class TokenStateChanged(_Strict):
    """The full token state of one environment after a change, generation by generation."""

    schema_version: Literal[1] = 1
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    environment_id: str = Field(min_length=1, max_length=200)
    org: str
    project: str
    environment: str
    generation: int = Field(ge=1)
    tokens: tuple[TokenRef, ...]
    change: Change

    @model_validator(mode="after")
    def _two_current_tokens(self) -> TokenStateChanged:
        current = sorted(t.slot for t in self.tokens if t.valid_until is None)
        if current != [1, 2]:
            raise ValueError("tokens must hold exactly one current Token 1 and one current Token 2")
        if any(t.slot != 1 for t in self.tokens if t.valid_until is not None):
            raise ValueError("only an outgoing Token 1 may carry valid_until (a grace period)")
        if len({t.fingerprint for t in self.tokens}) != len(self.tokens):
            raise ValueError("token fingerprints must be distinct")
        return self

    def active_tokens(self, now: datetime | None = None) -> tuple[TokenRef, ...]:
        """The tokens that authenticate at ``now``: the two current ones and any still in grace."""
        moment = now or datetime.now(UTC)
        return tuple(t for t in self.tokens if t.valid_until is None or t.valid_until > moment)


def encode_key(environment_id: str) -> bytes:
    return environment_id.encode("utf-8")


def encode_event(event: TokenStateChanged) -> bytes:
    return event.model_dump_json().encode("utf-8")


def decode_event(value: bytes | str | None) -> TokenStateChanged | None:
    """Decode a record value: the event, or ``None`` for a tombstone (the environment was deleted)."""
    if value is None:
        return None
    try:
        version = _peek_version(value)
    except ValueError as exc:
        raise EventDecodeError(f"record is not a JSON object: {exc}") from None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EventDecodeError(
            f"unsupported schema_version {version!r}; this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)} "
            "- upgrade this service to a release that knows the newer schema"
        )
    try:
        return TokenStateChanged.model_validate_json(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}" for err in exc.errors()
        )
        raise EventDecodeError(f"invalid streaming-tokens record: {problems}") from None


def _peek_version(value: bytes | str) -> object:
    import json

    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("expected an object")
    return data.get("schema_version")
