"""The broker's tenants on confluent-kafka's ``AdminClient``: SCRAM users and prefixed ACLs per valid token.

:class:`KafkaBrokerAccess` reads what the broker holds (``describe_acls``,
``describe_user_scram_credentials``), lets :mod:`services.issuer.broker_plan` compute the difference, and
applies it: SCRAM upserts (librdkafka salts and hashes the password itself and sends only salt and salted
password), ACL creation, then user and ACL deletion. Every call is idempotent. :class:`NoBrokerAccess` is
for a broker that cannot enforce anything (Tansu): it does nothing. :func:`make_broker_access` picks one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from services.issuer.broker_plan import (
    BrokerPlan,
    BrokerSnapshot,
    environment_scope,
    is_tenant_user,
    plan_all,
    plan_environment,
)
from services.issuer.settings import IssuerSettings
from shared.broker_access import (
    SCRAM_ITERATIONS,
    Grant,
    is_tenant_principal,
    tenant_prefix,
)
from shared.kafka import KafkaSettings
from shared.kafka_acls import AclMapping
from shared.logs import get_logger

log = get_logger(__name__)
_quiet = logging.getLogger("streamtoken.issuer.librdkafka")
_CHUNK = 1000  # alterations / bindings per admin request
_T = TypeVar("_T")


class BrokerAccessError(RuntimeError):
    """The broker refused a change of users or ACLs, or did not answer. The message names the call and the
    broker's error, never a password."""


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _error_callback(error: Any) -> None:
    log.debug("kafka_admin_client_error", error=str(error))


def _kafka_error(exc: BaseException) -> Any:
    return exc.args[0] if exc.args and hasattr(exc.args[0], "code") else None


def _describe(exc: BaseException) -> str:
    error = _kafka_error(exc)
    if error is not None:
        return f"{error.name()}: {error.str()}"[:200]
    return f"{type(exc).__name__}: {exc}"[:200]


