"""Tokens encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256), so an admin can display them again.

Several keys may be configured (``MultiFernet``): the first encrypts, every one decrypts, so a new key can
be put in front of the old one, everything re-encrypted (``streamtoken admin reencrypt``) and the old key
dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class DecryptionError(RuntimeError):
    """A stored ciphertext does not open with any configured key (wrong encryption key?)."""


_WRONG_KEY = (
    "a stored token does not decrypt with any configured key; check STREAMTOKEN_ISSUER_ENCRYPTION_KEY (keep "
    "the old key listed after the new one until `streamtoken admin reencrypt` ran)"
)


class TokenCipher:
    def __init__(self, keys: str | Sequence[str]) -> None:
        listed = [keys] if isinstance(keys, str) else list(keys)
        if not listed:
            raise ValueError("at least one encryption key is needed")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in listed])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise DecryptionError(_WRONG_KEY) from None

    def reencrypt(self, ciphertext: str) -> str:
        """The same plaintext encrypted with the current (first) key."""
        try:
            return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise DecryptionError(_WRONG_KEY) from None

    def __repr__(self) -> str:
        return "TokenCipher(<keys hidden>)"
