"""Who may do what on the broker: the principal and password of a streaming token, and the ACLs of tenants
and of our own services, as plain data (BROKER.md, DESIGN.md "The token is also the client's key").

Pure: the standard library only. The issuer turns these into SCRAM users and ACL bindings through its broker
adapter; the resolver hands a token's own principal and password to that token's holder; the Kafka launcher
grants the services theirs.

* A valid streaming token is the SCRAM user named by its **token id** (``tid_…``, public). Its password is
  derived from the token (HMAC-SHA256, :func:`broker_password`), so the broker never sees the token and
  whoever holds the token (the client, or the resolver it authenticated to) can compute the password.
* A token's principal may read and write the topics ``{environment_id}-*``, read (join) the consumer groups
  ``{environment_id}-*`` and write the transactional ids ``{environment_id}-*``, and nothing else: no other
  environment's resources (environment ids never prefix one another across a ``-``, ``shared.ids``), not the
  control topic, no service group, no cluster operation. A group named exactly ``{environment_id}`` (which
  quixstreams leaves unprefixed) is not under the prefix and is refused: name groups ``{env}-something``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from shared.tokens import TOKEN_ID_PREFIX

BROKER_PASSWORD_CONTEXT = b"streamtoken broker password v1"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 4096  # Kafka accepts 4096..16384
TENANT_PRINCIPAL_PREFIX = f"User:{TOKEN_ID_PREFIX}"

# Our own principals on the broker (SCRAM-SHA-512 users created when the broker is formatted).
ADMIN_USER = "streamtoken-admin"  # super user: bootstraps the services' ACLs; tests and operators
BROKER_USER = "streamtoken-broker"  # inter-broker traffic
ISSUER_USER = "streamtoken-issuer"
RESOLVER_USER = "streamtoken-resolver"
NOTIFIER_USER = "streamtoken-notifier"
SERVICE_USERS = (ADMIN_USER, BROKER_USER, ISSUER_USER, RESOLVER_USER, NOTIFIER_USER)

# Consumer groups our services use (prefixes): the resolver's replay readers and the issuer's topic probe.
RESOLVER_GROUP_PREFIX = "streamtoken-resolver-"
ISSUER_PROBE_GROUP_PREFIX = "streamtoken-issuer-probe-"
ISSUER_USAGE_GROUP = "streamtoken-issuer-usage"  # the issuer's fold of the usage topic


class Resource(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    TRANSACTIONAL_ID = "transactional_id"
    CLUSTER = "cluster"


class Pattern(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DESCRIBE = "describe"
    DESCRIBE_CONFIGS = "describe_configs"
    ALTER = "alter"
    DELETE = "delete"


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW binding: ``principal`` may do ``operation`` on ``resource`` ``name`` (literal or prefix)."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation


def principal(user: str) -> str:
    return f"User:{user}"


def tenant_user(token_id: str) -> str:
    """The SCRAM user name of a token: its public token id."""
    return token_id


def is_tenant_principal(value: str) -> bool:
    return value.startswith(TENANT_PRINCIPAL_PREFIX)


def broker_password(token: str) -> str:
    """The SCRAM password of a token's broker user: HMAC-SHA256 of a fixed context, keyed with the token.

    Deterministic, so the issuer (which can decrypt the token) and the resolver (which the holder presents
    it to) agree without storing it; one-way, so a leaked broker password does not reveal the token."""
    digest = hmac.new(token.encode("utf-8"), BROKER_PASSWORD_CONTEXT, hashlib.sha256).digest()
    return "bkp_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def tenant_prefix(environment_id: str) -> str:
    return f"{environment_id}-"


def tenant_grants(environment_id: str, token_id: str) -> tuple[Grant, ...]:
    """Everything a token's principal may do: its environment's prefixed topics, groups, transactional ids."""
    who = principal(tenant_user(token_id))
    prefix = tenant_prefix(environment_id)
    return (
        Grant(who, Resource.TOPIC, prefix, Pattern.PREFIXED, Operation.READ),
        Grant(who, Resource.TOPIC, prefix, Pattern.PREFIXED, Operation.WRITE),
        Grant(who, Resource.GROUP, prefix, Pattern.PREFIXED, Operation.READ),
        Grant(who, Resource.TRANSACTIONAL_ID, prefix, Pattern.PREFIXED, Operation.WRITE),
    )


def service_grants(
    control_topic: str, notifier_group: str = "notifier", usage_topic: str = "streamtoken.usage"
) -> tuple[Grant, ...]:
    """Least privilege for our services.

    issuer: create/write/read the control topic (read: the empty-topic probe), manage SCRAM users and ACLs
    (ALTER and DESCRIBE on the cluster), delete a purged environment's topics (DELETE on topics);
    resolver: read the control topic, create and describe tenants' topics; notifier: read the control topic
    in its consumer group. Each may create the control topic. The usage topic (``shared.usage``): the
    resolver writes it, the issuer reads it in its own group; either may create it; tenants get nothing.
    """
    issuer, resolver, notifier = principal(ISSUER_USER), principal(RESOLVER_USER), principal(NOTIFIER_USER)
    topic = (Resource.TOPIC, control_topic, Pattern.LITERAL)
    cluster = (Resource.CLUSTER, "kafka-cluster", Pattern.LITERAL)
    return (
        *(Grant(issuer, *topic, op) for op in (Operation.CREATE, Operation.WRITE, Operation.READ)),
        Grant(issuer, *topic, Operation.DESCRIBE_CONFIGS),
        Grant(issuer, Resource.GROUP, ISSUER_PROBE_GROUP_PREFIX, Pattern.PREFIXED, Operation.READ),
        Grant(issuer, *cluster, Operation.ALTER),
        Grant(issuer, *cluster, Operation.DESCRIBE),
        # Purging an environment id deletes its topics ``{id}-*`` (DELETE implies DESCRIBE: it lists them).
        Grant(issuer, Resource.TOPIC, "*", Pattern.LITERAL, Operation.DELETE),
        # Any service may create the control topic when it starts first (list_topics, then create).
        Grant(resolver, *topic, Operation.READ),
        Grant(resolver, *topic, Operation.CREATE),
        Grant(resolver, Resource.GROUP, RESOLVER_GROUP_PREFIX, Pattern.PREFIXED, Operation.READ),
        # Tenants' topics are created by the resolver on a client's behalf (Portal API), under any prefix.
        Grant(resolver, Resource.TOPIC, "*", Pattern.LITERAL, Operation.CREATE),
        Grant(resolver, Resource.TOPIC, "*", Pattern.LITERAL, Operation.DESCRIBE),
        Grant(resolver, Resource.TOPIC, "*", Pattern.LITERAL, Operation.DESCRIBE_CONFIGS),
        Grant(notifier, *topic, Operation.READ),
        Grant(notifier, *topic, Operation.CREATE),
        Grant(notifier, Resource.GROUP, notifier_group, Pattern.LITERAL, Operation.READ),
        # Usage per token (issue 12): the resolver publishes what it saw, the issuer folds it.
        *(Grant(resolver, Resource.TOPIC, usage_topic, Pattern.LITERAL, op) for op in _WRITE_USAGE),
        *(Grant(issuer, Resource.TOPIC, usage_topic, Pattern.LITERAL, op) for op in _READ_USAGE),
        Grant(issuer, Resource.GROUP, ISSUER_USAGE_GROUP, Pattern.LITERAL, Operation.READ),
    )


_WRITE_USAGE = (Operation.CREATE, Operation.WRITE, Operation.DESCRIBE)
_READ_USAGE = (Operation.CREATE, Operation.READ, Operation.DESCRIBE)
