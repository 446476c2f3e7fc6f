"""The resolver's in-memory table: token fingerprint → environment and slot (pure; stdlib and ``shared``).

Rules (DESIGN.md, "The event"): per environment the newest generation wins and an older or equal one is
ignored, a tombstone removes the environment, and an outgoing Token 1 with ``valid_until`` (grace period)
stops matching at that moment.

Layout, chosen for a million environments in about 240 MB and no garbage-collector work (a dict-based
layout measured 434 MB, most of it per-object overhead; docs/benchmarks-resolver.md):

* ``_states``: a list with one packed ``bytes`` per environment (its *row*): generation, environment id,
  then per token its slot, SHA-256 digest, optional ``valid_until`` and token id (``_pack``). A deleted
  environment leaves ``None`` and its row is reused.
* two open-addressing hash tables (linear probing, deletion by backward shift, so no tombstones), each
  one ``array`` of 64-bit slots ``key << 32 | row`` instead of Python objects: 32 bits of the
  environment id's hash → row, and the first 32 bits of each digest → row. The environment id and the
  full digest in the packed state are always compared before a match is returned, so a hash or prefix
  collision can never authenticate a token: colliding entries sit next to each other and the probe
  goes on.

Neither ``array`` nor ``bytes`` is tracked by the cycle collector, so a full table costs no GC time. Both
hash tables grow by doubling (a pause proportional to the table); ``reserve`` sizes them up front for a
known number of environments, which the replica does before its replay.
"""

from __future__ import annotations

import struct
from array import array
from binascii import unhexlify
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from shared.events import TokenStateChanged

# Packed state: _HEAD (generation, environment id length, token count n, expiring token count k), then
# n slot bytes (| _EXPIRES when the token has a valid_until), n x 32-byte SHA-256 digests, n token id
# lengths, k x _UNTIL (valid_until of the expiring tokens, in token order), the environment id, and the
# token ids in token order. Fixed-size parts first: the common state packs in one call (_PAIR_STATE).
_HEAD = struct.Struct("<QHBB")
_UNTIL = struct.Struct("<d")
_PAIR_STATE = struct.Struct("<QHBBBB64sBB")  # two current tokens (slots 1, 2), both digests as one field
_PAIR_FIELDS = struct.Struct("<QHBBBB32s32sBB")  # the same layout, read with the digests apart
_PAIR_KEYS = struct.Struct(">I28xI28x")  # the first 32 bits of both digests of a 64-byte pair of digests
_ROW = 0xFFFFFFFF  # a hash table slot: key << 32 | row, 0 when empty
_HEAD_SIZE = _HEAD.size
_PAIR_SIZE = _PAIR_STATE.size
_EXPIRES = 0x80
_MAX_LOAD = 0.7  # grow a hash table beyond this fill
_MIN_CAPACITY = 16
_GENERATION_LIMIT = 1 << 64
_HEX = b"0123456789abcdef"


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


def _key(digest: bytes) -> int:
    """The token hash table's key: the digest's first 32 bits, odd (a slot of 0 is empty)."""
    return int.from_bytes(digest[:4], "big") | 1


def _env_key(environment: bytes) -> int:
    """The environment hash table's key: 32 bits of the id's hash, odd."""
    return (hash(environment) & _ROW) | 1


def _capacity(entries: int) -> int:
    """The power of two that holds ``entries`` at a fill of at most one half."""
    capacity = _MIN_CAPACITY
    while capacity < 2 * entries:
        capacity *= 2
    return capacity


