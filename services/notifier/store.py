"""The notifier's database: subscriptions, deliveries (the durable queue) and the rotations seen.

The tables (:mod:`services.notifier.tables`) live on SQLite (default) or PostgreSQL; the schema is made by
the Alembic migrations (:mod:`services.notifier.migrate`). Reads hand out the domain's values
(:class:`~services.notifier.domain.Subscription`, :class:`~services.notifier.domain.WebhookDelivery`,
:class:`Claimed`), never rows; the rules that decide what changes (ownership, acknowledgements, replays)
are the domain's, called inside the transaction that applies them. Time comes from the injected ``clock``
(or the caller's ``now``), never read here.

Hot paths use SQLAlchemy Core in batches: one transaction records a whole batch of Kafka records, one
claims a batch of due deliveries, one writes a batch of results. Claims are safe with several notifier
replicas: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, and on both an ``UPDATE ... WHERE next_attempt_at <=
now RETURNING`` that only one claimer can win. A claim is a lease: it pushes ``next_attempt_at`` forward,
so a delivery whose claimer died becomes due again by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Select,
    Table,
    and_,
    case,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlmodel import create_engine

from services.notifier import domain
from services.notifier.domain import (
    MAX_GENERATION,
    NOTICE_TYPE,
    TOKEN_ENDED,
    Action,
    Credentials,
    DeliveryStatus,
    Notice,
    Owner,
    PlannedDelivery,
    ReplayOutcome,
    RotationProgress,
    Subscription,
    SubscriptionChange,
    SubscriptionConflict,
    SubscriptionTarget,
    WebhookDelivery,
    plan_deliveries,
    plan_notice,
    select_within_restart_limit,
    webhook_event_type,
)
from services.notifier.tables import DELIVERIES, ENVIRONMENTS, NOTICES, ROTATIONS, SUBSCRIPTIONS
from shared.events import TokenStateChanged

__all__ = [
    "MAX_GENERATION",
    "RECORD_CHUNK",
    "AttemptResult",
    "Claimed",
    "EnvironmentDeleted",
    "NoticeRecorded",
    "Record",
    "Registration",
    "Store",
    "database_unavailable",
    "make_engine",
]

S, D, R, E = SUBSCRIPTIONS, DELIVERIES, ROTATIONS, ENVIRONMENTS  # short names for the SQL below
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class EnvironmentDeleted:
    """A tombstone: the environment is gone; ``deleted_at`` is the record's time (Unix seconds) if known."""

    environment_id: str
    deleted_at: float | None = None


Record = TokenStateChanged | EnvironmentDeleted


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this process holds a lease on, with what it needs to send it."""

    id: str
    subscription_id: str
    environment_id: str
    action: Action
    url: str
    secret: str
    body: str
    attempts: int
    generation: int
    created_at: float
    lease_until: float = float("inf")  # sent only while the lease still covers a whole request


_ACTIONS = {action.value: action for action in Action}
_STATUSES = {status.value: status for status in DeliveryStatus}
RECORD_CHUNK = 1000  # subscriptions of one event recorded per transaction

# One attempt's result (Store.complete), run through the DB-API's executemany.
_COMPLETE_SQL = (
    "UPDATE notifier_delivery SET status = ?, attempts = ?, next_attempt_at = ?, leased_until = 0.0, "
    "awaiting_ack_until = ?, last_status_code = ?, last_error = ?, delivered_at = ? WHERE id = ?"
)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What to write after an attempt: the delivery's new state, computed by the delivery worker."""

    id: str
    subscription_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    status_code: int | None
    error: str | None
    awaiting_ack_until: float = 0.0
    disable_subscription: bool = False
    disable_reason: str = "the webhook answered 410 Gone"


@dataclass(frozen=True, slots=True)
class NoticeRecorded:
    """What accepting a notice did: how many deliveries it has, and whether this call recorded it (False:
    the notice id was accepted before, nothing new is sent)."""

    deliveries: int
    created: bool


@dataclass(frozen=True, slots=True)
class Registration:
    """What registering a deployment did: the subscription, whether it is new, and (new only) its
    management key, which is never readable again."""

    subscription: Subscription
    created: bool
    management_key: str | None = None


