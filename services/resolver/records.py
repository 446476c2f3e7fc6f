"""Decode ``streaming-tokens`` records into what the table takes, fast enough for a million at start.

Two paths, and a record the first one does not take goes to the second:

* ``fast_records``, the replay's bulk path: a whole batch of records is framed into one buffer and read by
  one regular expression that matches only a record written exactly as ``shared.events`` writes it
  (canonical field order, no whitespace, printable ASCII, a version-1 record with two current tokens in
  slots 1 and 2, the value's ``environment_id`` equal to the key, every field's type and length limits).
  Per record it costs one regex scan and no Python objects beyond the six fields the table needs.
* ``decode_record``, one record at a time: the common record read with orjson and cheap shape checks;
  anything else (grace periods, odd or invalid records) through the strict ``shared.events.decode_event``,
  so the verdict (and the error message) on odd records is the shared model's.

``fast_records`` takes only records the shared model accepts, with one exception: it checks ``change.at``
against the ISO 8601 shape pydantic writes (digits in ``YYYY-MM-DDTHH:MM:SS``, optional fraction, ``Z`` or
an offset) but not the ranges or the calendar, so ``2026-13-45T25:00:00Z`` would pass it. The resolver
does not use ``change``. Whatever it leaves goes to ``decode_record``, so the verdict on any record is the
same as before the bulk path existed (tests/unit/resolver/test_bulk_apply.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from services.resolver.table import TokenTuple, tokens_of
from shared.events import TokenStateChanged, decode_event

_EVENT_FIELDS = frozenset(TokenStateChanged.model_fields)
_loads = orjson.loads


class DecodedRecord(NamedTuple):
    environment_id: str
    generation: int | None  # None: tombstone
    tokens: tuple[TokenTuple, ...]


FastRecord = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
"""(environment id, generation digits, Token 1 id, Token 1 fingerprint hex, Token 2 id, Token 2 fingerprint
hex), all bytes; an empty environment id means: decode this record with ``decode_record``."""

_TEXT = rb"[\x20\x21\x23-\x5b\x5d-\x7e]"  # printable ASCII except '"' and backslash: no escapes
_PLAIN = bytes(range(0x20, 0x7F)).replace(b"\\", b"")  # the same set, '"' included


def _record_pattern(text: bytes) -> re.Pattern[bytes]:
    """One frame per record: \\x00 key \\x01 value. The first alternative is the whole canonical record
    (the lookahead pins it to the frame's end) with string characters matched by ``text``; anything else
    is taken by the second, empty-group alternative."""
    return re.compile(
        rb"\x00(?:(" + text + rb"{1,200})\x01"
        rb'\{"schema_version":1,"event_id":"' + text + rb'{1,64}","environment_id":"\1"'
        rb',"org":"' + text + rb'*","project":"' + text + rb'*","environment":"' + text + rb'*"'
        rb',"generation":([1-9]\d{0,18}),"tokens":\['
        rb'\{"slot":1,"token_id":"(' + text + rb'{1,64})","fingerprint":"([^"]{64})","valid_until":null\},'
        rb'\{"slot":2,"token_id":"(' + text + rb'{1,64})","fingerprint":"([^"]{64})","valid_until":null\}\]'
        rb',"change":\{"type":"(?:created|rotated|revoked)","actor":"' + text + rb'{1,200}"'
        rb',"at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)"'
        rb',"rotation_id":(?:null|"' + text + rb'*")\}\}'
        rb"(?=\x00|\Z)|[^\x00]*)"
    )


# Where the batch's bytes are all printable ASCII without backslashes (checked at C speed), '"' is the only
# character a string may not hold, and the cheapest class the regex engine knows, [^"], is exact.
_PLAIN_RECORD = _record_pattern(rb'[^"]')
_STRICT_RECORD = _record_pattern(_TEXT)
_FRAME = (b"\x00", b"", b"\x01", b"")


def fast_records(keys: Sequence[bytes | None], values: Sequence[bytes | None]) -> list[FastRecord] | None:
    """One ``FastRecord`` per record of a batch (in order), or ``None`` if the batch cannot be framed
    (a key or value contains a NUL byte); then decode each record with ``decode_record``.

    The fingerprints are 64 characters other than '"': ``TokenTable.apply_pairs`` checks they are
    lowercase hex and distinct (and that the generation fits 64 bits), and leaves the record to the slow
    path otherwise."""
    count = len(keys)
    parts: list[bytes | None] = [*_FRAME] * count
    parts[1::4] = keys
    parts[3::4] = values
    if None in parts:  # tombstones and keyless records: empty frames, decoded one by one
        parts = [b"" if part is None else part for part in parts]
    frames = b"".join(parts)  # type: ignore[arg-type]  # no None left
    plain = frames.translate(None, _PLAIN) == b"\x00\x01" * count
    found: list[FastRecord] = (_PLAIN_RECORD if plain else _STRICT_RECORD).findall(frames)
    # Every NUL starts a frame: as many results as records means no key or value held a NUL.
    return found if len(found) == count else None


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
        if fast[0] == environment_id:
            return fast  # type: ignore[return-value]  # same shape; skips building a NamedTuple
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


def _fast(value: bytes) -> tuple[str, int, tuple[TokenTuple, ...]] | None:
    """The fields the table needs when the record is plainly valid; ``None`` means: ask the shared model.

    Written for speed (a million records at start): one orjson parse, then only cheap checks of the
    record's shape and of the fields the table uses. Each fingerprint is decoded by the table as 32 bytes
    of hex, which refuses the record otherwise. Grace periods and anything odd take the model's path.
    """
    try:
        data: Any = _loads(value)
        if data.keys() != _EVENT_FIELDS or data["schema_version"] != 1:
            return None
        environment_id = data["environment_id"]
        generation = data["generation"]
        raw_tokens = data["tokens"]
        first, second = raw_tokens
        if first["valid_until"] is not None or second["valid_until"] is not None:
            return None
        slot_1, slot_2 = first["slot"], second["slot"]
        id_1, id_2 = first["token_id"], second["token_id"]
        fp_1, fp_2 = first["fingerprint"], second["fingerprint"]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
    if (
        type(environment_id) is not str
        or not 0 < len(environment_id) <= 200
        or type(generation) is not int
        or generation < 1
        or type(data["change"]) is not dict
        or len(first) != 4
        or len(second) != 4
        or type(slot_1) is not int
        or type(slot_2) is not int
        or slot_1 + slot_2 != 3
        or slot_1 * slot_2 != 2
        or type(id_1) is not str
        or type(id_2) is not str
        or not 0 < len(id_1) <= 64
        or not 0 < len(id_2) <= 64
        or type(fp_1) is not str
        or type(fp_2) is not str
        or len(fp_1) != 64
        or fp_1 == fp_2
    ):
        return None
    return environment_id, generation, ((slot_1, id_1, fp_1, None), (slot_2, id_2, fp_2, None))
