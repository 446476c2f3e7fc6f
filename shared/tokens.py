"""The streaming-token format.

A token is ``stk_`` + 43 base62 characters (256 random bits) + 6 base62 characters of CRC32 checksum,
like GitHub's token format: secret scanners can find leaked tokens by their prefix, and a typo is rejected
by the checksum without any lookup. Only the SHA-256 fingerprint of a token ever leaves the issuer.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

TOKEN_PREFIX = "stk_"
TOKEN_ID_PREFIX = "tid_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
_BODY_LEN = 43  # 62**43 > 2**256
_CHECKSUM_LEN = 6  # 62**6 > 2**32
TOKEN_LENGTH = len(TOKEN_PREFIX) + _BODY_LEN + _CHECKSUM_LEN
# Anything that looks like (part of) a token: what logs, error bodies and topic names must never carry.
TOKEN_PATTERN = re.compile(r"stk_[0-9A-Za-z]{20,}")


def _base62(n: int, width: int) -> str:
    chars = []
    for _ in range(width):
        n, rem = divmod(n, 62)
        chars.append(_ALPHABET[rem])
    if n:
        raise ValueError("number does not fit the width")
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LEN)


def generate_token() -> str:
    """A new streaming token: 256 random bits, the prefix and a checksum."""
    body = _base62(secrets.randbits(256), _BODY_LEN)
    return f"{TOKEN_PREFIX}{body}{_checksum(body)}"


def is_well_formed(token: str) -> bool:
    """True when ``token`` has the prefix, the length, the alphabet and a valid checksum. No lookup."""
    if len(token) != TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
        return False
    rest = token[len(TOKEN_PREFIX) :]
    if any(c not in _INDEX for c in rest):
        return False
    body, checksum = rest[:_BODY_LEN], rest[_BODY_LEN:]
    return secrets.compare_digest(_checksum(body), checksum)


def fingerprint(token: str) -> str:
    """The public SHA-256 hex fingerprint of a token: what Kafka, logs and lookups carry."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token_id() -> str:
    """A public, non-secret identifier for one token (safe to log, show and put on Kafka)."""
    return f"{TOKEN_ID_PREFIX}{secrets.token_hex(8)}"


def redact(token: str) -> str:
    """What may be shown of a token in a message: its prefix and nothing else."""
    return f"{TOKEN_PREFIX}…" if token.startswith(TOKEN_PREFIX) else "…"