def _subscription(row: RowMapping) -> Subscription:
    return Subscription(
        id=row["id"],
        environment_id=row["environment_id"],
        deployment_id=row["deployment_id"],
        url=row["url"],
        action=_ACTIONS[row["action"]],
        secret=row["secret"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        last_notified_generation=int(row["last_notified_generation"]),
        acked_generation=int(row["acked_generation"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        key_hash=row["key_hash"],
        owner_token_id=row["owner_token_id"],
        owner_generation=int(row["owner_generation"]),
        ended_generation=row["ended_generation"],
    )


def _delivery(row: RowMapping) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"],
        event_id=row["event_id"],
        subscription_id=row["subscription_id"],
        environment_id=row["environment_id"],
        generation=int(row["generation"]),
        rotation_id=row["rotation_id"],
        event_type=row["event_type"],
        action=_ACTIONS[row["action"]],
        body=row["body"],
        status=_STATUSES[row["status"]],
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        leased_until=float(row["leased_until"]),
        awaiting_ack_until=float(row["awaiting_ack_until"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=float(row["created_at"]),
        delivered_at=row["delivered_at"],
    )


def _values(change: SubscriptionChange, now: float) -> dict[str, Any]:
    """The columns a :class:`SubscriptionChange` sets."""
    values: dict[str, Any] = {"updated_at": now}
    if change.url is not None:
        values["url"] = change.url
    if change.action is not None:
        values["action"] = change.action.value
    if change.enabled is not None:
        values["enabled"] = change.enabled
        values["disabled_reason"] = None if change.enabled else change.disabled_reason
        if not change.enabled:
            values["ended_generation"] = None
    if change.acked_generation is not None:
        values["acked_generation"] = change.acked_generation
    if change.owner is not None:
        values.update(
            owner_token_id=change.owner.token_id,
            owner_generation=change.owner.generation,
            ended_generation=None,
        )
    return values


# A delivery may go out while its subscription is enabled; one that ended with its token still gets the
# deliveries up to the event that ended it (its deployment must still restart).
def _deliverable() -> ColumnElement[bool]:
    return or_(S.c.enabled.is_(True), D.c.generation <= func.coalesce(S.c.ended_generation, 0))


def _targets_query() -> Select[Any]:
    """The columns of a subscription the fan-out plans with (:class:`SubscriptionTarget`); add the where."""
    return select(S.c.id, S.c.deployment_id, S.c.action, S.c.last_notified_generation)


def _targets(conn: Connection, query: Select[Any]) -> list[SubscriptionTarget]:
    """The subscriptions a :func:`_targets_query` selects, as the domain's targets."""
    return [
        SubscriptionTarget(r.id, r.deployment_id, _ACTIONS[r.action], r.last_notified_generation)
        for r in conn.execute(query)
    ]


def _pending_rows(
    planned: Sequence[PlannedDelivery],
    event_id: str,
    environment_id: str,
    generation: int,
    rotation_id: str | None,
    event_type: str,
    now: float,
) -> list[dict[str, Any]]:
    """The delivery rows of one fan-out (a rotation's or a notice's): due now, never attempted."""
    return [
        {
            "id": p.id,
            "event_id": event_id,
            "subscription_id": p.subscription_id,
            "environment_id": environment_id,
            "generation": generation,
            "rotation_id": rotation_id,
            "event_type": event_type,
            "action": p.action.value,
            "body": p.body,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "leased_until": 0.0,
            "awaiting_ack_until": 0.0,
            "created_at": now,
        }
        for p in planned
    ]


def _disable_pending(conn: Connection, which: ColumnElement[bool], reason: str) -> None:
    """The pending deliveries ``which`` selects will not be sent: disabled, with ``reason``."""
    conn.execute(
        update(D)
        .where(which, D.c.status == DeliveryStatus.PENDING.value)
        .values(status=DeliveryStatus.DISABLED.value, last_error=reason)
    )


def make_engine(url: str, busy_timeout_seconds: float = 30.0) -> Engine:
    if url.startswith("sqlite"):
        busy_ms = int(busy_timeout_seconds * 1000)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed batch survives a crash of the machine, not only of the process, before
            # the Kafka offset that it covers is committed.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    # pre-ping: a connection the server dropped (a restart) is replaced at checkout instead of failing
    # the next statement; connect_timeout: an unreachable server fails fast (readiness, 503s) instead of
    # hanging.
    return create_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )


# SQLite's and PostgreSQL's words for "not now": the API answers 503 database_unavailable with these.
_UNAVAILABLE = (
    (("database is locked", "database table is locked", "database is busy"), "locked"),
    (("database or disk is full", "no space left", "disk full", "diskfull"), "full"),
    (("readonly database", "read-only"), "read_only"),
)


def database_unavailable(exc: BaseException) -> str | None:
    """Why a database error means the database cannot serve now (``locked``, ``full``, ``read_only``,
    ``unreachable``); None for any other error (a bug, which stays a 500)."""
    if isinstance(exc, SQLAlchemyTimeoutError | DisconnectionError):
        return "unreachable"
    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    text = str(getattr(exc, "orig", exc)).lower()
    for needles, kind in _UNAVAILABLE:
        if any(n in text for n in needles):
            return kind
    return "unreachable"


class Store:
    """The notifier's tables behind one engine. ``clock`` gives the time rows are stamped with."""

    def __init__(self, engine: Engine, clock: Clock = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self.is_postgres = engine.dialect.name == "postgresql"
        qmark = engine.dialect.paramstyle == "qmark"
        self._complete_sql = _COMPLETE_SQL if qmark else _COMPLETE_SQL.replace("?", "%s")

    @classmethod
    def from_url(cls, url: str, busy_timeout_seconds: float = 30.0, clock: Clock = time.time) -> Store:
        return cls(make_engine(url, busy_timeout_seconds), clock)

    def create_tables(self) -> None:
        """Bring the schema to the newest migration (an empty database gets every table; one made before
        the migrations is adopted first: :mod:`services.notifier.migrate`)."""
        from services.notifier import migrate

        migrate.upgrade(self.engine)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(select(1))
        except Exception:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _insert_ignore(self, table: Table) -> Any:
        return (pg_insert(table) if self.is_postgres else sqlite_insert(table)).on_conflict_do_nothing()

    # --- subscriptions -------------------------------------------------------------------------------

    def register(
        self,
        environment_id: str,
        deployment_id: str,
        url: str,
        action: Action,
        known_generation: int,
        credentials: Credentials,
        owner_token_id: str | None = None,
        key: str | None = None,
        limit: int = 0,
    ) -> Registration:
        """Register a deployment, or register it again (which needs its management key).

        A new subscription gets ``credentials`` and starts at ``known_generation`` (what the registering
        token had), so it is not told about rotations that happened before it existed; ``limit`` > 0 caps
        the environment's subscriptions (:class:`~services.notifier.domain.SubscriptionLimitReached`).
        Registering a deployment id again updates its url and action
        (:class:`~services.notifier.domain.SubscriptionForbidden` without the key).
        """
        owner = Owner(owner_token_id, known_generation) if owner_token_id is not None else None
        for _ in range(3):
            now = self.clock()
            try:
                with self._tx() as conn:
                    if self.is_postgres:  # count and insert under one lock per environment
                        conn.execute(
                            select(func.pg_advisory_xact_lock(func.hashtext(f"sub:{environment_id}")))
                        )
                    row = (
                        conn.execute(
                            select(S).where(
                                S.c.environment_id == environment_id, S.c.deployment_id == deployment_id
                            )
                        )
                        .mappings()
                        .first()
                    )
                    if row is not None:
                        existing = domain.require_key(_subscription(row), key)
                        change = domain.reregistration(url, action, owner)
                        conn.execute(update(S).where(S.c.id == existing.id).values(**_values(change, now)))
                        return Registration(self._subscription(conn, existing.id), created=False)
                    domain.require_room(self._count(conn, environment_id), limit)
                    conn.execute(
                        insert(S).values(
                            id=credentials.subscription_id,
                            environment_id=environment_id,
                            deployment_id=deployment_id,
                            url=url,
                            action=action.value,
                            secret=credentials.secret,
                            enabled=True,
                            last_notified_generation=known_generation,
                            acked_generation=known_generation,
                            created_at=now,
                            updated_at=now,
                            key_hash=domain.key_hash(credentials.management_key),
                            owner_token_id=owner_token_id,
                            owner_generation=known_generation,
                            ended_generation=None,
                        )
                    )
                    created = self._subscription(conn, credentials.subscription_id)
                    return Registration(created, created=True, management_key=credentials.management_key)
            except IntegrityError:
                continue  # a concurrent registration of the same deployment won; read it on the next pass
        raise SubscriptionConflict(deployment_id)

    @staticmethod
    def _count(conn: Connection, environment_id: str) -> int:
        query = select(func.count()).select_from(S).where(S.c.environment_id == environment_id)
        return int(conn.execute(query).scalar_one())

    def count_subscriptions(self, environment_id: str) -> int:
        with self.engine.connect() as conn:
            return self._count(conn, environment_id)

    @staticmethod
    def _find(conn: Connection, environment_id: str, sub_id: str) -> Subscription | None:
        row = (
            conn.execute(select(S).where(S.c.id == sub_id, S.c.environment_id == environment_id))
            .mappings()
            .first()
        )
        return None if row is None else _subscription(row)

    def _owned(
        self, conn: Connection, environment_id: str, sub_id: str, key: str | None
    ) -> Subscription | None:
        """The subscription if the key is its management key (else Forbidden); None if there is none."""
        found = self._find(conn, environment_id, sub_id)
        return None if found is None else domain.require_key(found, key)

    def secret(self, environment_id: str, sub_id: str, key: str | None) -> str | None:
        with self.engine.connect() as conn:
            owned = self._owned(conn, environment_id, sub_id, key)
        return None if owned is None else owned.secret

    @staticmethod
    def _subscription(conn: Connection, sub_id: str) -> Subscription:
        return _subscription(conn.execute(select(S).where(S.c.id == sub_id)).mappings().one())

    def get_subscription(self, environment_id: str, sub_id: str) -> Subscription | None:
        with self.engine.connect() as conn:
            return self._find(conn, environment_id, sub_id)

    def list_subscriptions(
        self, environment_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[Subscription]:
        """Up to ``limit`` subscriptions in creation order, after the ``(created_at, id)`` last seen."""
        query = select(S).where(S.c.environment_id == environment_id)
        if after is not None:
            created, sub_id = after
            query = query.where(
                or_(S.c.created_at > created, and_(S.c.created_at == created, S.c.id > sub_id))
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(S.c.created_at, S.c.id).limit(limit)).mappings()
            return [_subscription(r) for r in rows]

    def change_subscription(
        self,
        environment_id: str,
        sub_id: str,
        key: str | None,
        decide: Callable[[Subscription], SubscriptionChange],
    ) -> Subscription | None:
        """Apply what ``decide`` (a rule of the domain) makes of the subscription the key proves, in one
        transaction; None if there is no such subscription (Forbidden without its key)."""
        with self._tx() as conn:
            found = self._owned(conn, environment_id, sub_id, key)
            if found is None:
                return None
            change = decide(found)
            if not change.empty:
                conn.execute(update(S).where(S.c.id == sub_id).values(**_values(change, self.clock())))
            return self._subscription(conn, sub_id)

    def update_subscription(
        self,
        environment_id: str,
        sub_id: str,
        key: str | None,
        url: str | None,
        action: Action | None,
        enabled: bool | None,
        owner_token_id: str | None = None,
        owner_generation: int = 0,
    ) -> Subscription | None:
        """Change a subscription its management key proves; None if there is none (else Forbidden)."""
        owner = Owner(owner_token_id, owner_generation) if owner_token_id is not None else None
        change = domain.patch(url, action, enabled, owner)
        return self.change_subscription(environment_id, sub_id, key, lambda _: change)

    def delete_subscription(self, environment_id: str, sub_id: str, key: str | None) -> bool:
        with self._tx() as conn:
            if self._owned(conn, environment_id, sub_id, key) is None:
                return False
            conn.execute(S.delete().where(S.c.id == sub_id))
            _disable_pending(conn, D.c.subscription_id == sub_id, "subscription deleted")
        return True

    def acknowledge(
        self,
        environment_id: str,
        sub_id: str,
        generation: int,
        key: str | None = None,
        owner_token_id: str | None = None,
        owner_generation: int = 0,
    ) -> Subscription | None:
        """The deployment applied ``generation``: record it and free its restart slot.

        The rule is :func:`services.notifier.domain.acknowledgement` (``generation`` at most the
        environment's current one: :class:`~services.notifier.domain.GenerationAhead`), against the newest
        generation consumed, read in the same transaction.
        """
        owner = Owner(owner_token_id, owner_generation) if owner_token_id is not None else None
        with self._tx() as conn:
            found = self._owned(conn, environment_id, sub_id, key)
            if found is None:
                return None
            current = self._current_generation(conn, environment_id)
            change = domain.acknowledgement(found, generation, current, owner)
            if not change.empty:
                conn.execute(update(S).where(S.c.id == sub_id).values(**_values(change, self.clock())))
            conn.execute(
                update(D)
                .where(
                    D.c.subscription_id == sub_id, D.c.generation <= generation, D.c.awaiting_ack_until > 0
                )
                .values(awaiting_ack_until=0.0)
            )
            return self._subscription(conn, sub_id)

    @staticmethod
    def _current_generation(conn: Connection, environment_id: str) -> int:
        value = conn.execute(select(E.c.generation).where(E.c.environment_id == environment_id)).scalar()
        return int(value or 0)

    def current_generation(self, environment_id: str) -> int:
        """The newest generation consumed for the environment (0 if none)."""
        with self.engine.connect() as conn:
            return self._current_generation(conn, environment_id)

    # --- the consumer's side: Kafka records become deliveries ---------------------------------------

    def record_events(
        self,
        events: Sequence[Record],
        on_progress: Callable[[int], None] | None = None,
        chunk: int = RECORD_CHUNK,
    ) -> int:
        """Record one delivery per due subscription for each event; how many new.

        One transaction per ``chunk`` subscriptions of an event: it inserts their deliveries and moves their
        last notified generation to the event's, so the next chunk (or a re-consumption after a crash before
        the offset commit) selects only subscriptions not recorded yet. ``on_progress(created)`` runs after
        each commit, so deliveries can start while a large fan-out is still being recorded. Idempotent: the
        unique (event_id, subscription_id) and the last notified generation make re-consuming a no-op.
        """
        created = 0
        for ev in events:
            if isinstance(ev, EnvironmentDeleted):
                self.delete_environment(ev.environment_id, ev.deleted_at)
                continue
            event_type = webhook_event_type(ev.change.type)
            if event_type is None:
                self._note_generation(ev)
                continue
            first = True
            while True:
                count = self._record_chunk(ev, event_type, chunk, first)
                first = False
                if count is None:
                    break
                created += count
                if on_progress is not None and count:
                    on_progress(count)
        return created

    def _record_chunk(self, ev: TokenStateChanged, event_type: str, chunk: int, first: bool) -> int | None:
        """One transaction of :meth:`record_events`; None when no subscription is left to record."""
        now = self.clock()
        with self._tx() as conn:
            if first:
                self._note_generation(ev, conn)
                self._end_subscriptions_of_gone_tokens(conn, ev, now)
                conn.execute(
                    self._insert_ignore(R).values(
                        environment_id=ev.environment_id,
                        generation=ev.generation,
                        event_id=ev.event_id,
                        rotation_id=ev.change.rotation_id,
                        change_type=ev.change.type.value,
                        occurred_at=ev.change.at.timestamp(),
                        recorded_at=now,
                    )
                )
            query = (
                _targets_query()
                .where(
                    S.c.environment_id == ev.environment_id,
                    or_(S.c.enabled.is_(True), S.c.ended_generation == ev.generation),
                    S.c.last_notified_generation < ev.generation,
                )
                .limit(chunk)
            )
            if self.is_postgres:
                query = query.with_for_update()
            planned = plan_deliveries(ev, _targets(conn, query))
            if not planned:
                return None
            rows = _pending_rows(
                planned, ev.event_id, ev.environment_id, ev.generation, ev.change.rotation_id, event_type, now
            )
            # RETURNING counts what was new on both databases (rowcount of a batched insert does not).
            new = len(conn.execute(self._insert_ignore(D).returning(D.c.id), rows).all())
            conn.execute(
                update(S)
                .where(
                    S.c.id.in_([p.subscription_id for p in planned]),
                    S.c.last_notified_generation < ev.generation,
                )
                .values(last_notified_generation=ev.generation)
            )
        return new

    def _note_generation(self, ev: TokenStateChanged, conn: Connection | None = None) -> None:
        """Remember the environment's newest generation (the ceiling of acknowledgements)."""
        if conn is None:
            with self._tx() as own:
                self._note_generation(ev, own)
            return
        now = self.clock()
        values = {"environment_id": ev.environment_id, "generation": ev.generation, "updated_at": now}
        statement = pg_insert(E) if self.is_postgres else sqlite_insert(E)
        conn.execute(
            statement.values(**values).on_conflict_do_update(
                index_elements=[E.c.environment_id],
                set_={"generation": statement.excluded.generation, "updated_at": now},
                where=E.c.generation < statement.excluded.generation,
            )
        )

    @staticmethod
    def _end_subscriptions_of_gone_tokens(conn: Connection, ev: TokenStateChanged, now: float) -> None:
        """Subscriptions whose token this event no longer lists end: disabled, told of this event only.

        Only an event newer than the token's own generation counts (a lagging consumer reading an old
        record knows nothing of tokens made since). A subscription without an owner (registered before
        ownership existed) is left alone.
        """
        listed = [t.token_id for t in ev.tokens]
        conn.execute(
            update(S)
            .where(
                S.c.environment_id == ev.environment_id,
                S.c.enabled.is_(True),
                S.c.owner_token_id.is_not(None),
                S.c.owner_token_id.not_in(listed),
                S.c.owner_generation < ev.generation,
            )
            .values(
                enabled=False, disabled_reason=TOKEN_ENDED, ended_generation=ev.generation, updated_at=now
            )
        )

    def delete_environment(self, environment_id: str, deleted_at: float | None = None) -> None:
        """A tombstone: the environment's deliveries, rotations and subscriptions go, so an environment
        re-created under the same id inherits nothing. Subscriptions registered after the tombstone's time
        (for the new environment, while a lagging consumer catches up) stay."""
        with self._tx() as conn:
            conn.execute(D.delete().where(D.c.environment_id == environment_id))
            conn.execute(R.delete().where(R.c.environment_id == environment_id))
            conn.execute(E.delete().where(E.c.environment_id == environment_id))
            conn.execute(NOTICES.delete().where(NOTICES.c.environment_id == environment_id))
            subscriptions = S.delete().where(S.c.environment_id == environment_id)
            if deleted_at is not None:
                subscriptions = subscriptions.where(S.c.created_at <= deleted_at)
            conn.execute(subscriptions)

    # --- notices ----------------------------------------------------------------------------------

    def record_notice(self, notice: Notice) -> NoticeRecorded:
        """Accept a notice once: one transaction stores it and one pending delivery per enabled subscription
        of its environment (the durable queue, as for rotations). The same notice id again records
        nothing and answers the first call's count."""
        now = self.clock()
        n = NOTICES
        event_id = domain.notice_event_id(notice.environment_id, notice.notice_id)
        with self._tx() as conn:
            inserted = conn.execute(
                self._insert_ignore(n)
                .values(
                    environment_id=notice.environment_id,
                    notice_id=notice.notice_id,
                    event_id=event_id,
                    kind=notice.kind,
                    generation=notice.generation,
                    due_at=notice.due_at,
                    forced_at=notice.forced_at,
                    deliveries=0,
                    accepted_at=now,
                )
                .returning(n.c.notice_id)
            ).all()
            if not inserted:
                count = conn.execute(
                    select(n.c.deliveries).where(
                        n.c.environment_id == notice.environment_id, n.c.notice_id == notice.notice_id
                    )
                ).scalar_one()
                return NoticeRecorded(int(count), created=False)
            enabled = _targets_query().where(
                S.c.environment_id == notice.environment_id, S.c.enabled.is_(True)
            )
            planned = plan_notice(notice, _targets(conn, enabled), now)
            if planned:
                rows = _pending_rows(
                    planned, event_id, notice.environment_id, notice.generation, None, NOTICE_TYPE, now
                )
                conn.execute(self._insert_ignore(D), rows)
                conn.execute(
                    update(n)
                    .where(n.c.environment_id == notice.environment_id, n.c.notice_id == notice.notice_id)
                    .values(deliveries=len(planned))
                )
        return NoticeRecorded(len(planned), created=True)

    # --- the delivery side -------------------------------------------------------------------------

    def claim_due(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        restart_limit: int,
        restart_recheck_seconds: float,
    ) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries, keeping each environment's restarts within ``restart_limit``.

        Restarts held back by the limit are re-checked after ``restart_recheck_seconds`` so they do not
        block the queue in front of other deliveries. Two statements in the common case: one reads the due
        deliveries with their subscription's url and secret, one conditionally moves their lease forward
        (only what that update returns was won; a concurrent claimer wins the rest).
        """
        lease_until = now + lease_seconds
        with self._tx() as conn:
            query = (
                select(
                    D.c.id,
                    D.c.subscription_id,
                    D.c.environment_id,
                    D.c.action,
                    D.c.body,
                    D.c.attempts,
                    D.c.generation,
                    D.c.created_at,
                    S.c.url,
                    S.c.secret,
                    _deliverable().label("deliverable"),
                )
                .select_from(D.outerjoin(S, S.c.id == D.c.subscription_id))
                .where(D.c.status == DeliveryStatus.PENDING.value, D.c.next_attempt_at <= now)
                .order_by(D.c.next_attempt_at)  # the index order: no sort of every due row
                .limit(limit)
            )
            if self.is_postgres:
                query = query.with_for_update(skip_locked=True, of=D)
            rows = conn.execute(query).all()
            if not rows:
                return []
            candidates = [(r.id, r.environment_id, _ACTIONS[r.action]) for r in rows]
            restart_envs = sorted({env for _, env, action in candidates if action is Action.RESTART})
            in_flight: dict[str, int] = {}
            if restart_envs and restart_limit > 0:
                if self.is_postgres:
                    # Serialise restart accounting per environment across replicas until this commit.
                    for env in restart_envs:
                        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(env))))
                in_flight = self._restarts_in_flight(conn, restart_envs, now)
            chosen = select_within_restart_limit(candidates, in_flight, restart_limit)
            if len(chosen) < len(candidates):
                chosen_set = set(chosen)
                held_back = [did for did, _, _ in candidates if did not in chosen_set]
                conn.execute(
                    update(D)
                    .where(D.c.id.in_(held_back), D.c.status == DeliveryStatus.PENDING.value)
                    .values(next_attempt_at=now + restart_recheck_seconds)
                )
            if not chosen:
                return []
            won = {
                r.id
                for r in conn.execute(
                    update(D)
                    .where(
                        D.c.id.in_(chosen),
                        D.c.status == DeliveryStatus.PENDING.value,
                        D.c.next_attempt_at <= now,
                    )
                    .values(next_attempt_at=lease_until, leased_until=lease_until)
                    .returning(D.c.id)
                )
            }
            if not won:
                return []
            claimed: list[Claimed] = []
            orphans: list[str] = []
            disabled: list[str] = []
            for r in rows:  # in due order
                if r.id not in won:
                    continue
                if r.url is None:  # its subscription was deleted between record and claim
                    orphans.append(r.id)
                    continue
                if not r.deliverable:  # its subscription was disabled (or ended) meanwhile
                    disabled.append(r.id)
                    continue
                claimed.append(
                    Claimed(
                        r.id,
                        r.subscription_id,
                        r.environment_id,
                        _ACTIONS[r.action],
                        r.url,
                        r.secret,
                        r.body,
                        r.attempts,
                        r.generation,
                        r.created_at,
                        lease_until,
                    )
                )
            if orphans:
                _disable_pending(conn, D.c.id.in_(orphans), "subscription deleted")
            if disabled:
                _disable_pending(conn, D.c.id.in_(disabled), "subscription disabled")
        return claimed

    @staticmethod
    def _restarts_in_flight(conn: Connection, envs: Sequence[str], now: float) -> dict[str, int]:
        sending = (D.c.status == DeliveryStatus.PENDING.value) & (D.c.leased_until > now)
        waiting = (D.c.status == DeliveryStatus.DELIVERED.value) & (D.c.awaiting_ack_until > now)
        rows = conn.execute(
            select(D.c.environment_id, func.count())
            .where(D.c.environment_id.in_(envs), D.c.action == Action.RESTART.value, sending | waiting)
            .group_by(D.c.environment_id)
        )
        return {env: int(count) for env, count in rows}

    def complete(self, results: Sequence[AttemptResult], now: float) -> None:
        """Write a batch of attempt results; a 410 disables the subscription and its pending deliveries."""
        if not results:
            return
        delivered = DeliveryStatus.DELIVERED
        rows = [
            (
                r.status.value,
                r.attempts,
                r.next_attempt_at,
                r.awaiting_ack_until,
                r.status_code,
                r.error[:300] if r.error else None,
                now if r.status is delivered else None,
                r.id,
            )
            for r in results
        ]
        with self._tx() as conn:
            # The DB-API's own executemany: one prepared statement, no per-row work in SQLAlchemy.
            conn.exec_driver_sql(self._complete_sql, rows)
            waiting = [r.id for r in results if r.awaiting_ack_until > 0]
            if waiting:  # the deployment may have acknowledged before this result was written
                acked = select(S.c.acked_generation).where(S.c.id == D.c.subscription_id).scalar_subquery()
                conn.execute(
                    update(D)
                    .where(D.c.id.in_(waiting), D.c.generation <= acked)
                    .values(awaiting_ack_until=0.0)
                )
            reasons = {r.subscription_id: r.disable_reason for r in results if r.disable_subscription}
            for reason in sorted(set(reasons.values())):
                gone = sorted(sub for sub, why in reasons.items() if why == reason)
                conn.execute(
                    update(S)
                    .where(S.c.id.in_(gone))
                    .values(enabled=False, disabled_reason=reason, ended_generation=None, updated_at=now)
                )
                _disable_pending(conn, D.c.subscription_id.in_(gone), "subscription disabled")

    # --- reading -----------------------------------------------------------------------------------

    def queue_depth(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(D).where(D.c.status == DeliveryStatus.PENDING.value)
                ).scalar_one()
            )

    def count_by_status(self, environment_id: str | None = None) -> dict[str, int]:
        query = select(D.c.status, func.count()).group_by(D.c.status)
        if environment_id is not None:
            query = query.where(D.c.environment_id == environment_id)
        with self.engine.connect() as conn:
            return {status: int(n) for status, n in conn.execute(query)}

    def list_deliveries(
        self,
        environment_id: str,
        status: DeliveryStatus | None,
        limit: int,
        subscription_id: str | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[WebhookDelivery]:
        """Newest first, up to ``limit``, after the ``(created_at, id)`` of the last one seen."""
        query = select(D).where(D.c.environment_id == environment_id)
        if after is not None:
            created, delivery = after
            query = query.where(
                or_(D.c.created_at < created, and_(D.c.created_at == created, D.c.id > delivery))
            )
        if status is not None:
            query = query.where(D.c.status == status.value)
        if subscription_id is not None:
            query = query.where(D.c.subscription_id == subscription_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(D.c.created_at.desc(), D.c.id).limit(limit)).mappings()
            return [_delivery(r) for r in rows]

    def get_delivery(self, environment_id: str, delivery_id: str) -> WebhookDelivery | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(D).where(D.c.id == delivery_id, D.c.environment_id == environment_id))
                .mappings()
                .first()
            )
        return _delivery(row) if row else None

    def replay(self, environment_id: str, delivery_id: str) -> tuple[WebhookDelivery, ReplayOutcome] | None:
        """Queue a dead (or disabled) delivery again with a fresh set of attempts, due now, if
        :func:`services.notifier.domain.replay_outcome` allows it; the delivery and the outcome, None if
        there is no such delivery."""
        with self._tx() as conn:
            found = conn.execute(
                select(D.c.status, _deliverable().label("deliverable"), S.c.id.label("sub"))
                .select_from(D.outerjoin(S, S.c.id == D.c.subscription_id))
                .where(D.c.id == delivery_id, D.c.environment_id == environment_id)
            ).first()
            if found is None:
                return None
            outcome = domain.replay_outcome(
                _STATUSES[found.status], found.sub is not None and bool(found.deliverable)
            )
            if outcome is ReplayOutcome.REPLAYED:
                conn.execute(
                    update(D)
                    .where(D.c.id == delivery_id)
                    .values(
                        status=DeliveryStatus.PENDING.value,
                        attempts=0,
                        next_attempt_at=self.clock(),
                        leased_until=0.0,
                        last_error=None,
                    )
                )
            row = conn.execute(select(D).where(D.c.id == delivery_id)).mappings().one()
        return _delivery(row), outcome

    def rotations(
        self, environment_id: str, limit: int = 100, before: int | None = None
    ) -> list[RotationProgress]:
        """Progress of the newest ``limit`` rotations (older than ``before``), counted by the database."""
        with self.engine.connect() as conn:
            query = select(R.c.generation, R.c.rotation_id).where(R.c.environment_id == environment_id)
            if before is not None:
                query = query.where(R.c.generation < before)
            rotations = conn.execute(query.order_by(R.c.generation.desc()).limit(limit)).all()
            if not rotations:
                return []

            def count(condition: ColumnElement[bool]) -> Any:
                return func.sum(case((condition, 1), else_=0))

            counts = {
                row.generation: row
                for row in conn.execute(
                    select(
                        D.c.generation,
                        count(D.c.status == DeliveryStatus.DELIVERED.value).label("notified"),
                        count(S.c.acked_generation >= D.c.generation).label("acknowledged"),
                        count(D.c.status == DeliveryStatus.PENDING.value).label("pending"),
                        count(D.c.status == DeliveryStatus.DEAD.value).label("dead"),
                    )
                    .select_from(D.join(S, S.c.id == D.c.subscription_id))
                    .where(
                        D.c.environment_id == environment_id,
                        D.c.generation.in_([g for g, _ in rotations]),
                        D.c.event_type != NOTICE_TYPE,  # a warning is no rotation's delivery
                    )
                    .group_by(D.c.generation)
                )
            }
        progress = []
        for generation, rotation_id in rotations:
            row = counts.get(generation)
            numbers = (
                (int(row.notified), int(row.acknowledged), int(row.pending), int(row.dead))
                if row
                else (0,) * 4
            )
            progress.append(RotationProgress(generation, rotation_id, *numbers))
        return progress
