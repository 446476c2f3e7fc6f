"""PATs (pyjwt) and the rules for the issuer's secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from services.issuer.auth import AuthError, Role, mint_pat, verify_pat
from services.issuer.crypto import DecryptionError, TokenCipher
from services.issuer.secrets import SecretConfigError, resolve_encryption_key, resolve_jwt_secret
from shared.settings import RuntimeSettings
from shared.tokens import generate_token

SECRET = "k7Qd9-xLpZ2vN4mR8sTbW1yHc6eJ0aUf-3gE5iO"


def test_pat_round_trip_and_roles() -> None:
    principal = verify_pat(SECRET, mint_pat(SECRET, "alice", Role.ADMIN, timedelta(minutes=5)))
    assert (principal.subject, principal.role, principal.is_admin) == ("alice", Role.ADMIN, True)
    member = verify_pat(SECRET, mint_pat(SECRET, "bob", Role.MEMBER, timedelta(minutes=5)))
    assert not member.is_admin
    assert member.actor == "pat:bob"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            mint_pat(
                SECRET, "a", Role.ADMIN, timedelta(seconds=5), now=datetime.now(UTC) - timedelta(seconds=10)
            ),
            "expired",
        ),
        (mint_pat("y" * 40, "a", Role.ADMIN, timedelta(minutes=5)), "invalid"),
        ("not-a-jwt", "invalid"),
        (jwt.encode({"sub": "a", "role": "admin"}, SECRET, algorithm="HS256"), "invalid"),
        (generate_token(), "streaming token"),
    ],
)
def test_bad_pats_are_refused(token: str, message: str) -> None:
    with pytest.raises(AuthError, match=message) as caught:
        verify_pat(SECRET, token)
    assert token not in str(caught.value)


def test_unknown_role_is_refused() -> None:
    claims = {"sub": "a", "role": "root", "iss": "streamtoken-issuer", "aud": "streamtoken-issuer"}
    token = jwt.encode({**claims, "iat": 0, "exp": 4_000_000_000}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="role"):
        verify_pat(SECRET, token)


def test_cipher_round_trip_and_wrong_key() -> None:
    cipher = TokenCipher(Fernet.generate_key().decode())
    token = generate_token()
    sealed = cipher.encrypt(token)
    assert token not in sealed
    assert cipher.decrypt(sealed) == token
    with pytest.raises(DecryptionError):
        TokenCipher(Fernet.generate_key().decode()).decrypt(sealed)


def test_dev_generates_and_keeps_secrets(tmp_path: Path) -> None:
    dev = RuntimeSettings(env="dev", data_dir=tmp_path)
    key = resolve_encryption_key(None, dev)
    assert resolve_encryption_key(None, dev) == key
    Fernet(key.encode())
    assert resolve_jwt_secret(None, dev) == resolve_jwt_secret(None, dev)


def test_prod_refuses_missing_weak_and_development_secrets(tmp_path: Path) -> None:
    dev = RuntimeSettings(env="dev", data_dir=tmp_path)
    prod = RuntimeSettings(env="prod", data_dir=tmp_path)
    dev_key, dev_secret = resolve_encryption_key(None, dev), resolve_jwt_secret(None, dev)
    with pytest.raises(SecretConfigError, match="STREAMTOKEN_ISSUER_ENCRYPTION_KEY"):
        resolve_encryption_key(None, prod)
    with pytest.raises(SecretConfigError, match="development"):
        resolve_encryption_key(SecretStr(dev_key), prod)
    with pytest.raises(SecretConfigError, match="Fernet"):
        resolve_encryption_key(SecretStr("short"), prod)
    with pytest.raises(SecretConfigError, match="STREAMTOKEN_ISSUER_JWT_SECRET"):
        resolve_jwt_secret(None, prod)
    with pytest.raises(SecretConfigError, match="weak"):
        resolve_jwt_secret(SecretStr("changeme"), prod)
    with pytest.raises(SecretConfigError, match="development"):
        resolve_jwt_secret(SecretStr(dev_secret), prod)
    good_key = Fernet.generate_key().decode()
    assert resolve_encryption_key(SecretStr(good_key), prod) == good_key
    assert resolve_jwt_secret(SecretStr(SECRET), prod) == SECRET