def _pack(environment: bytes, generation: int, tokens: Iterable[TokenTuple]) -> tuple[bytes, list[bytes]]:
    """The packed state and the tokens' digests; raises ``ValueError`` for a malformed token."""
    slots = bytearray()
    lengths = bytearray()
    untils: list[bytes] = []
    ids: list[bytes] = []
    digests: list[bytes] = []
    for slot, token_id, fingerprint, valid_until in tokens:
        raw_id = token_id.encode("utf-8")
        digest = bytes.fromhex(fingerprint)
        if len(digest) != 32 or not 0 < len(raw_id) < 256 or (slot != 1 and slot != 2):
            raise ValueError("malformed token: slot 1|2, 64 hex characters, a 1-255 byte token id")
        if digest in digests:
            raise ValueError("token fingerprints must be distinct")
        if valid_until is None:
            slots.append(slot)
        else:
            slots.append(slot | _EXPIRES)
            untils.append(_UNTIL.pack(float(valid_until)))
        lengths.append(len(raw_id))
        ids.append(raw_id)
        digests.append(digest)
    if not 0 < len(environment) < 65536 or not 0 < generation < _GENERATION_LIMIT or len(digests) > 255:
        raise ValueError("malformed state: a 1-65535 byte environment id, a 64-bit generation, <= 255 tokens")
    head = _HEAD.pack(generation, len(environment), len(digests), len(untils))
    return b"".join((head, slots, *digests, lengths, *untils, environment, *ids)), digests


def _unpack(state: bytes) -> tuple[str, int, list[tuple[int, bytes, float | None, str]]]:
    """Environment id, generation and tokens (slot, digest, valid_until, token id) of a packed state."""
    generation, env_length, count, expiring = _HEAD.unpack_from(state, 0)
    lengths = _HEAD_SIZE + 33 * count
    untils = lengths + count
    offset = untils + 8 * expiring
    environment_id = state[offset : offset + env_length].decode("utf-8")
    offset += env_length
    tokens = []
    for i in range(count):
        slot = state[_HEAD_SIZE + i]
        digest = state[_HEAD_SIZE + count + 32 * i : _HEAD_SIZE + count + 32 * i + 32]
        until: float | None = None
        if slot & _EXPIRES:
            (until,) = _UNTIL.unpack_from(state, untils)
            untils += _UNTIL.size
        length = state[lengths + i]
        tokens.append((slot & ~_EXPIRES, digest, until, state[offset : offset + length].decode("utf-8")))
        offset += length
    return environment_id, generation, tokens


def _digests(state: bytes) -> list[bytes]:
    count = state[10]  # _HEAD's token count
    start = _HEAD_SIZE + count
    return [state[start + 32 * i : start + 32 * i + 32] for i in range(count)]


def _has_environment(state: bytes, environment: bytes) -> bool:
    _, length, count, expiring = _HEAD.unpack_from(state, 0)
    offset = _HEAD_SIZE + 34 * count + 8 * expiring
    return length == len(environment) and state[offset : offset + length] == environment


