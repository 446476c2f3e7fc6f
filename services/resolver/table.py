"""The resolver's in-memory table: token fingerprint → environment and slot (pure; stdlib and ``shared``).

Rules (DESIGN.md, "The event"): per environment the newest generation wins and an older or equal one is
ignored, a tombstone removes the environment, and an outgoing Token 1 with ``valid_until`` stops matching
at that moment.

Layout, chosen for a million environments in well under 500 MB and no garbage-collector work:

* ``_environments``: environment id → one packed ``bytes`` per environment (generation, then per token its
  slot, SHA-256 digest, optional ``valid_until`` and token id);
* ``_by_prefix``: the first 64 bits of a digest as an ``int`` → environment id (the same ``str`` object as
  the key above). The full digest in the packed state is always compared before a match is returned, so a
  prefix collision can never authenticate a token; colliding prefixes map to a tuple of environment ids.

Neither ``bytes``, ``int`` nor ``str`` is tracked by the cycle collector, so a full table costs no GC time.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from shared.events import TokenStateChanged

_HEADER = struct.Struct("<QB")  # generation, token count
_TOKEN = struct.Struct("<B32sB")  # slot (| _EXPIRES), digest, token-id length
_HEADER_TOKEN = struct.Struct("<QBB32sB")  # _HEADER then the first _TOKEN, in one call
_UNTIL = struct.Struct("<d")  # valid_until, present only when the slot byte carries _EXPIRES
_EXPIRES = 0x80
_NO_EXPIRY = math.nan
_PREFIX_SHIFT = 4  # keep 60 bits: ints below 2**60 are the smaller int objects


class TokenRef(NamedTuple):
    """One token as the table takes it: ``valid_until`` in epoch seconds, ``None`` for a current token."""

    slot: int
    token_id: str
    fingerprint: str  # sha256 hex
    valid_until: float | None = None


TokenTuple = tuple[int, str, str, float | None]
"""A token as plain data: (slot, token_id, sha256 hex fingerprint, valid_until epoch seconds or None)."""


class Match(NamedTuple):
    """What a fingerprint resolves to."""

    environment_id: str
    slot: int
    token_id: str
    generation: int


class ApplyResult(NamedTuple):
    applied: bool
    reason: str  # "new", "replaced", "stale", "deleted", "unknown_deleted"


NEW = ApplyResult(True, "new")
REPLACED = ApplyResult(True, "replaced")
STALE = ApplyResult(False, "stale")
DELETED = ApplyResult(True, "deleted")
UNKNOWN_DELETED = ApplyResult(False, "unknown_deleted")


@dataclass(frozen=True)
class EnvironmentState:
    """The decoded state of one environment as the table holds it (what ``environment`` returns)."""

    environment_id: str
    generation: int
    tokens: tuple[TokenRef, ...]


def _prefix(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big") >> _PREFIX_SHIFT


def _pack(generation: int, tokens: Iterable[TokenTuple]) -> tuple[bytes, Sequence[bytes]]:
    """The packed state and the tokens' digests; raises ``ValueError`` for a malformed token."""
    if type(tokens) is tuple and len(tokens) == 2:
        # The common case, kept short for the cold start: two current tokens in slots 1 and 2.
        (slot_1, id_1, fp_1, until_1), (slot_2, id_2, fp_2, until_2) = tokens
        if until_1 is None and until_2 is None and slot_1 + slot_2 == 3 and slot_1 * slot_2 == 2:
            raw_1, raw_2 = id_1.encode("utf-8"), id_2.encode("utf-8")
            digest_1, digest_2 = bytes.fromhex(fp_1), bytes.fromhex(fp_2)
            if len(digest_1) == 32 == len(digest_2) and 0 < len(raw_1) < 256 and 0 < len(raw_2) < 256:
                packed = b"".join(
                    (
                        _HEADER_TOKEN.pack(generation, 2, slot_1, digest_1, len(raw_1)),
                        raw_1,
                        _TOKEN.pack(slot_2, digest_2, len(raw_2)),
                        raw_2,
                    )
                )
                return packed, (digest_1, digest_2)
    parts = [b""]
    digests: list[bytes] = []
    pack_token, pack_until = _TOKEN.pack, _UNTIL.pack
    for slot, token_id, fingerprint, valid_until in tokens:
        raw_id = token_id.encode("utf-8")
        digest = bytes.fromhex(fingerprint)
        if len(digest) != 32 or not 0 < len(raw_id) < 256 or (slot != 1 and slot != 2):
            raise ValueError("malformed token: slot 1|2, 64 hex characters, a 1-255 byte token id")
        if valid_until is None:
            parts.append(pack_token(slot, digest, len(raw_id)))
        else:
            parts.append(pack_token(slot | _EXPIRES, digest, len(raw_id)))
            parts.append(pack_until(float(valid_until)))
        parts.append(raw_id)
        digests.append(digest)
    parts[0] = _HEADER.pack(generation, len(digests))
    return b"".join(parts), digests


