"""Tokens encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256), so an admin can display them again."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken


class DecryptionError(RuntimeError):
    """A stored ciphertext does not open with the configured key (wrong encryption key?)."""


class TokenCipher:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise DecryptionError(
                "a stored token does not decrypt with the configured key; check "
                "STREAMTOKEN_ISSUER_ENCRYPTION_KEY"
            ) from None

    def __repr__(self) -> str:
        return "TokenCipher(<key hidden>)"
