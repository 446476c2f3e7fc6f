"""Decode ``streaming-tokens`` records into what the table takes, fast enough for a million at start.

The common case (a well-formed version-1 record exactly as ``shared.events`` writes it) is read with
orjson and checked field by field; anything unusual goes through the strict ``shared.events.decode_event``
so the verdict (and the error message) on odd records is the shared model's.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from services.resolver.table import TokenRef, tokens_of
from shared.events import TokenStateChanged, decode_event

_EVENT_FIELDS = frozenset(TokenStateChanged.model_fields)
_TOKEN_FIELDS = frozenset({"slot", "token_id", "fingerprint", "valid_until"})
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class DecodedRecord(NamedTuple):
    environment_id: str
    generation: int | None  # None: tombstone
    tokens: tuple[TokenRef, ...]


class RecordError(ValueError):
    """A record the resolver cannot apply; the message says why (never contains a token)."""


def decode_record(key: bytes | None, value: bytes | None) -> DecodedRecord:
    """The table's view of one record; raises :class:`RecordError` for a record it must skip."""
    if key is None:
        raise RecordError("record without a key (the key must be the environment id)")
    try:
        environment_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("record key is not UTF-8") from None
    if value is None:
        return DecodedRecord(environment_id, None, ())
    fast = _fast(value)
    if fast is not None:
        event_env, generation, tokens = fast
    else:
        try:
            event = decode_event(value)
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        if event is None:  # pragma: no cover - value is not None here
            return DecodedRecord(environment_id, None, ())
        event_env, generation, tokens = event.environment_id, event.generation, tokens_of(event)
    if event_env != environment_id:
        raise RecordError(f"record key {environment_id[:80]!r} differs from its environment_id")
    return DecodedRecord(environment_id, generation, tokens)


def _fast(value: bytes) -> tuple[str, int, tuple[TokenRef, ...]] | None:
    """The fields the table needs when the record is plainly valid; ``None`` means: ask the shared model."""
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or data.keys() != _EVENT_FIELDS or data["schema_version"] != 1:
        return None
    environment_id, generation, raw_tokens = data["environment_id"], data["generation"], data["tokens"]
    if type(environment_id) is not str or not 0 < len(environment_id) <= 200:
        return None
    if type(generation) is not int or generation < 1 or type(raw_tokens) is not list:
        return None
    if type(data["change"]) is not dict:
        return None
    tokens: list[TokenRef] = []
    current: list[int] = []
    for raw in raw_tokens:
        if type(raw) is not dict or not raw.keys() <= _TOKEN_FIELDS or len(raw) < 3:
            return None
        slot, token_id, fp, until = raw["slot"], raw["token_id"], raw["fingerprint"], raw.get("valid_until")
        if slot not in (1, 2) or type(slot) is not int or type(token_id) is not str or type(fp) is not str:
            return None
        if not 0 < len(token_id) <= 64 or not _FINGERPRINT.fullmatch(fp):
            return None
        if until is None:
            current.append(slot)
            tokens.append(TokenRef(slot, token_id, fp, None))
            continue
        if type(until) is not str or slot != 1:
            return None
        try:
            moment = datetime.fromisoformat(until)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None
        tokens.append(TokenRef(slot, token_id, fp, moment.timestamp()))
    if sorted(current) != [1, 2] or len({t.fingerprint for t in tokens}) != len(tokens):
        return None
    return environment_id, generation, tuple(tokens)
