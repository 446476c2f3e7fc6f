"""Personal access tokens (PATs): HS256 JWTs naming a server-side record by its ``jti``.

A PAT is for people and tools calling the issuer; a streaming token is never accepted in its place. The
signature proves the issuer minted it; the record (``services.issuer.pats``) says whether it is still valid
(revocation, expiry) and what it may do: its role, its environments and its actions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
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
    DEPLOYMENT = "deployment"  # reads the current token of its one environment, nothing else


class Action(StrEnum):
    READ = "read"  # list and show environments, propagation (no token)
    REVEAL = "reveal"  # display Token 1 and Token 2
    ROTATE = "rotate"  # rotate and revoke
    ADMIN = "admin"  # create and delete environments, PATs, audit, republish
    READ_CURRENT = "read-current"  # one token (slot 1, or 2 when asked) of its environment: deployments


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset({Action.READ, Action.REVEAL, Action.ROTATE, Action.ADMIN}),
    Role.MEMBER: frozenset({Action.READ, Action.REVEAL}),
    Role.DEPLOYMENT: frozenset({Action.READ_CURRENT}),
}


class AuthError(Exception):
    """The credentials are missing, malformed, expired or of the wrong kind; the message says which."""


@dataclass(frozen=True)
class Principal:
    """Who calls, and what the PAT's record lets them do (``environments`` None: every environment)."""

    subject: str
    role: Role
    pat_id: str
    environments: tuple[str, ...] | None = None
    actions: frozenset[Action] | None = None  # None: every action of the role

    @property
    def actor(self) -> str:
        return f"pat:{self.subject}"

    @property
    def audit_id(self) -> str:
        """How the audit log names the PAT: ``pat:<subject>#<jti>``."""
        return f"pat:{self.subject}#{self.pat_id}"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def allowed(self) -> frozenset[Action]:
        role_actions = ROLE_ACTIONS[self.role]
        return role_actions if self.actions is None else role_actions & self.actions

    def may(self, action: Action) -> bool:
        return action in self.allowed

    def covers(self, environment_id: str) -> bool:
        return self.environments is None or environment_id in self.environments

    @property
    def unscoped(self) -> bool:
        return self.environments is None


MAX_SUBJECT = 120
MAX_TTL = timedelta(days=365)  # a hard bound; settings cap lower (STREAMTOKEN_ISSUER_PAT_MAX_TTL_DAYS)


def check_scope(
    role: Role, environments: Iterable[str] | None, actions: Iterable[str] | None
) -> tuple[tuple[str, ...] | None, frozenset[Action] | None]:
    """Normalise a PAT's scope; ``ValueError`` when it does not fit the role (a deployment PAT is limited to
    exactly one environment; actions must be some of the role's)."""
    envs = tuple(dict.fromkeys(environments)) if environments is not None else None
    chosen: frozenset[Action] | None = None
    if actions is not None:
        try:
            chosen = frozenset(Action(a) for a in actions)
        except ValueError:
            raise ValueError(
                f"actions are some of {', '.join(a.value for a in Action)}; got {sorted(actions)}"
            ) from None
        extra = chosen - ROLE_ACTIONS[role]
        if extra:
            raise ValueError(
                f"the {role.value} role cannot be given {', '.join(sorted(extra))}; it may "
                f"{', '.join(sorted(ROLE_ACTIONS[role]))}"
            )
        if not chosen:
            raise ValueError("a PAT needs at least one action")
    if role is Role.DEPLOYMENT and (envs is None or len(envs) != 1):
        raise ValueError("a deployment PAT is limited to exactly one environment")
    if envs is not None and not envs:
        raise ValueError("a PAT limited to environments needs at least one (leave it out for all)")
    return envs, chosen


def mint_pat(
    secret: str,
    subject: str,
    role: Role,
    ttl: timedelta,
    now: datetime | None = None,
    *,
    jti: str | None = None,
) -> str:
    """The signed JWT of a PAT; it is valid only once its record (same ``jti``) is stored."""
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
        "jti": jti or new_pat_id(),
        "iat": int(moment.timestamp()),
        "exp": int((moment + ttl).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def new_pat_id() -> str:
    return uuid.uuid4().hex


def verify_pat(secret: str, token: str) -> Principal:
    """The claims of a PAT whose signature and times check out (its record is checked by the caller)."""
    if token.startswith(TOKEN_PREFIX):
        raise AuthError(
            "this is a streaming token (stk_...), not a personal access token; mint a PAT with "
            "`streamtoken pats create` (or `streamtoken admin bootstrap-pat` on the issuer's machine)"
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
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 64:
        raise AuthError("the personal access token carries no id (jti); mint a new one")
    return Principal(subject=subject, role=role, pat_id=jti)