class TokenTable:
    """Fingerprint → (environment, slot, token id, generation); apply records in topic order."""

    __slots__ = (
        "_env_mask",
        "_env_slots",
        "_fingerprints",
        "_free",
        "_states",
        "_token_mask",
        "_token_slots",
    )

    def __init__(self, expected_environments: int = 0) -> None:
        self._states: list[bytes | None] = []
        self._free: list[int] = []
        self._fingerprints = 0
        self._env_slots = array("Q")
        self._env_mask = 0
        self._token_slots = array("Q")
        self._token_mask = 0
        self._resize_environments(_capacity(expected_environments))
        self._resize_tokens(_capacity(2 * expected_environments))

    # --- reading -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of environments."""
        return len(self._states) - len(self._free)

    @property
    def fingerprint_count(self) -> int:
        return self._fingerprints

    def reserve(self, environments: int) -> None:
        """Make room for ``environments`` (two tokens each) so that loading them never resizes a hash table
        (a resize re-inserts every entry: about a second per million on the development VM)."""
        if environments > _MAX_LOAD * len(self._env_slots):
            self._resize_environments(_capacity(environments))
        if 2 * environments > _MAX_LOAD * len(self._token_slots):
            self._resize_tokens(_capacity(2 * environments))

    def generation(self, environment_id: str) -> int | None:
        state = self._state(environment_id.encode("utf-8"))
        return None if state is None else int(_HEAD.unpack_from(state, 0)[0])

    def environment(self, environment_id: str) -> EnvironmentState | None:
        state = self._state(environment_id.encode("utf-8"))
        return None if state is None else _environment_state(state)

    def environments(self) -> Iterator[EnvironmentState]:
        for state in list(self._states):
            if state is not None:
                yield _environment_state(state)

    def lookup(self, fingerprint: str, now: float) -> Match | None:
        """The match for a sha256-hex fingerprint at ``now`` (epoch seconds), or ``None``."""
        try:
            digest = bytes.fromhex(fingerprint)
        except ValueError:
            return None
        return self.lookup_digest(digest, now) if len(digest) == 32 else None

    def lookup_digest(self, digest: bytes, now: float) -> Match | None:
        """The match for a raw 32-byte SHA-256 digest at ``now`` (epoch seconds), or ``None``."""
        key = int.from_bytes(digest[:4], "big") | 1
        slots, mask = self._token_slots, self._token_mask
        i = key & mask
        while True:
            found = slots[i]
            if not found:
                return None
            if found >> 32 == key:
                state = self._states[found & _ROW]
                if state is not None:
                    if state[10] == 2 and state[11] == 0:
                        # The common case, kept short for the hot path: two current tokens, no grace.
                        generation, length, _, _, slot_1, slot_2, digest_1, digest_2, length_1, length_2 = (
                            _PAIR_FIELDS.unpack_from(state, 0)
                        )
                        ids = _PAIR_SIZE + length
                        if digest_1 == digest:
                            token_id = state[ids : ids + length_1].decode("utf-8")
                            return Match(state[_PAIR_SIZE:ids].decode("utf-8"), slot_1, token_id, generation)
                        if digest_2 == digest:
                            ids += length_1
                            token_id = state[ids : ids + length_2].decode("utf-8")
                            environment = state[_PAIR_SIZE : _PAIR_SIZE + length].decode("utf-8")
                            return Match(environment, slot_2, token_id, generation)
                    else:
                        match = _match(state, digest, now)
                        if match is not None:
                            return match
            i = (i + 1) & mask

    # --- writing -------------------------------------------------------------------------------------

    def apply(
        self, environment_id: str, generation: int | None, tokens: Iterable[TokenTuple] = ()
    ) -> ApplyResult:
        """Apply one record: ``generation=None`` is a tombstone (the environment was deleted)."""
        environment = environment_id.encode("utf-8")
        if generation is None:
            return self.delete(environment)
        slot, row = self._find(environment)
        if row >= 0:
            current = self._states[row]
            assert current is not None
            if generation <= _HEAD.unpack_from(current, 0)[0]:
                return STALE
        state, digests = _pack(environment, generation, tokens)
        return self._store(environment, slot, row, state, digests)

    def apply_pairs(
        self, records: Sequence[tuple[bytes, bytes, bytes, bytes, bytes, bytes]], start: int = 0
    ) -> tuple[int, int, int, int]:
        """Apply common records (two current tokens, slots 1 and 2) in order, as the replay's bulk path.

        Each record is (UTF-8 environment id, generation as ASCII digits, Token 1 id, Token 1 lowercase hex
        fingerprint, Token 2 id, Token 2 fingerprint), all bytes, as ``records.fast_records`` gives them.
        Applies ``records[start:]`` up to the first record it does not take: an empty environment id, equal
        fingerprints or anything outside the packed layout; the caller applies that one with ``apply``
        (which says why it is refused) and calls again after it. Returns (index where it stopped, new,
        replaced, stale). The same rules as ``apply``, in one loop: per-call overhead was a measured share
        of the load time.
        """
        self.reserve(len(self) + len(records) - start)
        states, free = self._states, self._free
        env_slots, env_mask = self._env_slots, self._env_mask
        slots, mask = self._token_slots, self._token_mask
        pack, key_pair, join, head = _PAIR_STATE.pack, _PAIR_KEYS.unpack, b"".join, _HEAD.unpack_from
        new = replaced = stale = 0
        index = start
        for environment, digits, token_id_1, fingerprint_1, token_id_2, fingerprint_2 in records[start:]:
            if not environment or fingerprint_1 == fingerprint_2 or len(fingerprint_1) != 64:
                break
            both = fingerprint_1 + fingerprint_2
            if both.translate(None, _HEX):  # not lowercase hex: the slow path says why
                break
            generation = int(digits)
            key = (hash(environment) & _ROW) | 1
            slot = key & env_mask
            row = -1
            while True:
                found = env_slots[slot]
                if not found:
                    break
                if found >> 32 == key:
                    state = states[found & _ROW]
                    if state is not None and _has_environment(state, environment):
                        row = found & _ROW
                        break
                slot = (slot + 1) & env_mask
            if row >= 0:
                current = states[row]
                assert current is not None
                if generation <= head(current, 0)[0]:
                    stale += 1
                    index += 1
                    continue
            try:
                digests = unhexlify(both)
                head_and_tokens = pack(
                    generation, len(environment), 2, 0, 1, 2, digests, len(token_id_1), len(token_id_2)
                )
            except (ValueError, struct.error):  # out of the packed layout's range: the slow path says why
                break
            index += 1
            state = join((head_and_tokens, environment, token_id_1, token_id_2))
            if row >= 0:
                current = states[row]
                assert current is not None
                self._drop_tokens(current, row)
                states[row] = state
                replaced += 1
            else:
                if free:
                    row = free.pop()
                    states[row] = state
                else:
                    row = len(states)
                    states.append(state)
                env_slots[slot] = key << 32 | row
                new += 1
            key_1, key_2 = key_pair(digests)
            key_1 |= 1
            i = key_1 & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = key_1 << 32 | row
            key_2 |= 1
            i = key_2 & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = key_2 << 32 | row
        self._fingerprints += 2 * (new + replaced)
        return index, new, replaced, stale

    def delete(self, environment: bytes) -> ApplyResult:
        """A tombstone for the UTF-8 environment id ``environment``."""
        slot, row = self._find(environment)
        if row < 0:
            return UNKNOWN_DELETED
        current = self._states[row]
        assert current is not None
        self._drop_tokens(current, row)
        self._states[row] = None
        self._free.append(row)
        self._remove(self._env_slots, self._env_mask, slot)
        return DELETED

    def apply_event(self, environment_id: str, event: TokenStateChanged | None) -> ApplyResult:
        """Apply a decoded ``shared.events`` record (``None`` = tombstone) under its Kafka key."""
        if event is None:
            return self.apply(environment_id, None)
        return self.apply(environment_id, event.generation, tokens_of(event))

    def purge_expired(self, now: float) -> int:
        """Forget grace-period tokens whose time has passed; returns how many were removed."""
        removed = 0
        for row, state in enumerate(list(self._states)):
            if state is None:
                continue
            environment_id, generation, tokens = _unpack(state)
            keep = [t for t in tokens if t[2] is None or now < t[2]]
            if len(keep) == len(tokens):
                continue
            environment = environment_id.encode("utf-8")
            new, digests = _pack(environment, generation, ((s, i, d.hex(), u) for s, d, u, i in keep))
            slot, _ = self._find(environment)
            self._store(environment, slot, row, new, digests)
            removed += len(tokens) - len(keep)
        return removed

    # --- the hash tables -----------------------------------------------------------------------------

    def _find(self, environment: bytes) -> tuple[int, int]:
        """(slot, row) of an environment; (free slot for it, -1) when absent."""
        key = _env_key(environment)
        slots, mask, states = self._env_slots, self._env_mask, self._states
        i = key & mask
        while True:
            found = slots[i]
            if not found:
                return i, -1
            if found >> 32 == key:
                row = found & _ROW
                state = states[row]
                if state is not None and _has_environment(state, environment):
                    return i, row
            i = (i + 1) & mask

    def _state(self, environment: bytes) -> bytes | None:
        _, row = self._find(environment)
        return None if row < 0 else self._states[row]

    def _store(
        self, environment: bytes, slot: int, row: int, state: bytes, digests: Sequence[bytes]
    ) -> ApplyResult:
        """Put ``state`` in ``row`` (an environment found by ``_find``) or, with ``row < 0``, a new row."""
        if row >= 0:
            current = self._states[row]
            assert current is not None
            self._drop_tokens(current, row)
            self._states[row] = state
            result = REPLACED
        else:
            if self._free:
                row = self._free.pop()
                self._states[row] = state
            else:
                row = len(self._states)
                self._states.append(state)
            self._env_slots[slot] = _env_key(environment) << 32 | row
            if len(self) > _MAX_LOAD * len(self._env_slots):
                self._resize_environments(2 * len(self._env_slots))
            result = NEW
        if self._fingerprints + len(digests) > _MAX_LOAD * len(self._token_slots):
            self._resize_tokens(2 * len(self._token_slots))
        slots, mask = self._token_slots, self._token_mask
        for digest in digests:
            key = _key(digest)
            i = key & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = key << 32 | row
        self._fingerprints += len(digests)
        return result

    def _drop_tokens(self, state: bytes, row: int) -> None:
        slots, mask = self._token_slots, self._token_mask
        for digest in _digests(state):
            key = _key(digest)
            entry = key << 32 | row
            i = key & mask
            while True:
                found = slots[i]
                if not found:
                    break  # pragma: no cover - every digest of a stored state is in the table
                if found == entry:
                    self._remove(slots, mask, i)
                    self._fingerprints -= 1
                    break
                i = (i + 1) & mask

    @staticmethod
    def _remove(slots: array[int], mask: int, i: int) -> None:
        """Empty slot ``i`` of a linear-probing table, shifting later entries of its run back."""
        j = i
        while True:
            j = (j + 1) & mask
            found = slots[j]
            if not found:
                break
            home = (found >> 32) & mask
            # The entry at j may move to i unless its home lies cyclically in (i, j].
            if (home <= i or home > j) if i <= j else (i >= home > j):
                slots[i] = found
                i = j
        slots[i] = 0

    def _resize_environments(self, capacity: int) -> None:
        old, self._env_slots = self._env_slots, array("Q", [0]) * capacity
        self._env_mask = capacity - 1
        self._rehash(old, self._env_slots)

    def _resize_tokens(self, capacity: int) -> None:
        old, self._token_slots = self._token_slots, array("Q", [0]) * capacity
        self._token_mask = capacity - 1
        self._rehash(old, self._token_slots)

    @staticmethod
    def _rehash(old: array[int], slots: array[int]) -> None:
        mask = len(slots) - 1
        for found in old:
            if found:
                i = (found >> 32) & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = found


def _environment_state(state: bytes) -> EnvironmentState:
    environment_id, generation, tokens = _unpack(state)
    return EnvironmentState(
        environment_id,
        generation,
        tuple(TokenRef(slot, token_id, digest.hex(), until) for slot, digest, until, token_id in tokens),
    )


def _match(state: bytes, digest: bytes, now: float) -> Match | None:
    """The match of ``digest`` in one packed state, honouring grace periods."""
    environment_id, generation, tokens = _unpack(state)
    for slot, candidate, until, token_id in tokens:
        if candidate == digest:
            if until is not None and now >= until:
                return None
            return Match(environment_id, slot, token_id, generation)
    return None


def tokens_of(event: TokenStateChanged) -> tuple[TokenRef, ...]:
    """The table's view of an event's tokens."""
    return tuple(TokenRef(t.slot, t.token_id, t.fingerprint, _epoch(t.valid_until)) for t in event.tokens)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()
