"""Personal access tokens (PATs): HS256 JWTs with a subject and a role, ``admin`` or ``member``.

A PAT is for people and tools calling the issuer; a streaming token is never accepted in its place.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import jwt

from shared.tokens import TOKEN_PREFIX

ISSUER = "streamtoken-issuer"
AUDIENCE = "streamtoken-issuer"
ALGORITHM = "HS256"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class AuthError(Exception):
    """The credentials are missing, malformed, expired or of the wrong kind; the message says which."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    pat_id: str

    @property
    def actor(self) -> str:
        return f"pat:{self.subject}"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


MAX_SUBJECT = 120
MAX_TTL = timedelta(days=3650)


def mint_pat(secret: str, subject: str, role: Role, ttl: timedelta, now: datetime | None = None) -> str:
    if not subject or len(subject) > MAX_SUBJECT:
        raise ValueError(f"a PAT subject is 1 to {MAX_SUBJECT} characters")
    if not timedelta(0) < ttl <= MAX_TTL:
        raise ValueError(f"a PAT lives between a second and {MAX_TTL.days} days")
    moment = now or datetime.now(UTC)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "role": role.value,
        "jti": uuid.uuid4().hex,
        "iat": int(moment.timestamp()),
        "exp": int((moment + ttl).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_pat(secret: str, token: str) -> Principal:
    if token.startswith(TOKEN_PREFIX):
        raise AuthError(
            "this is a streaming token (stk_...), not a personal access token; mint a PAT with "
            "`streamtoken admin pat`"
        )
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the personal access token has expired; mint a new one") from None
    except jwt.PyJWTError:
        raise AuthError("the personal access token is invalid") from None
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise AuthError("the personal access token carries no valid role") from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise AuthError("the personal access token carries no subject")
    if len(subject) > MAX_SUBJECT:
        raise AuthError(f"the personal access token's subject is longer than {MAX_SUBJECT} characters")
    return Principal(subject=subject, role=role, pat_id=str(claims.get("jti", "")))
