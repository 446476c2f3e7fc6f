"""The notifier's database: subscriptions, deliveries (the durable queue) and the rotations seen.

SQLModel tables on SQLite (default) or PostgreSQL. Hot paths use SQLAlchemy Core in batches: one transaction
records a whole batch of Kafka records, one claims a batch of due deliveries, one writes a batch of results.
Claims are safe with several notifier replicas: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, and on both an
``UPDATE ... WHERE next_attempt_at <= now RETURNING`` that only one claimer can win. A claim is a lease: it
pushes ``next_attempt_at`` forward, so a delivery whose claimer died becomes due again by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Index,
    Text,
    UniqueConstraint,
    and_,
    case,
    event,
    func,
    insert,
    inspect,
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
from sqlmodel import Column, Field, SQLModel, create_engine

from services.notifier.domain import (
    Action,
    DeliveryStatus,
    RotationProgress,
    SubscriptionTarget,
    plan_deliveries,
    select_within_restart_limit,
    webhook_event_type,
)
from shared.events import TokenStateChanged

TOKEN_ENDED = (
    "the streaming token that created it is no longer valid; acknowledge or re-register with the "
    "management key and a valid token to renew it"
)


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_subscription_id() -> str:
    return f"sub_{secrets.token_hex(12)}"


def new_management_key() -> str:
    """The key that proves who created a subscription: shown once, stored only as its SHA-256."""
    return f"mk_{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _key_matches(stored_hash: str | None, key: str | None) -> bool:
    if stored_hash is None or not key:
        return False
    return hmac.compare_digest(stored_hash, key_hash(key))


class Subscription(SQLModel, table=True):
    __tablename__ = "notifier_subscription"
    __table_args__ = (UniqueConstraint("environment_id", "deployment_id", name="uq_notifier_sub_deployment"),)

    id: str = Field(primary_key=True, max_length=40)
    environment_id: str = Field(index=True, max_length=200)
    deployment_id: str = Field(max_length=200)
    url: str = Field(sa_column=Column(Text, nullable=False))
    action: str = Field(max_length=16)
    secret: str = Field(max_length=100)
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=200)
    last_notified_generation: int = 0
    acked_generation: int = 0
    created_at: float
    updated_at: float
    # Ownership: the management key's hash, and the streaming token (by public id) it was made or last
    # renewed with, of that generation; ended_generation = the event that no longer listed that token.
    key_hash: str | None = Field(default=None, max_length=64)
    owner_token_id: str | None = Field(default=None, max_length=100)
    owner_generation: int = 0
    ended_generation: int | None = None


class Delivery(SQLModel, table=True):
    __tablename__ = "notifier_delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "subscription_id", name="uq_notifier_delivery_event_sub"),
        Index("ix_notifier_delivery_due", "status", "next_attempt_at"),
        Index("ix_notifier_delivery_env_gen", "environment_id", "generation"),
    )

    id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(max_length=64)
    subscription_id: str = Field(index=True, max_length=40)
    environment_id: str = Field(max_length=200)
    generation: int
    rotation_id: str | None = Field(default=None, max_length=100)
    event_type: str = Field(max_length=64)
    action: str = Field(max_length=16)
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: float
    leased_until: float = 0.0
    awaiting_ack_until: float = 0.0
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=300)
    created_at: float
    delivered_at: float | None = None


class Rotation(SQLModel, table=True):
    __tablename__ = "notifier_rotation"

    environment_id: str = Field(primary_key=True, max_length=200)
    generation: int = Field(primary_key=True)
    event_id: str = Field(max_length=64)
    rotation_id: str | None = Field(default=None, max_length=100)
    change_type: str = Field(max_length=16)
    occurred_at: float
    recorded_at: float


class EnvironmentState(SQLModel, table=True):
    """The newest generation consumed for an environment (acknowledgements may not claim a later one)."""

    __tablename__ = "notifier_environment"

    environment_id: str = Field(primary_key=True, max_length=200)
    generation: int
    updated_at: float


S = SQLModel.metadata.tables[Subscription.__tablename__]
D = SQLModel.metadata.tables[Delivery.__tablename__]
R = SQLModel.metadata.tables[Rotation.__tablename__]
E = SQLModel.metadata.tables[EnvironmentState.__tablename__]
TABLES = [S, D, R, E]
MAX_GENERATION = 2**63 - 1


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


class SubscriptionConflict(Exception):
    pass


class SubscriptionForbidden(Exception):
    """The subscription exists but the caller did not prove its management key."""


class SubscriptionLimitReached(Exception):
    """The environment has as many subscriptions as it may."""


class GenerationAhead(Exception):
    """An acknowledgement of a generation newer than the environment's current one."""

    def __init__(self, current: int) -> None:
        super().__init__(current)
        self.current = current


