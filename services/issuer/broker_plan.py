"""What the broker must change to match the valid tokens: a pure diff of desired and actual access.

Free of I/O (the standard library and ``shared`` only), so every rule is unit-tested without a broker. The
broker adapter reads the actual state, calls :func:`plan`, and applies the :class:`BrokerPlan`.

Only tenants are ever touched: SCRAM users named ``tid_…`` and ACLs of principals ``User:tid_…``. Our own
service principals and any operator's bindings are left alone, whatever they hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shared.broker_access import (
    SCRAM_ITERATIONS,
    SCRAM_MECHANISMS,
    Grant,
    is_tenant_principal,
    principal,
    tenant_grants,
    tenant_prefix,
    tenant_user,
)
from shared.tokens import TOKEN_ID_PREFIX

TokenAccess = tuple[str, str]
"""``(token_id, broker_password)`` of one valid token."""


def is_tenant_user(user: str) -> bool:
    return user.startswith(TOKEN_ID_PREFIX)


@dataclass(frozen=True)
class BrokerSnapshot:
    """What the broker holds (or the part of it read for one environment).

    ``users``: SCRAM user → its credentials as ``(mechanism, iterations)``; ``grants``: ALLOW bindings.
    """

    users: Mapping[str, frozenset[tuple[str, int]]] = field(default_factory=dict)
    grants: frozenset[Grant] = frozenset()


@dataclass(frozen=True)
class Upsert:
    """Create or replace one SCRAM credential (the adapter sends it salted, never as the password)."""

    user: str
    mechanism: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BrokerPlan:
    upserts: tuple[Upsert, ...] = ()
    create_grants: tuple[Grant, ...] = ()
    delete_users: tuple[tuple[str, str], ...] = ()  # (user, mechanism)
    delete_grants: tuple[Grant, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.upserts or self.create_grants or self.delete_users or self.delete_grants)

    def summary(self) -> dict[str, int]:
        """Counts only (safe to log)."""
        return {
            "upserts": len(self.upserts),
            "create_grants": len(self.create_grants),
            "delete_users": len(self.delete_users),
            "delete_grants": len(self.delete_grants),
        }


def desired_grants(environment_id: str, tokens: Iterable[TokenAccess]) -> frozenset[Grant]:
    return frozenset(g for token_id, _ in tokens for g in tenant_grants(environment_id, token_id))


def desired_users(tokens: Iterable[TokenAccess]) -> dict[str, str]:
    return {tenant_user(token_id): password for token_id, password in tokens}


def plan(users: Mapping[str, str], grants: frozenset[Grant], actual: BrokerSnapshot) -> BrokerPlan:
    """The changes that make the tenants in ``actual`` exactly ``users`` (name → password) and ``grants``.

    A desired user gets each of :data:`SCRAM_MECHANISMS` at :data:`SCRAM_ITERATIONS` unless it already has
    it (a token's password never changes, so an existing credential is the right one); a tenant user of
    ``actual`` that is not desired loses every credential; tenant grants are added and removed to match.
    """
    upserts = [
        Upsert(user, mechanism, password)
        for user, password in sorted(users.items())
        for mechanism in SCRAM_MECHANISMS
        if (mechanism, SCRAM_ITERATIONS) not in actual.users.get(user, frozenset())
    ]
    delete_users = sorted(
        (user, mechanism)
        for user, credentials in actual.users.items()
        if is_tenant_user(user) and user not in users
        for mechanism, _ in credentials
    )
    tenant_actual = frozenset(g for g in actual.grants if is_tenant_principal(g.principal))
    return BrokerPlan(
        upserts=tuple(upserts),
        create_grants=tuple(sorted(grants - actual.grants)),
        delete_users=tuple(delete_users),
        delete_grants=tuple(sorted(tenant_actual - grants)),
    )


def environment_scope(
    environment_id: str, tokens: Sequence[TokenAccess], prefix_grants: Iterable[Grant]
) -> tuple[set[str], set[str]]:
    """Which principals and users one environment's sync must read in full: its tokens' and every tenant
    principal that holds a binding on the environment's prefix (a token that was deactivated)."""
    prefix = tenant_prefix(environment_id)
    principals = {principal(tenant_user(token_id)) for token_id, _ in tokens}
    principals |= {
        g.principal for g in prefix_grants if g.name == prefix and is_tenant_principal(g.principal)
    }
    users = {p.removeprefix("User:") for p in principals}
    return principals, users


def plan_environment(
    environment_id: str, tokens: Sequence[TokenAccess], actual: BrokerSnapshot
) -> BrokerPlan:
    """Make one environment's part of the broker match ``tokens`` (empty: the environment was deleted).

    ``actual`` holds the grants and users of :func:`environment_scope`: anything of a principal outside the
    environment's valid tokens is removed, and each valid token gets exactly :func:`tenant_grants`."""
    return plan(desired_users(tokens), desired_grants(environment_id, tokens), actual)


def plan_all(desired: Mapping[str, Sequence[TokenAccess]], actual: BrokerSnapshot) -> BrokerPlan:
    """Make every tenant on the broker match ``desired`` (environment id → its valid tokens): every other
    ``tid_…`` user and ``User:tid_…`` binding is removed."""
    users: dict[str, str] = {}
    grants: set[Grant] = set()
    for environment_id, tokens in desired.items():
        users.update(desired_users(tokens))
        grants |= desired_grants(environment_id, tokens)
    return plan(users, frozenset(grants), actual)