def _unpack(packed: bytes) -> Iterator[tuple[int, bytes, float, str]]:
    _, count = _HEADER.unpack_from(packed, 0)
    offset = _HEADER.size
    for _ in range(count):
        slot, digest, length = _TOKEN.unpack_from(packed, offset)
        offset += _TOKEN.size
        until = _NO_EXPIRY
        if slot & _EXPIRES:
            slot &= ~_EXPIRES
            (until,) = _UNTIL.unpack_from(packed, offset)
            offset += _UNTIL.size
        yield slot, digest, until, packed[offset : offset + length].decode("utf-8")
        offset += length


def _generation(packed: bytes) -> int:
    return int(_HEADER.unpack_from(packed, 0)[0])


class TokenTable:
    """Fingerprint → (environment, slot, token id, generation); apply records in topic order."""

    __slots__ = ("_by_prefix", "_environments", "_fingerprints")

    def __init__(self) -> None:
        self._environments: dict[str, bytes] = {}
        self._by_prefix: dict[int, str | tuple[str, ...]] = {}
        self._fingerprints = 0

    # --- reading -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of environments."""
        return len(self._environments)

    @property
    def fingerprint_count(self) -> int:
        return self._fingerprints

    def generation(self, environment_id: str) -> int | None:
        packed = self._environments.get(environment_id)
        return None if packed is None else _generation(packed)

    def environment(self, environment_id: str) -> EnvironmentState | None:
        packed = self._environments.get(environment_id)
        if packed is None:
            return None
        tokens = tuple(
            TokenRef(slot, token_id, digest.hex(), None if math.isnan(until) else until)
            for slot, digest, until, token_id in _unpack(packed)
        )
        return EnvironmentState(environment_id, _generation(packed), tokens)

    def environments(self) -> Iterator[EnvironmentState]:
        for environment_id in list(self._environments):
            state = self.environment(environment_id)
            if state is not None:
                yield state

    def lookup(self, fingerprint: str, now: float) -> Match | None:
        """The match for a sha256-hex fingerprint at ``now`` (epoch seconds), or ``None``."""
        try:
            digest = bytes.fromhex(fingerprint)
        except ValueError:
            return None
        return self.lookup_digest(digest, now) if len(digest) == 32 else None

    def lookup_digest(self, digest: bytes, now: float) -> Match | None:
        """The match for a raw 32-byte SHA-256 digest at ``now`` (epoch seconds), or ``None``."""
        owner = self._by_prefix.get(int.from_bytes(digest[:8], "big") >> _PREFIX_SHIFT)
        if owner is None:
            return None
        if type(owner) is str:
            # The common case, kept short for the hot path: Token 1 is first and current.
            state = self._environments[owner]
            generation, _, slot, first, length = _HEADER_TOKEN.unpack_from(state, 0)
            if first == digest and not slot & _EXPIRES:
                start = _HEADER_TOKEN.size
                return Match(owner, slot, state[start : start + length].decode("utf-8"), generation)
        for environment_id in (owner,) if isinstance(owner, str) else owner:
            packed = self._environments.get(environment_id)
            if packed is None:
                continue
            for slot, candidate, until, token_id in _unpack(packed):
                if candidate == digest:
                    if not math.isnan(until) and now >= until:
                        return None
                    return Match(environment_id, slot, token_id, _generation(packed))
        return None

    # --- writing -------------------------------------------------------------------------------------

    def apply(
        self, environment_id: str, generation: int | None, tokens: Iterable[TokenTuple] = ()
    ) -> ApplyResult:
        """Apply one record: ``generation=None`` is a tombstone (the environment was deleted)."""
        current = self._environments.get(environment_id)
        if generation is None:
            if current is None:
                return UNKNOWN_DELETED
            self._drop(environment_id, current)
            del self._environments[environment_id]
            return DELETED
        if current is not None and generation <= _generation(current):
            return STALE
        packed, digests = _pack(generation, tokens)
        if current is not None:
            # Every fingerprint is re-added below, so the new key object replaces the old one everywhere.
            self._drop(environment_id, current)
            del self._environments[environment_id]
        self._environments[environment_id] = packed
        by_prefix = self._by_prefix
        for digest in digests:
            prefix = int.from_bytes(digest[:8], "big") >> _PREFIX_SHIFT
            if prefix in by_prefix:
                self._add(prefix, environment_id)
            else:
                by_prefix[prefix] = environment_id
                self._fingerprints += 1
        return NEW if current is None else REPLACED

    def apply_event(self, environment_id: str, event: TokenStateChanged | None) -> ApplyResult:
        """Apply a decoded ``shared.events`` record (``None`` = tombstone) under its Kafka key."""
        if event is None:
            return self.apply(environment_id, None)
        return self.apply(environment_id, event.generation, tokens_of(event))

    def purge_expired(self, now: float) -> int:
        """Forget grace-period tokens whose time has passed; returns how many were removed."""
        removed = 0
        for environment_id, packed in list(self._environments.items()):
            tokens = list(_unpack(packed))
            keep = [t for t in tokens if math.isnan(t[2]) or now < t[2]]
            if len(keep) == len(tokens):
                continue
            self._drop(environment_id, packed)
            new, _ = _pack(
                _generation(packed),
                (TokenRef(s, tid, d.hex(), None if math.isnan(u) else u) for s, d, u, tid in keep),
            )
            self._environments[environment_id] = new
            for _, digest, _, _ in keep:
                self._add(_prefix(digest), environment_id)
            removed += len(tokens) - len(keep)
        return removed

    def _add(self, prefix: int, environment_id: str) -> None:
        owner = self._by_prefix.get(prefix)
        if owner is None:
            self._by_prefix[prefix] = environment_id
        elif isinstance(owner, str):
            if owner == environment_id:
                return
            self._by_prefix[prefix] = (owner, environment_id)
        elif environment_id in owner:
            return
        else:
            self._by_prefix[prefix] = (*owner, environment_id)
        self._fingerprints += 1

    def _drop(self, environment_id: str, packed: bytes) -> None:
        for _, digest, _, _ in _unpack(packed):
            prefix = _prefix(digest)
            owner = self._by_prefix.get(prefix)
            if owner is None:
                continue
            if isinstance(owner, str):
                if owner != environment_id:
                    continue
                del self._by_prefix[prefix]
            else:
                rest = tuple(e for e in owner if e != environment_id)
                if len(rest) == len(owner):
                    continue
                self._by_prefix[prefix] = rest[0] if len(rest) == 1 else rest
            self._fingerprints -= 1


def tokens_of(event: TokenStateChanged) -> tuple[TokenRef, ...]:
    """The table's view of an event's tokens."""
    return tuple(TokenRef(t.slot, t.token_id, t.fingerprint, _epoch(t.valid_until)) for t in event.tokens)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()