class KafkaBrokerAccess:
    """:class:`~services.issuer.ports.BrokerAccess` on an ``AdminClient`` with the issuer's own principal
    (it needs ALTER and DESCRIBE on the cluster, ``shared.broker_access.service_grants``)."""

    enforcing = True

    def __init__(self, settings: KafkaSettings, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout_s
        self._admin: Any = None
        self._map: AclMapping | None = None

    # -- the port ----------------------------------------------------------------------------------------

    def sync_environment(self, environment_id: str, tokens: Sequence[tuple[str, str]]) -> None:
        prefix_grants = self._grants(self._filter(name=tenant_prefix(environment_id), pattern="prefixed"))
        principals, users = environment_scope(environment_id, tokens, prefix_grants[0])
        grants: set[Grant] = {g for g in prefix_grants[0] if g.principal in principals}
        odd: list[Any] = [b for b in prefix_grants[1] if b.principal in principals]
        for who in sorted(principals):
            found, unknown = self._grants(self._filter(principal=who))
            grants |= set(found)
            odd.extend(unknown)
        snapshot = BrokerSnapshot(self._users(sorted(users)), frozenset(grants))
        changes = plan_environment(environment_id, tokens, snapshot)
        self._apply(changes, odd)
        log.info(
            "broker_environment_synced",
            environment_id=environment_id,
            tokens=[token_id for token_id, _ in tokens],
            **changes.summary(),
        )

    def reconcile_all(self, desired: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        grants, odd = self._grants(self._filter())
        tenant_grants = frozenset(g for g in grants if is_tenant_principal(g.principal))
        odd = [b for b in odd if is_tenant_principal(b.principal)]
        snapshot = BrokerSnapshot(self._all_tenant_users(), tenant_grants)
        changes = plan_all(desired, snapshot)
        self._apply(changes, odd)
        log.info("broker_reconciled", environments=len(desired), **changes.summary())

    def delete_topics(self, prefix: str, keep: Sequence[str] = ()) -> list[str]:
        # First: without DELETE (which implies DESCRIBE) the listing would miss topics and report none.
        self._check_topic_delete_right()
        names = self._topics_under(prefix, keep)
        if names:
            client = self._client()
            for chunk in _chunks(names):
                self._wait(
                    "delete_topics",
                    client.delete_topics(
                        list(chunk), operation_timeout=self._timeout, request_timeout=self._timeout
                    ),
                    missing_ok=True,
                )
        log.info("broker_topics_deleted", prefix=prefix, topics=len(names), kept_prefixes=list(keep))
        return names

    def close(self) -> None:
        self._admin = None

    # -- reading -----------------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(
                {**self._settings.librdkafka(), "error_cb": _error_callback}, logger=_quiet
            )
        return self._admin

    def _mapping(self) -> AclMapping:
        if self._map is None:
            self._map = AclMapping()
        return self._map

    def _filter(self, *, name: str | None = None, pattern: str = "any", principal: str | None = None) -> Any:
        from confluent_kafka.admin import (
            AclBindingFilter,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        kind = ResourcePatternType.PREFIXED if pattern == "prefixed" else ResourcePatternType.ANY
        return AclBindingFilter(
            ResourceType.ANY, name, kind, principal, None, AclOperation.ANY, AclPermissionType.ANY
        )

    def _grants(self, acl_filter: Any) -> tuple[list[Grant], list[Any]]:
        """The bindings matching a filter: as grants, and the ones that are no grant of ours."""
        try:
            bindings = (
                self._client()
                .describe_acls(acl_filter, request_timeout=self._timeout)
                .result(self._timeout + 1)
            )
        except Exception as exc:
            raise BrokerAccessError(f"describe_acls failed ({_describe(exc)})") from None
        m = self._mapping()
        grants: list[Grant] = []
        odd: list[Any] = []
        for binding in bindings:
            grant = m.grant(binding)
            if grant is None:
                odd.append(binding)
            else:
                grants.append(grant)
        return grants, odd

    def _check_cluster_rights(self) -> None:
        """Refuse before ``describe_user_scram_credentials`` when our principal lacks DESCRIBE or ALTER on
        the cluster: librdkafka 2.12 aborts the whole process (``munmap_chunk(): invalid pointer``) when
        that call gets an error answer from the broker, so it must only be made when it can succeed."""
        from confluent_kafka.admin import AclOperation

        try:
            cluster = (
                self._client()
                .describe_cluster(include_authorized_operations=True, request_timeout=self._timeout)
                .result(self._timeout + 1)
            )
        except Exception as exc:
            raise BrokerAccessError(f"describe_cluster failed ({_describe(exc)})") from None
        allowed = set(cluster.authorized_operations or ())
        if not allowed & {AclOperation.ALL} and not {AclOperation.DESCRIBE, AclOperation.ALTER} <= allowed:
            user = self._settings.sasl_username or "ANONYMOUS"
            raise BrokerAccessError(
                f"CLUSTER_AUTHORIZATION_FAILED: principal User:{user} may not manage SCRAM users and ACLs "
                "(it needs ALTER and DESCRIBE on the cluster; see shared.broker_access.service_grants)"
            )

    def _topics_under(self, prefix: str, keep: Sequence[str]) -> list[str]:
        """The topics the broker shows us under ``prefix``, minus ``keep``'s, the control topic and internal
        ones (``__consumer_offsets``, ...). Our DELETE on topics implies DESCRIBE, so all are shown."""
        if not prefix:
            raise ValueError("refusing to delete topics without a prefix")
        try:
            metadata = self._client().list_topics(timeout=self._timeout)
        except Exception as exc:
            raise BrokerAccessError(f"list_topics failed ({_describe(exc)})") from None
        return sorted(
            name
            for name in metadata.topics
            if name.startswith(prefix)
            and not any(name.startswith(k) for k in keep)
            and name != self._settings.topic
            and not name.startswith("_")
        )

    def _check_topic_delete_right(self) -> None:
        """Refuse when our principal may not delete topics (``service_grants``: DELETE on topics ``*``),
        asked of the control topic (covered by the same grant; the relay made sure it exists), so that a
        missing grant is one clear error rather than a listing without the topics and "0 deleted"."""
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AclOperation

        try:
            futures = self._client().describe_topics(
                TopicCollection([self._settings.topic]),
                include_authorized_operations=True,
                request_timeout=self._timeout,
            )
            described = next(iter(futures.values())).result(self._timeout + 1)
        except Exception as exc:
            raise BrokerAccessError(f"describe_topics failed ({_describe(exc)})") from None
        allowed = set(described.authorized_operations or ())
        if not allowed & {AclOperation.ALL, AclOperation.DELETE}:
            user = self._settings.sasl_username or "ANONYMOUS"
            raise BrokerAccessError(
                f"TOPIC_AUTHORIZATION_FAILED: principal User:{user} may not delete topics (it needs DELETE "
                "on topics; see shared.broker_access.service_grants)"
            )

    def _credentials(self, description: Any) -> frozenset[tuple[str, int]]:
        m = self._mapping()
        return frozenset(
            (m.back_mechanism[info.mechanism], int(info.iterations))
            for info in description.scram_credential_infos
            if info.mechanism in m.back_mechanism
        )

    def _users(self, users: Sequence[str]) -> dict[str, frozenset[tuple[str, int]]]:
        if not users:
            return {}
        from confluent_kafka import KafkaError

        found: dict[str, frozenset[tuple[str, int]]] = {}
        self._check_cluster_rights()
        try:
            futures = self._client().describe_user_scram_credentials(
                list(users), request_timeout=self._timeout
            )
        except Exception as exc:
            raise BrokerAccessError(f"describe_user_scram_credentials failed ({_describe(exc)})") from None
        for user, future in futures.items():
            try:
                found[user] = self._credentials(future.result(self._timeout + 1))
            except Exception as exc:
                error = _kafka_error(exc)
                if error is not None and error.code() == KafkaError.RESOURCE_NOT_FOUND:
                    continue
                raise BrokerAccessError(
                    f"describe_user_scram_credentials failed ({_describe(exc)})"
                ) from None
        return found

    def _all_tenant_users(self) -> dict[str, frozenset[tuple[str, int]]]:
        self._check_cluster_rights()
        try:
            described = (
                self._client()
                .describe_user_scram_credentials(request_timeout=self._timeout)
                .result(self._timeout + 1)
            )
        except Exception as exc:
            raise BrokerAccessError(f"describe_user_scram_credentials failed ({_describe(exc)})") from None
        return {user: self._credentials(d) for user, d in described.items() if is_tenant_user(user)}

    # -- writing -----------------------------------------------------------------------------------------

    def _apply(self, changes: BrokerPlan, odd_bindings: Iterable[Any]) -> None:
        from confluent_kafka.admin import (
            ScramCredentialInfo,
            UserScramCredentialDeletion,
            UserScramCredentialUpsertion,
        )

        m = self._mapping()
        client = self._client()
        # The broker refuses two alterations of one user in a request: one request per mechanism.
        for mechanism in m.mechanism:
            upserts = [
                UserScramCredentialUpsertion(
                    u.user, ScramCredentialInfo(m.mechanism[mechanism], SCRAM_ITERATIONS), u.password.encode()
                )
                for u in changes.upserts
                if u.mechanism == mechanism
            ]
            for chunk in _chunks(upserts):
                self._wait(
                    "alter_user_scram_credentials",
                    client.alter_user_scram_credentials(list(chunk), request_timeout=self._timeout),
                )
        bindings = [m.binding(g) for g in changes.create_grants]
        for chunk in _chunks(bindings):
            self._wait("create_acls", client.create_acls(list(chunk), request_timeout=self._timeout))
        for mechanism in m.mechanism:
            deletions = [
                UserScramCredentialDeletion(user, m.mechanism[mechanism])
                for user, mech in changes.delete_users
                if mech == mechanism
            ]
            for chunk in _chunks(deletions):
                self._wait(
                    "alter_user_scram_credentials",
                    client.alter_user_scram_credentials(list(chunk), request_timeout=self._timeout),
                    missing_ok=True,
                )
        filters = {m.exact_filter(m.binding(g)) for g in changes.delete_grants}
        filters |= {m.exact_filter(b) for b in odd_bindings}
        for chunk in _chunks(list(filters)):
            self._wait("delete_acls", client.delete_acls(list(chunk), request_timeout=self._timeout))

    def _wait(self, call: str, futures: Mapping[Any, Any], *, missing_ok: bool = False) -> None:
        from confluent_kafka import KafkaError

        first: BaseException | None = None
        for future in futures.values():
            try:
                future.result(self._timeout + 1)
            except Exception as exc:
                error = _kafka_error(exc)
                missing = (KafkaError.RESOURCE_NOT_FOUND, KafkaError.UNKNOWN_TOPIC_OR_PART)
                if missing_ok and error is not None and error.code() in missing:
                    continue
                first = first or exc
        if first is not None:
            raise BrokerAccessError(f"{call} failed ({_describe(first)})")


class NoBrokerAccess:
    """For a broker that cannot enforce anything (Tansu, or ``STREAMTOKEN_ISSUER_BROKER_ACCESS=off``)."""

    enforcing = False

    def sync_environment(self, environment_id: str, tokens: Sequence[tuple[str, str]]) -> None:
        return None

    def reconcile_all(self, desired: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        return None

    def delete_topics(self, prefix: str, keep: Sequence[str] = ()) -> list[str]:
        return []

    def close(self) -> None:
        return None


def broker_access_mode(settings: IssuerSettings) -> str:
    """``scram`` or ``off``: ``auto`` means scram when Kafka is reached over SASL_*."""
    if settings.broker_access == "auto":
        return "scram" if settings.kafka.security_protocol.startswith("SASL_") else "off"
    return settings.broker_access


def make_broker_access(settings: IssuerSettings) -> KafkaBrokerAccess | NoBrokerAccess:
    if broker_access_mode(settings) == "scram":
        return KafkaBrokerAccess(settings.kafka, timeout_s=settings.broker_access_timeout_s)
    log.warning(
        "broker_access_off",
        detail="the broker does not enforce streaming tokens: any client reaching it can use every "
        "environment (STREAMTOKEN_ISSUER_BROKER_ACCESS=off, or auto without SASL)",
    )
    return NoBrokerAccess()
