"""Where the issuer's two secrets come from: the settings, or in dev a file generated in the data dir.

Outside dev (``STREAMTOKEN_ENV=prod``) a missing secret, a weak one, or the development one generated in the
data dir is refused, so a production issuer never runs with a key that sits next to its database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import SecretStr

from shared.settings import RuntimeSettings

ENCRYPTION_KEY_FILE = "issuer-encryption.key"
JWT_SECRET_FILE = "issuer-jwt.secret"
WEAK_SECRETS = frozenset({"changeme", "change-me", "secret", "dev", "development", "streamtoken", "test"})
MIN_JWT_SECRET = 32


class SecretConfigError(RuntimeError):
    """A secret is missing or unfit for this environment; the message says which variable to set."""


def _dev_file(runtime: RuntimeSettings, name: str, make: Callable[[], str]) -> str:
    path = runtime.data_dir / name
    if path.exists():
        return path.read_text().strip()
    runtime.data_dir.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _is_dev_value(runtime: RuntimeSettings, name: str, value: str) -> bool:
    path: Path = runtime.data_dir / name
    return path.exists() and path.read_text().strip() == value


def resolve_encryption_key(configured: SecretStr | None, runtime: RuntimeSettings) -> str:
    """The Fernet key to encrypt tokens at rest."""
    variable = "STREAMTOKEN_ISSUER_ENCRYPTION_KEY"
    if configured is None:
        if runtime.is_dev:
            return _dev_file(runtime, ENCRYPTION_KEY_FILE, lambda: Fernet.generate_key().decode())
        raise SecretConfigError(
            f"{variable} is not set; outside dev the issuer needs an encryption key: generate one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
        )
    key = configured.get_secret_value().strip()
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        raise SecretConfigError(f"{variable} is not a Fernet key (urlsafe base64 of 32 bytes)") from None
    if not runtime.is_dev and _is_dev_value(runtime, ENCRYPTION_KEY_FILE, key):
        raise SecretConfigError(
            f"{variable} is the development key generated in {runtime.data_dir}; set a production key"
        )
    return key


def resolve_jwt_secret(configured: SecretStr | None, runtime: RuntimeSettings) -> str:
    """The HMAC secret that signs and checks personal access tokens."""
    variable = "STREAMTOKEN_ISSUER_JWT_SECRET"
    if configured is None:
        if runtime.is_dev:
            return _dev_file(runtime, JWT_SECRET_FILE, lambda: secrets.token_urlsafe(48))
        raise SecretConfigError(
            f"{variable} is not set; outside dev the issuer needs a secret of at least {MIN_JWT_SECRET} "
            "characters: generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    value = configured.get_secret_value().strip()
    if not runtime.is_dev:
        if len(value) < MIN_JWT_SECRET or value.lower() in WEAK_SECRETS:
            raise SecretConfigError(
                f"{variable} is too weak: use at least {MIN_JWT_SECRET} random characters"
            )
        if _is_dev_value(runtime, JWT_SECRET_FILE, value):
            raise SecretConfigError(
                f"{variable} is the development secret generated in {runtime.data_dir}; set a production one"
            )
    return value
