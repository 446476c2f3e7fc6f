"""The event on the usage topic (``streamtoken.usage``): who used a streaming token, as a resolver saw it.

Each record is keyed by the **token id** and says, for one token, which clients used it lately: their
address, user agent, the deployment id an agent reported (heartbeats), the kind of use (``source``), when
each was last seen and how many uses the resolver counted since its previous record for that client. The
topic is compacted (and its records expire after a week): the issuer folds every record into its database
as it arrives, so a compacted-away record has been counted already.

Never a token: token ids and fingerprints only, and every free text (address, user agent, deployment id)
is scrubbed of anything shaped like a token or broker password before it is encoded. Decoding is strict
like ``shared.events``: unknown fields or versions are a clear :class:`UsageDecodeError`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.events import Fingerprint
from shared.logs import scrub

USAGE_TOPIC = "streamtoken.usage"
USAGE_SCHEMA_VERSION = 1
SUPPORTED_USAGE_VERSIONS = frozenset({1})
# Compacted by token id; records older than a week are dropped too (a token unused for a week has its
# last use in the issuer's database already).
USAGE_TOPIC_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact,delete",
    "retention.ms": str(7 * 24 * 3600 * 1000),
    "retention.bytes": "-1",
    "min.compaction.lag.ms": "0",
}
USAGE_TOPIC_PARTITIONS = 3

Source = Literal["lookup", "portal", "whoami", "heartbeat", "notifier"]
SOURCES: tuple[Source, ...] = ("lookup", "portal", "whoami", "heartbeat", "notifier")
MAX_ADDRESS = 100
MAX_USER_AGENT = 300
MAX_DEPLOYMENT_ID = 100
DEPLOYMENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,100}$"
MAX_CLIENTS_PER_RECORD = 200


class UsageDecodeError(ValueError):
    """A record on the usage topic cannot be read by this build; the message says why."""


def clean_text(value: str, limit: int) -> str:
    """A free-text field as it may go to the topic: printable, no token shapes, at most ``limit``."""
    printable = "".join(c if c.isprintable() else "?" for c in value[: limit * 2])
    return scrub(printable)[:limit]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UsageClient(_Strict):
    """One client of a token: where it came from, what it said it is, and when it was last seen."""

    address: str = Field(max_length=MAX_ADDRESS)
    user_agent: str = Field(max_length=MAX_USER_AGENT)
    deployment_id: str | None = Field(None, pattern=DEPLOYMENT_ID_PATTERN)
    source: Source
    last_seen_at: datetime
    uses: int = Field(ge=1, description="uses counted since this resolver's previous record of the client")

    @field_validator("last_seen_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("last_seen_at must carry a timezone")
        return value

    @field_validator("address", "user_agent")
    @classmethod
    def _no_token(cls, value: str) -> str:
        if scrub(value) != value:
            raise ValueError("must not hold anything shaped like a token")
        return value


class TokenUsage(_Strict):
    """The uses of one token one resolver replica saw since its previous record of the same clients."""

    schema_version: Literal[1] = 1
    token_id: str = Field(min_length=1, max_length=64)
    fingerprint: Fingerprint
    environment_id: str = Field(min_length=1, max_length=200)
    slot: Literal[1, 2] = Field(description="the token's slot in the resolver's table when it was used")
    generation: int = Field(ge=1)
    resolver: str = Field(min_length=1, max_length=100, description="the publishing replica's id")
    published_at: datetime
    clients: tuple[UsageClient, ...] = Field(min_length=1, max_length=MAX_CLIENTS_PER_RECORD)


def encode_usage_key(token_id: str) -> bytes:
    return token_id.encode("utf-8")


def encode_usage(event: TokenUsage) -> bytes:
    return event.model_dump_json().encode("utf-8")


def decode_usage(value: bytes | str | None) -> TokenUsage | None:
    """The event of a record value (``None`` for a tombstone, which nothing writes today)."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise UsageDecodeError(f"usage record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageDecodeError("usage record is not a JSON object")
    version = data.get("schema_version")
    if version not in SUPPORTED_USAGE_VERSIONS:
        raise UsageDecodeError(
            f"unsupported usage schema_version {version!r}; this build reads "
            f"{sorted(SUPPORTED_USAGE_VERSIONS)} - upgrade this service"
        )
    try:
        return TokenUsage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}" for err in exc.errors()
        )
        raise UsageDecodeError(f"invalid usage record: {problems}") from None