# A delivery may go out while its subscription is enabled; one that ended with its token still gets the
# deliveries up to the event that ended it (its deployment must still restart).
def _deliverable() -> Any:
    return or_(S.c.enabled.is_(True), D.c.generation <= func.coalesce(S.c.ended_generation, 0))


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
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        qmark = engine.dialect.paramstyle == "qmark"
        self._complete_sql = _COMPLETE_SQL if qmark else _COMPLETE_SQL.replace("?", "%s")

    @classmethod
    def from_url(cls, url: str, busy_timeout_seconds: float = 30.0) -> Store:
        return cls(make_engine(url, busy_timeout_seconds))

    def create_tables(self) -> None:
        SQLModel.metadata.create_all(self.engine, tables=TABLES)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a table was created (no migrations yet): nullable or defaulted ones only."""
        with self._tx() as conn:
            for table in TABLES:
                have = {c["name"] for c in inspect(conn).get_columns(table.name)}
                for column in table.columns:
                    if column.name in have:
                        continue
                    kind = column.type.compile(dialect=self.engine.dialect)
                    default = " DEFAULT 0 NOT NULL" if column.name == "owner_generation" else ""
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{default}")

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

    def _insert_ignore(self, table: Any) -> Any:
        return (pg_insert(table) if self.is_postgres else sqlite_insert(table)).on_conflict_do_nothing()

    # --- subscriptions -------------------------------------------------------------------------------

    def upsert_subscription(
        self,
        environment_id: str,
        deployment_id: str,
        url: str,
        action: Action,
        known_generation: int,
        owner_token_id: str | None = None,
        key: str | None = None,
        limit: int = 0,
    ) -> tuple[dict[str, Any], bool]:
        """Register a deployment; (row, created). A new row carries its ``management_key`` (only now).

        Registering a deployment id again updates its url and action, and needs the management key
        (:class:`SubscriptionForbidden` without it). A new subscription starts at ``known_generation`` (what
        the registering token had), so it is not told about rotations that happened before it existed;
        ``limit`` > 0 caps the environment's subscriptions (:class:`SubscriptionLimitReached`).
        """
        for _ in range(3):
            now = time.time()
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
                        if not _key_matches(row["key_hash"], key):
                            raise SubscriptionForbidden(row["id"])
                        conn.execute(
                            update(S)
                            .where(S.c.id == row["id"])
                            .values(
                                url=url,
                                action=action.value,
                                enabled=True,
                                disabled_reason=None,
                                updated_at=now,
                                **self._renewed(owner_token_id, known_generation),
                            )
                        )
                        return self._subscription(conn, row["id"]), False
                    if limit > 0 and self._count(conn, environment_id) >= limit:
                        raise SubscriptionLimitReached(environment_id)
                    sub_id = new_subscription_id()
                    management_key = new_management_key()
                    conn.execute(
                        insert(S).values(
                            id=sub_id,
                            environment_id=environment_id,
                            deployment_id=deployment_id,
                            url=url,
                            action=action.value,
                            secret=new_secret(),
                            enabled=True,
                            last_notified_generation=known_generation,
                            acked_generation=known_generation,
                            created_at=now,
                            updated_at=now,
                            key_hash=key_hash(management_key),
                            owner_token_id=owner_token_id,
                            owner_generation=known_generation,
                            ended_generation=None,
                        )
                    )
                    return {**self._subscription(conn, sub_id), "management_key": management_key}, True
            except IntegrityError:
                continue  # a concurrent registration of the same deployment won; read it on the next pass
        raise SubscriptionConflict(deployment_id)

    @staticmethod
    def _renewed(owner_token_id: str | None, generation: int) -> dict[str, Any]:
        """Values that hand a subscription to the (valid) token its owner just used."""
        if owner_token_id is None:
            return {}
        return {"owner_token_id": owner_token_id, "owner_generation": generation, "ended_generation": None}

    @staticmethod
    def _count(conn: Connection, environment_id: str) -> int:
        query = select(func.count()).select_from(S).where(S.c.environment_id == environment_id)
        return int(conn.execute(query).scalar_one())

    def count_subscriptions(self, environment_id: str) -> int:
        with self.engine.connect() as conn:
            return self._count(conn, environment_id)

    @staticmethod
    def _owned(conn: Connection, environment_id: str, sub_id: str, key: str | None) -> dict[str, Any] | None:
        """The subscription if the key is its management key; None if there is no such subscription."""
        row = (
            conn.execute(select(S).where(S.c.id == sub_id, S.c.environment_id == environment_id))
            .mappings()
            .first()
        )
        if row is None:
            return None
        if not _key_matches(row["key_hash"], key):
            raise SubscriptionForbidden(sub_id)
        return dict(row)

    def secret(self, environment_id: str, sub_id: str, key: str | None) -> str | None:
        with self.engine.connect() as conn:
            row = self._owned(conn, environment_id, sub_id, key)
        return None if row is None else str(row["secret"])

    @staticmethod
    def _subscription(conn: Connection, sub_id: str) -> dict[str, Any]:
        return dict(conn.execute(select(S).where(S.c.id == sub_id)).mappings().one())

    def get_subscription(self, environment_id: str, sub_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(S).where(S.c.id == sub_id, S.c.environment_id == environment_id))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def list_subscriptions(
        self, environment_id: str, limit: int, after: tuple[float, str] | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` subscriptions in creation order, after the ``(created_at, id)`` last seen."""
        query = select(S).where(S.c.environment_id == environment_id)
        if after is not None:
            created, sub_id = after
            query = query.where(
                or_(S.c.created_at > created, and_(S.c.created_at == created, S.c.id > sub_id))
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(S.c.created_at, S.c.id).limit(limit)).mappings()
            return [dict(r) for r in rows]

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
    ) -> dict[str, Any] | None:
        """Change a subscription its management key proves; None if there is none (else Forbidden)."""
        values: dict[str, Any] = {
            "updated_at": time.time(),
            **self._renewed(owner_token_id, owner_generation),
        }
        if url is not None:
            values["url"] = url
        if action is not None:
            values["action"] = action.value
        if enabled is not None:
            values["enabled"] = enabled
            values["disabled_reason"] = None if enabled else "disabled through the API"
            if not enabled:
                values["ended_generation"] = None
        with self._tx() as conn:
            if self._owned(conn, environment_id, sub_id, key) is None:
                return None
            conn.execute(update(S).where(S.c.id == sub_id).values(**values))
            return self._subscription(conn, sub_id)

    def delete_subscription(self, environment_id: str, sub_id: str, key: str | None) -> bool:
        with self._tx() as conn:
            if self._owned(conn, environment_id, sub_id, key) is None:
                return False
            conn.execute(S.delete().where(S.c.id == sub_id))
            conn.execute(
                update(D)
                .where(D.c.subscription_id == sub_id, D.c.status == DeliveryStatus.PENDING.value)
                .values(status=DeliveryStatus.DISABLED.value, last_error="subscription deleted")
            )
        return True

    def acknowledge(
        self,
        environment_id: str,
        sub_id: str,
        generation: int,
        key: str | None = None,
        owner_token_id: str | None = None,
        owner_generation: int = 0,
    ) -> dict[str, Any] | None:
        """The deployment applied ``generation``: record it and free its restart slot.

        ``generation`` may not be newer than the environment's current one (the newest consumed, or what
        the caller's token belongs to): :class:`GenerationAhead`. With ``owner_token_id`` the subscription
        is renewed for that (valid) token, and re-enabled if it had ended with its old one.
        """
        with self._tx() as conn:
            row = self._owned(conn, environment_id, sub_id, key)
            if row is None:
                return None
            current = max(self._current_generation(conn, environment_id), owner_generation)
            if generation > current:
                raise GenerationAhead(current)
            values: dict[str, Any] = self._renewed(owner_token_id, owner_generation)
            if generation > row["acked_generation"]:
                values["acked_generation"] = generation
            if owner_token_id is not None and not row["enabled"] and row["ended_generation"] is not None:
                values.update(enabled=True, disabled_reason=None)
            if values:
                conn.execute(update(S).where(S.c.id == sub_id).values(updated_at=time.time(), **values))
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
        now = time.time()
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
                select(S.c.id, S.c.deployment_id, S.c.action, S.c.last_notified_generation)
                .where(
                    S.c.environment_id == ev.environment_id,
                    or_(S.c.enabled.is_(True), S.c.ended_generation == ev.generation),
                    S.c.last_notified_generation < ev.generation,
                )
                .limit(chunk)
            )
            if self.is_postgres:
                query = query.with_for_update()
            targets = [
                SubscriptionTarget(r.id, r.deployment_id, _ACTIONS[r.action], r.last_notified_generation)
                for r in conn.execute(query)
            ]
            planned = plan_deliveries(ev, targets)
            if not planned:
                return None
            rows = [
                {
                    "id": p.id,
                    "event_id": ev.event_id,
                    "subscription_id": p.subscription_id,
                    "environment_id": ev.environment_id,
                    "generation": ev.generation,
                    "rotation_id": ev.change.rotation_id,
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
        now = time.time()
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
            subscriptions = S.delete().where(S.c.environment_id == environment_id)
            if deleted_at is not None:
                subscriptions = subscriptions.where(S.c.created_at <= deleted_at)
            conn.execute(subscriptions)

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
                conn.execute(
                    update(D)
                    .where(D.c.id.in_(orphans))
                    .values(status=DeliveryStatus.DISABLED.value, last_error="subscription deleted")
                )
            if disabled:
                conn.execute(
                    update(D)
                    .where(D.c.id.in_(disabled))
                    .values(status=DeliveryStatus.DISABLED.value, last_error="subscription disabled")
                )
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
                conn.execute(
                    update(D)
                    .where(D.c.subscription_id.in_(gone), D.c.status == DeliveryStatus.PENDING.value)
                    .values(status=DeliveryStatus.DISABLED.value, last_error="subscription disabled")
                )

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
    ) -> list[dict[str, Any]]:
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
            return [dict(r) for r in rows]

    def get_delivery(self, environment_id: str, delivery_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(D).where(D.c.id == delivery_id, D.c.environment_id == environment_id))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def replay(self, environment_id: str, delivery_id: str, now: float) -> tuple[dict[str, Any] | None, str]:
        """Queue a dead (or disabled) delivery again with a fresh set of attempts; (row, outcome) with
        outcome ``replayed``, ``not_replayable`` (not dead or disabled) or ``subscription_disabled``."""
        with self._tx() as conn:
            found = conn.execute(
                select(D.c.status, _deliverable().label("deliverable"), S.c.id.label("sub"))
                .select_from(D.outerjoin(S, S.c.id == D.c.subscription_id))
                .where(D.c.id == delivery_id, D.c.environment_id == environment_id)
            ).first()
            if found is None:
                return None, "not_found"
            outcome = "replayed"
            if found.status not in (DeliveryStatus.DEAD.value, DeliveryStatus.DISABLED.value):
                outcome = "not_replayable"
            elif found.sub is None or not found.deliverable:
                outcome = "subscription_disabled"
            else:
                conn.execute(
                    update(D)
                    .where(D.c.id == delivery_id)
                    .values(
                        status=DeliveryStatus.PENDING.value,
                        attempts=0,
                        next_attempt_at=now,
                        leased_until=0.0,
                        last_error=None,
                    )
                )
            row = conn.execute(select(D).where(D.c.id == delivery_id)).mappings().one()
        return dict(row), outcome

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

            def count(condition: Any) -> Any:
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
