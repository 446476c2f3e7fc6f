"""Where the issuer's two secrets come from: the settings, or in dev a file generated in the data dir.

A weak JWT secret is refused in every mode. Outside dev (``STREAMTOKEN_ENV=prod``) a missing secret or the
development one generated in the data dir is refused too, so a production issuer never runs with a key that
sits next to its database. Secret files are read only when their owner is the current user and no one else
may read them (mode 0600).
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


def read_secret_file(path: Path) -> str:
    """A secret file's content, after checking that only its owner, the current user, can read it."""
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SecretConfigError(
            f"{path} belongs to uid {info.st_uid}, not to the user running this (uid {os.getuid()}); a "
            "secret file must be owned by the issuer's user"
        )
    if info.st_mode & 0o077:
        raise SecretConfigError(
            f"{path} has mode {info.st_mode & 0o777:o}: other users may read it; make it private "
            f"(chmod 600 {path})"
        )
    return path.read_text().strip()


def _dev_file(runtime: RuntimeSettings, name: str, make: Callable[[], str]) -> str:
    path = runtime.data_dir / name
    if path.exists():
        return read_secret_file(path)
    runtime.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _is_dev_value(runtime: RuntimeSettings, name: str, value: str) -> bool:
    path: Path = runtime.data_dir / name
    return path.exists() and path.read_text().strip() == value


def resolve_encryption_keys(configured: SecretStr | None, runtime: RuntimeSettings) -> list[str]:
    """The Fernet keys for tokens at rest, current first (``STREAMTOKEN_ISSUER_ENCRYPTION_KEY`` lists them
    separated by commas)."""
    variable = "STREAMTOKEN_ISSUER_ENCRYPTION_KEY"
    if configured is None:
        if runtime.is_dev:
            return [_dev_file(runtime, ENCRYPTION_KEY_FILE, lambda: Fernet.generate_key().decode())]
        raise SecretConfigError(
            f"{variable} is not set; outside dev the issuer needs an encryption key: generate one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
        )
    keys = [k.strip() for k in configured.get_secret_value().split(",") if k.strip()]
    if not keys:
        raise SecretConfigError(f"{variable} is empty")
    for position, key in enumerate(keys, 1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise SecretConfigError(
                f"{variable}: key {position} is not a Fernet key (urlsafe base64 of 32 bytes)"
            ) from None
        if not runtime.is_dev and _is_dev_value(runtime, ENCRYPTION_KEY_FILE, key):
            raise SecretConfigError(
                f"{variable} is the development key generated in {runtime.data_dir}; set a production key"
            )
    return keys


def resolve_encryption_key(configured: SecretStr | None, runtime: RuntimeSettings) -> str:
    """The current (first) Fernet key."""
    return resolve_encryption_keys(configured, runtime)[0]


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
    # Strength is checked in every mode: a dev issuer on a shared host is reachable too.
    if len(value) < MIN_JWT_SECRET or value.lower() in WEAK_SECRETS or len(set(value)) < 8:
        raise SecretConfigError(f"{variable} is too weak: use at least {MIN_JWT_SECRET} random characters")
    if not runtime.is_dev and _is_dev_value(runtime, JWT_SECRET_FILE, value):
        raise SecretConfigError(
            f"{variable} is the development secret generated in {runtime.data_dir}; set a production one"
        )
    return value
