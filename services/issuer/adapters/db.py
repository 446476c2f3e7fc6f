"""The issuer's store: SQLModel tables on SQLite or PostgreSQL, one transaction per command.

Writers of one environment are serialised: on PostgreSQL by ``SELECT ... FOR UPDATE`` on the environment
row, on SQLite by ``BEGIN IMMEDIATE`` (one writer at a time for the whole file). Creating an environment
checks other rows (ids must not nest), so on PostgreSQL creations also take one advisory lock.
Tokens are stored as fingerprint and Fernet ciphertext only. The outbox table holds every event until
Kafka acknowledged it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from services.issuer.domain import Environment, TokenRecord, Transition
from services.issuer.ports import (
    AuditEntry,
    Backlog,
    CommitOutcomeUnknown,
    IdempotentResult,
    OutboxMessage,
    PatRecord,
    RotationSchedule,
    StoreConflict,
    StoreTx,
    T,
    TokenUsage,
    UsageClient,
)
from shared.events import Change
from shared.ids import hyphen_prefixes
from shared.usage import TokenUsage as UsageEvent

TOKEN_CURRENT = "current"
TOKEN_GRACE = "grace"
TOKEN_ENDED = "ended"

_TZ = sa.DateTime(timezone=True)
# pg_advisory_xact_lock key that serialises environment creation (the nesting check reads other rows).
ENVIRONMENT_IDS_LOCK = 727275


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class EnvironmentRow(SQLModel, table=True):
    __tablename__ = "environment"

    id: str = Field(primary_key=True, max_length=98)
    org: str = Field(max_length=32)
    project: str = Field(max_length=32)
    name: str = Field(max_length=32)
    generation: int
    last_change: str  # JSON of shared.events.Change, for republishing the current state
    created_at: datetime = Field(sa_type=_TZ)
    updated_at: datetime = Field(sa_type=_TZ)
    deleted_at: datetime | None = Field(default=None, sa_type=_TZ)
    purged_at: datetime | None = Field(default=None, sa_type=_TZ)  # a deleted id free for other names
    # A purge's deletion of the topics {id}-* at the broker, not done yet (the relay does it, then clears it).
    topic_purge_requested_at: datetime | None = Field(default=None, sa_type=_TZ)


class TokenRow(SQLModel, table=True):
    __tablename__ = "streaming_token"

    token_id: str = Field(primary_key=True, max_length=64)
    environment_id: str = Field(foreign_key="environment.id", index=True, max_length=98)
    slot: int
    fingerprint: str = Field(unique=True, max_length=64)
    ciphertext: str
    state: str = Field(max_length=16)  # current | grace | ended
    created_at: datetime = Field(sa_type=_TZ)
    valid_until: datetime | None = Field(default=None, sa_type=_TZ)
    ended_at: datetime | None = Field(default=None, sa_type=_TZ)


class OutboxRow(SQLModel, table=True):
    __tablename__ = "outbox"
    # The relay's "what is still to publish" read (made by migration 0001; declared so the models match).
    __table_args__ = (
        sa.Index(
            "ix_outbox_pending",
            "id",
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    environment_id: str = Field(max_length=98, index=True)
    generation: int
    payload: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    created_at: datetime = Field(sa_type=_TZ)
    published_at: datetime | None = Field(default=None, sa_type=_TZ)


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=_TZ, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=32)
    environment_id: str | None = Field(default=None, max_length=98, index=True)
    token_ids: str = "[]"
    detail: str = "{}"
    pat_id: str | None = Field(default=None, max_length=200)


class PatRow(SQLModel, table=True):
    """A personal access token's record; the JWT itself is never stored."""

    __tablename__ = "pat"

    jti: str = Field(primary_key=True, max_length=64)
    subject: str = Field(max_length=120)
    role: str = Field(max_length=16)
    environments: str | None = None  # JSON list of environment ids; NULL: every environment
    actions: str | None = None  # JSON list of actions; NULL: every action of the role
    created_at: datetime = Field(sa_type=_TZ, index=True)
    expires_at: datetime = Field(sa_type=_TZ)
    revoked_at: datetime | None = Field(default=None, sa_type=_TZ)
    created_by: str = Field(max_length=200)

    def to_record(self) -> PatRecord:
        return PatRecord(
            jti=self.jti,
            subject=self.subject,
            role=self.role,
            environments=tuple(json.loads(self.environments)) if self.environments is not None else None,
            actions=tuple(json.loads(self.actions)) if self.actions is not None else None,
            created_at=_utc(self.created_at),
            expires_at=_utc(self.expires_at),
            revoked_at=_utc(self.revoked_at) if self.revoked_at else None,
            created_by=self.created_by,
        )


class BrokerSyncRow(SQLModel, table=True):
    """The generation of an environment the broker's users and ACLs were last made to match."""

    __tablename__ = "broker_sync"

    environment_id: str = Field(primary_key=True, max_length=98)
    generation: int
    applied_at: datetime = Field(sa_type=_TZ)


class IdempotencyRow(SQLModel, table=True):
    __tablename__ = "idempotency_key"

    environment_id: str = Field(primary_key=True, max_length=98)
    key: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)
    response_ciphertext: str  # the response holds tokens, so it is encrypted like them
    created_at: datetime = Field(sa_type=_TZ)


class TokenUsageRow(SQLModel, table=True):
    """When a token was last used, by anyone (folded from the usage topic)."""

    __tablename__ = "token_usage"

    token_id: str = Field(primary_key=True, max_length=64)
    environment_id: str = Field(max_length=98, index=True)
    last_used_at: datetime = Field(sa_type=_TZ)
    updated_at: datetime = Field(sa_type=_TZ)


class TokenUsageClientRow(SQLModel, table=True):
    """One client of a token: address, user agent, deployment id and source; ``client_key`` hashes them."""

    __tablename__ = "token_usage_client"

    token_id: str = Field(primary_key=True, max_length=64)
    client_key: str = Field(primary_key=True, max_length=64)
    environment_id: str = Field(max_length=98, index=True)
    address: str = Field(max_length=100)
    user_agent: str = Field(max_length=300)
    deployment_id: str | None = Field(default=None, max_length=100)
    source: str = Field(max_length=16)
    last_seen_at: datetime = Field(sa_type=_TZ, index=True)
    uses: int = Field(sa_type=sa.BigInteger)


class RotationScheduleRow(SQLModel, table=True):
    __tablename__ = "rotation_schedule"

    environment_id: str = Field(primary_key=True, max_length=98)
    every_days: float
    unused_window_seconds: int
    deadline_days: float | None = None
    warn_before_seconds: int
    grace_period_seconds: int
    warned_generation: int
    last_outcome: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_type=_TZ)
    updated_at: datetime = Field(sa_type=_TZ)

    def to_schedule(self) -> RotationSchedule:
        return RotationSchedule(
            environment_id=self.environment_id,
            every_days=self.every_days,
            unused_window_seconds=self.unused_window_seconds,
            deadline_days=self.deadline_days,
            warn_before_seconds=self.warn_before_seconds,
            grace_period_seconds=self.grace_period_seconds,
            warned_generation=self.warned_generation,
            last_outcome=self.last_outcome,
            created_at=_utc(self.created_at),
            updated_at=_utc(self.updated_at),
        )


def client_key(address: str, user_agent: str, deployment_id: str | None, source: str) -> str:
    raw = "\x00".join((address, user_agent, deployment_id or "", source)).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()


def make_engine(url: str, *, busy_timeout_s: float = 30.0, connect_timeout_s: int = 5) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` transactions;
    PostgreSQL a connect timeout and ``pool_pre_ping`` (a restarted server's dead connections are replaced
    before use)."""
    if url.startswith("sqlite"):
        busy_ms = int(busy_timeout_s * 1000)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(
        url,
        pool_size=10,
        max_overflow=30,
        pool_pre_ping=True,
        pool_timeout=30,
        connect_args={"connect_timeout": connect_timeout_s},
    )


@dataclass(frozen=True)
class DatabaseProblem:
    """Why the database refused an operation, for a 503 answer and readiness: a stable code, one sentence
    saying what to do (no SQL, no address)."""

    code: str
    message: str


def database_problem(exc: BaseException) -> DatabaseProblem | None:
    """What a database error means for the caller (None: not an outage — a bug, a constraint...)."""
    unavailable = DatabaseProblem(
        "database_unavailable",
        "the issuer's database is unavailable (restarting or unreachable); this request changed nothing, "
        "retry in a few seconds",
    )
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free in time
        return unavailable
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).lower()
    if "database or disk is full" in text or "no space left" in text:
        return DatabaseProblem(
            "database_full",
            "the issuer's database is full (no space left on its disk); this request changed nothing: "
            "free space on the data directory's disk, then retry",
        )
    if "database is locked" in text or "database table is locked" in text:
        return DatabaseProblem(
            "database_locked",
            "the issuer's database file is locked by another process for longer than "
            "STREAMTOKEN_ISSUER_SQLITE_BUSY_TIMEOUT_S; this request changed nothing: end that process's "
            "transaction (or run one issuer per SQLite file), then retry",
        )
    if type(orig).__module__.startswith("sqlite3"):
        if "disk i/o error" in text or "unable to open database" in text or "readonly" in text:
            return unavailable
        return None
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or exc.connection_invalidated:
        return unavailable
    return None


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class SqlTx:
    """:class:`services.issuer.ports.StoreTx` on one SQLAlchemy session."""

    def __init__(self, session: Session, postgres: bool) -> None:
        self.session = session
        self._postgres = postgres
        self._ciphertexts: dict[str, str] = {}  # of the rows loaded in this transaction

    # -- environments ------------------------------------------------------------------------------------

    def _row(self, env_id: str, for_update: bool) -> EnvironmentRow | None:
        query = select(EnvironmentRow).where(EnvironmentRow.id == env_id)
        if for_update and self._postgres:
            query = query.with_for_update()
        return self.session.exec(query).first()

    def _tokens(self, env_ids: Sequence[str]) -> dict[str, list[TokenRecord]]:
        rows = self.session.exec(
            select(TokenRow)
            .where(col(TokenRow.environment_id).in_(env_ids), col(TokenRow.state) != TOKEN_ENDED)
            .order_by(col(TokenRow.slot), col(TokenRow.created_at))
        ).all()
        found: dict[str, list[TokenRecord]] = {}
        for row in rows:
            self._ciphertexts[row.token_id] = row.ciphertext
            found.setdefault(row.environment_id, []).append(
                TokenRecord(
                    token_id=row.token_id,
                    slot=1 if row.slot == 1 else 2,
                    fingerprint=row.fingerprint,
                    created_at=_utc(row.created_at),
                    valid_until=_utc(row.valid_until) if row.valid_until else None,
                )
            )
        return found

    @staticmethod
    def _to_domain(row: EnvironmentRow, tokens: list[TokenRecord]) -> Environment:
        return Environment(
            id=row.id,
            org=row.org,
            project=row.project,
            name=row.name,
            generation=row.generation,
            tokens=tuple(sorted(tokens, key=lambda t: (t.valid_until is not None, t.slot))),
            last_change=Change.model_validate_json(row.last_change),
        )

    def environment(self, env_id: str, *, for_update: bool = False) -> Environment | None:
        row = self._row(env_id, for_update)
        if row is None or row.deleted_at is not None:
            return None
        return self._to_domain(row, self._tokens([env_id]).get(env_id, []))

    def deleted_generation(self, env_id: str) -> int | None:
        row = self._row(env_id, for_update=True)
        return row.generation if row is not None and row.deleted_at is not None else None

    def nested_environment_ids(self, env_id: str) -> list[str]:
        # Ids hold only [a-z0-9-], so the LIKE pattern needs no escaping.
        query = select(EnvironmentRow.id).where(
            sa.or_(
                col(EnvironmentRow.id).in_(hyphen_prefixes(env_id)),
                col(EnvironmentRow.id).like(f"{env_id}-%"),
            )
        )
        return sorted(self.session.exec(query).all())

    def environments(self, *, for_update: bool = False) -> list[Environment]:
        query = (
            select(EnvironmentRow).where(col(EnvironmentRow.deleted_at).is_(None)).order_by(EnvironmentRow.id)
        )
        if for_update and self._postgres:
            query = query.with_for_update()
        rows = self.session.exec(query).all()
        tokens = self._tokens([r.id for r in rows]) if rows else {}
        return [self._to_domain(r, tokens.get(r.id, [])) for r in rows]

    def deleted_environment_ids(self) -> list[str]:
        query = select(EnvironmentRow.id).where(col(EnvironmentRow.deleted_at).is_not(None))
        return list(self.session.exec(query).all())

    def save(self, transition: Transition, ciphertexts: dict[str, str]) -> None:
        after = transition.after
        now = after.last_change.at
        row = self.session.get(EnvironmentRow, after.id)
        if row is None:
            row = EnvironmentRow(
                id=after.id,
                org=after.org,
                project=after.project,
                name=after.name,
                generation=after.generation,
                last_change=after.last_change.model_dump_json(),
                created_at=now,
                updated_at=now,
            )
        else:
            row.generation = after.generation
            row.last_change = after.last_change.model_dump_json()
            row.updated_at = now
            row.deleted_at = None
            if transition.before is None:  # re-created after a delete
                row.org, row.project, row.name, row.created_at = after.org, after.project, after.name, now
                row.purged_at = None
        self.session.add(row)
        if transition.ended:
            self.session.execute(
                sa.update(TokenRow)
                .where(col(TokenRow.token_id).in_(transition.ended))
                .values(state=TOKEN_ENDED, ended_at=now)
            )
        issued = {t.record.token_id for t in transition.issued}
        for token in after.tokens:
            if token.token_id in issued:
                self.session.add(
                    TokenRow(
                        token_id=token.token_id,
                        environment_id=after.id,
                        slot=token.slot,
                        fingerprint=token.fingerprint,
                        ciphertext=ciphertexts[token.token_id],
                        state=TOKEN_CURRENT,
                        created_at=token.created_at,
                    )
                )
            else:
                self.session.execute(
                    sa.update(TokenRow)
                    .where(col(TokenRow.token_id) == token.token_id)
                    .values(
                        slot=token.slot,
                        state=TOKEN_CURRENT if token.is_current else TOKEN_GRACE,
                        valid_until=token.valid_until,
                    )
                )
        self.session.flush()

    def mark_deleted(self, env: Environment, at: datetime) -> None:
        self.session.execute(
            sa.update(EnvironmentRow)
            .where(col(EnvironmentRow.id) == env.id)
            .values(deleted_at=at, updated_at=at, generation=env.generation)
        )
        self.session.execute(
            sa.update(TokenRow)
            .where(col(TokenRow.environment_id) == env.id, col(TokenRow.state) != TOKEN_ENDED)
            .values(state=TOKEN_ENDED, ended_at=at)
        )
        self.session.execute(sa.delete(IdempotencyRow).where(col(IdempotencyRow.environment_id) == env.id))
        # Its usage and its schedule go with it.
        self.session.execute(sa.delete(TokenUsageRow).where(col(TokenUsageRow.environment_id) == env.id))
        self.session.execute(
            sa.delete(TokenUsageClientRow).where(col(TokenUsageClientRow.environment_id) == env.id)
        )
        self.session.execute(
            sa.delete(RotationScheduleRow).where(col(RotationScheduleRow.environment_id) == env.id)
        )

    def ciphertexts(self, token_ids: Sequence[str]) -> dict[str, str]:
        found = {t: self._ciphertexts[t] for t in token_ids if t in self._ciphertexts}
        missing = [t for t in token_ids if t not in found]
        if missing:
            rows = self.session.exec(select(TokenRow).where(col(TokenRow.token_id).in_(missing))).all()
            found.update({r.token_id: r.ciphertext for r in rows})
        return found

    # -- outbox, audit, idempotency ----------------------------------------------------------------------

    def add_outbox(self, environment_id: str, generation: int, payload: bytes | None, at: datetime) -> None:
        self.session.add(
            OutboxRow(environment_id=environment_id, generation=generation, payload=payload, created_at=at)
        )

    def pending_outbox_heads(self) -> dict[str, tuple[int, bool]]:
        newest = (
            sa.select(sa.func.max(OutboxRow.id))
            .where(col(OutboxRow.published_at).is_(None))
            .group_by(col(OutboxRow.environment_id))
        )
        rows = self.session.execute(
            sa.select(
                col(OutboxRow.environment_id), col(OutboxRow.generation), col(OutboxRow.payload).is_(None)
            ).where(col(OutboxRow.id).in_(newest))
        ).all()
        return {env_id: (int(generation), bool(tombstone)) for env_id, generation, tombstone in rows}

    def add_audit(self, entry: AuditEntry) -> None:
        self.session.add(
            AuditRow(
                at=entry.at,
                actor=entry.actor,
                action=entry.action,
                environment_id=entry.environment_id,
                token_ids=json.dumps(list(entry.token_ids)),
                detail=json.dumps(entry.detail, sort_keys=True),
                pat_id=entry.pat_id,
            )
        )

    def idempotent_result(self, env_id: str, key: str) -> IdempotentResult | None:
        row = self.session.get(IdempotencyRow, (env_id, key))
        return IdempotentResult(row.request_hash, row.response_ciphertext) if row else None

    def save_idempotent_result(self, env_id: str, key: str, result: IdempotentResult, at: datetime) -> None:
        self.session.add(
            IdempotencyRow(
                environment_id=env_id,
                key=key,
                request_hash=result.request_hash,
                response_ciphertext=result.response_ciphertext,
                created_at=at,
            )
        )

    # -- personal access tokens ---------------------------------------------------------------------------

    def add_pat(self, record: PatRecord) -> None:
        self.session.add(
            PatRow(
                jti=record.jti,
                subject=record.subject,
                role=record.role,
                environments=json.dumps(list(record.environments))
                if record.environments is not None
                else None,
                actions=json.dumps(list(record.actions)) if record.actions is not None else None,
                created_at=record.created_at,
                expires_at=record.expires_at,
                revoked_at=record.revoked_at,
                created_by=record.created_by,
            )
        )
        self.session.flush()

    def pat(self, jti: str) -> PatRecord | None:
        row = self.session.get(PatRow, jti)
        return row.to_record() if row is not None else None

    def pats(self, limit: int, after: str | None = None) -> list[PatRecord]:
        query = select(PatRow)
        if after is not None:
            last = self.session.get(PatRow, after)
            if last is not None:
                query = query.where(
                    sa.or_(
                        col(PatRow.created_at) > last.created_at,
                        sa.and_(col(PatRow.created_at) == last.created_at, col(PatRow.jti) > last.jti),
                    )
                )
        rows = self.session.exec(query.order_by(col(PatRow.created_at), col(PatRow.jti)).limit(limit)).all()
        return [r.to_record() for r in rows]

    def revoke_pat(self, jti: str, at: datetime) -> PatRecord | None:
        row = self.session.get(PatRow, jti)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = at
            self.session.add(row)
            self.session.flush()
        return row.to_record()

    def purge_environment(self, env_id: str) -> bool:
        row = self._row(env_id, for_update=True)
        if row is None or row.deleted_at is None:
            return False
        row.purged_at = row.purged_at or row.deleted_at
        self.session.add(row)
        self.session.flush()
        return True

    def purged(self, env_id: str) -> bool:
        row = self._row(env_id, for_update=False)
        return row is not None and row.deleted_at is not None and row.purged_at is not None

    def request_topic_purge(self, env_id: str, at: datetime) -> None:
        self.session.execute(
            sa.update(EnvironmentRow)
            .where(col(EnvironmentRow.id) == env_id, col(EnvironmentRow.deleted_at).is_not(None))
            .values(topic_purge_requested_at=at)
        )

    def topic_purge_pending(self, env_id: str) -> bool:
        row = self._row(env_id, for_update=False)
        return row is not None and row.topic_purge_requested_at is not None

    def pending_topic_purges(self) -> list[tuple[str, datetime]]:
        query = (
            select(EnvironmentRow.id, EnvironmentRow.topic_purge_requested_at)
            .where(col(EnvironmentRow.topic_purge_requested_at).is_not(None))
            .order_by(col(EnvironmentRow.topic_purge_requested_at), col(EnvironmentRow.id))
        )
        return [(env_id, _utc(at)) for env_id, at in self.session.exec(query).all() if at is not None]

    def finish_topic_purge(self, env_id: str, requested_at: datetime) -> bool:
        row = self._row(env_id, for_update=True)
        if row is None or row.topic_purge_requested_at is None:
            return False
        if _utc(row.topic_purge_requested_at) != _utc(requested_at):
            return False  # purged again meanwhile: that request is still to be done
        row.topic_purge_requested_at = None
        self.session.add(row)
        self.session.flush()
        return True

    def deleted_names(self, env_id: str) -> tuple[str, str, str] | None:
        row = self._row(env_id, for_update=False)
        if row is None or row.deleted_at is None:
            return None
        return (row.org, row.project, row.name)

    # -- environment creation, broker propagation ---------------------------------------------------------

    def lock_environment_ids(self) -> None:
        # SQLite: BEGIN IMMEDIATE already makes every write transaction of the file one at a time.
        if self._postgres:
            self.session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ENVIRONMENT_IDS_LOCK})

    def broker_generation(self, env_id: str) -> int | None:
        row = self.session.get(BrokerSyncRow, env_id)
        return row.generation if row is not None else None

    def record_broker_generation(self, env_id: str, generation: int, at: datetime) -> None:
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            insert: Any = pg_insert(BrokerSyncRow)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            insert = sqlite_insert(BrokerSyncRow)
        statement = insert.values(environment_id=env_id, generation=generation, applied_at=at)
        table = BrokerSyncRow.__table__  # type: ignore[attr-defined]
        self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.environment_id],
                set_={
                    "generation": statement.excluded.generation,
                    "applied_at": statement.excluded.applied_at,
                },
                where=table.c.generation < statement.excluded.generation,
            )
        )

    # -- usage and schedules (issue 12) ------------------------------------------------------------------

    def token_usage(self, token_ids: Sequence[str], clients_since: datetime) -> dict[str, TokenUsage]:
        if not token_ids:
            return {}
        last = {
            r.token_id: _utc(r.last_used_at)
            for r in self.session.exec(
                select(TokenUsageRow).where(col(TokenUsageRow.token_id).in_(token_ids))
            ).all()
        }
        clients: dict[str, list[UsageClient]] = {}
        rows = self.session.exec(
            select(TokenUsageClientRow)
            .where(
                col(TokenUsageClientRow.token_id).in_(token_ids),
                col(TokenUsageClientRow.last_seen_at) >= clients_since,
            )
            .order_by(col(TokenUsageClientRow.last_seen_at).desc(), col(TokenUsageClientRow.client_key))
        ).all()
        for row in rows:
            clients.setdefault(row.token_id, []).append(
                UsageClient(
                    address=row.address,
                    user_agent=row.user_agent,
                    deployment_id=row.deployment_id,
                    source=row.source,
                    last_seen_at=_utc(row.last_seen_at),
                    uses=int(row.uses),
                )
            )
        return {
            token_id: TokenUsage(token_id, last.get(token_id), tuple(clients.get(token_id, ())))
            for token_id in token_ids
            if token_id in last or token_id in clients
        }

    def rotation_schedule(self, env_id: str) -> RotationSchedule | None:
        row = self.session.get(RotationScheduleRow, env_id)
        return row.to_schedule() if row is not None else None

    def save_rotation_schedule(self, schedule: RotationSchedule, at: datetime) -> None:
        row = self.session.get(RotationScheduleRow, schedule.environment_id)
        values: dict[str, Any] = {
            "every_days": schedule.every_days,
            "unused_window_seconds": schedule.unused_window_seconds,
            "deadline_days": schedule.deadline_days,
            "warn_before_seconds": schedule.warn_before_seconds,
            "grace_period_seconds": schedule.grace_period_seconds,
            "warned_generation": schedule.warned_generation,
            "last_outcome": schedule.last_outcome,
            "updated_at": at,
        }
        if row is None:
            row = RotationScheduleRow(environment_id=schedule.environment_id, created_at=at, **values)
        else:
            for name, value in values.items():
                setattr(row, name, value)
        self.session.add(row)
        self.session.flush()

    def delete_rotation_schedule(self, env_id: str) -> bool:
        row = self.session.get(RotationScheduleRow, env_id)
        if row is None:
            return False
        self.session.delete(row)
        self.session.flush()
        return True

    def rotation_schedules(self) -> list[RotationSchedule]:
        rows = self.session.exec(
            select(RotationScheduleRow)
            .join(EnvironmentRow, col(EnvironmentRow.id) == col(RotationScheduleRow.environment_id))
            .where(col(EnvironmentRow.deleted_at).is_(None))
            .order_by(col(RotationScheduleRow.environment_id))
        ).all()
        return [r.to_schedule() for r in rows]


class SqlOutboxClaim:
    def __init__(self, store: SqlStore, messages: list[OutboxMessage], session: Session | None) -> None:
        self.messages = messages
        self._store = store
        self._session = session

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        statement = sa.update(OutboxRow).where(col(OutboxRow.id).in_(ids)).values(published_at=at)
        if self._session is not None:
            self._session.execute(statement)
        else:
            with self._store.serialised(), self._store.engine.begin() as connection:
                connection.execute(statement)


class SqlStore:
    """The issuer's database: :class:`~services.issuer.ports.IssuerStore` and ``OutboxStore``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = is_postgres(engine)
        # SQLite allows one writer per file. Queue this process's transactions on a lock rather than on
        # SQLite's busy handler, which sleeps in growing steps and makes long latency tails under load.
        self._claim_lock = threading.Lock()
        self._sqlite_lock: threading.RLock | None = None if self.postgres else threading.RLock()

    @contextmanager
    def serialised(self) -> Iterator[None]:
        if self._sqlite_lock is None:
            yield
            return
        with self._sqlite_lock:
            yield

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        """One transaction. Every write is flushed before ``COMMIT`` is sent, so a lost connection before
        it changed nothing; one lost during it (PostgreSQL) is :class:`CommitOutcomeUnknown`."""
        try:
            with self.serialised(), Session(self.engine, expire_on_commit=False) as session:
                tx = session.begin()
                try:
                    yield SqlTx(session, self.postgres)
                    session.flush()
                except BaseException:
                    tx.rollback()
                    raise
                try:
                    tx.commit()
                except sa.exc.DBAPIError as exc:
                    problem = database_problem(exc)
                    if self.postgres and problem is not None and problem.code == "database_unavailable":
                        raise CommitOutcomeUnknown(
                            f"the connection was lost during COMMIT: {type(exc.orig).__name__}"
                        ) from exc
                    raise
        except sa.exc.IntegrityError as exc:
            raise StoreConflict(f"a concurrent change collided: {type(exc.orig).__name__}") from None

    def read_back(self, read: Callable[[StoreTx], T], wait_s: float) -> T | None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self.transaction() as tx:
                    if self.postgres:  # a row lock held by the cut-off transaction: wait, but not longer
                        left_ms = max(100, int((deadline - time.monotonic()) * 1000))
                        tx.session.execute(sa.text(f"SET LOCAL lock_timeout = {left_ms}"))
                    return read(tx)
            except (sa.exc.DBAPIError, sa.exc.TimeoutError, CommitOutcomeUnknown) as exc:
                if not isinstance(exc, CommitOutcomeUnknown) and database_problem(exc) is None:
                    raise
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.25)

    def audit_entries(self, environment_id: str | None, limit: int) -> list[AuditEntry]:
        query = select(AuditRow).order_by(col(AuditRow.id).desc()).limit(limit)
        if environment_id is not None:
            query = query.where(AuditRow.environment_id == environment_id)
        with self.serialised(), Session(self.engine) as session:
            rows = session.exec(query).all()
        return [
            AuditEntry(
                at=_utc(r.at),
                actor=r.actor,
                action=r.action,
                environment_id=r.environment_id,
                token_ids=tuple(json.loads(r.token_ids)),
                detail=json.loads(r.detail),
                pat_id=r.pat_id,
            )
            for r in rows
        ]

    def pat_record(self, jti: str) -> PatRecord | None:
        with self.serialised(), Session(self.engine) as session:
            row = session.get(PatRow, jti)
            return row.to_record() if row is not None else None

    # -- outbox ------------------------------------------------------------------------------------------

    def pending_count(self) -> int:
        with self.serialised(), self.engine.connect() as connection:
            query = (
                sa.select(sa.func.count()).select_from(OutboxRow).where(col(OutboxRow.published_at).is_(None))
            )
            return int(connection.execute(query).scalar_one())

    def backlog(self) -> Backlog:
        with self.serialised(), self.engine.connect() as connection:
            query = (
                sa.select(sa.func.count(), sa.func.min(col(OutboxRow.created_at)))
                .select_from(OutboxRow)
                .where(col(OutboxRow.published_at).is_(None))
            )
            count, oldest = connection.execute(query).one()
        return Backlog(int(count), _utc(oldest) if oldest is not None else None)

    @contextmanager
    def claim(self, limit: int) -> Iterator[SqlOutboxClaim]:
        """Unpublished outbox rows, oldest first, that this replica alone may publish now.

        PostgreSQL: the oldest pending row of each environment is locked ``FOR UPDATE SKIP LOCKED`` for the
        whole claim, so another replica skips that environment and the environment's rows go out in order,
        by one replica at a time. SQLite: one relay per database file (the process lock), and no
        transaction stays open while Kafka is being waited for.
        """
        if self.postgres:
            with Session(self.engine) as session, session.begin():
                heads = (
                    sa.select(sa.func.min(OutboxRow.id))
                    .where(col(OutboxRow.published_at).is_(None))
                    .group_by(col(OutboxRow.environment_id))
                )
                locked = session.execute(
                    sa.select(col(OutboxRow.environment_id))
                    .where(col(OutboxRow.id).in_(heads), col(OutboxRow.published_at).is_(None))
                    .order_by(col(OutboxRow.id))
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all()
                env_ids = [r[0] for r in locked]
                messages = self._pending(session, env_ids, limit) if env_ids else []
                yield SqlOutboxClaim(self, messages, session)
            return
        with self._claim_lock:
            with self.serialised(), Session(self.engine) as session, session.begin():
                messages = self._pending(session, None, limit)
            yield SqlOutboxClaim(self, messages, None)

    @staticmethod
    def _pending(session: Session, env_ids: list[str] | None, limit: int) -> list[OutboxMessage]:
        query = select(OutboxRow).where(col(OutboxRow.published_at).is_(None))
        if env_ids is not None:
            query = query.where(col(OutboxRow.environment_id).in_(env_ids))
        rows = session.exec(query.order_by(col(OutboxRow.id)).limit(limit)).all()
        return [
            OutboxMessage(
                id=r.id or 0,
                environment_id=r.environment_id,
                generation=r.generation,
                payload=r.payload,
                created_at=_utc(r.created_at),
            )
            for r in rows
        ]

    def purge(
        self, published_before: datetime, idempotency_before: datetime, audit_before: datetime | None = None
    ) -> tuple[int, int, int]:
        """Forget outbox rows published, idempotency keys used and (``audit_before``) audit entries written
        before the given times."""
        with self.serialised(), self.engine.begin() as connection:
            outbox = connection.execute(
                sa.delete(OutboxRow).where(
                    col(OutboxRow.published_at).is_not(None), col(OutboxRow.published_at) < published_before
                )
            ).rowcount
            keys = connection.execute(
                sa.delete(IdempotencyRow).where(col(IdempotencyRow.created_at) < idempotency_before)
            ).rowcount
            audit = 0
            if audit_before is not None:
                audit = connection.execute(
                    sa.delete(AuditRow).where(col(AuditRow.at) < audit_before)
                ).rowcount
        return int(outbox or 0), int(keys or 0), int(audit or 0)

    # -- usage (issue 12) --------------------------------------------------------------------------------

    def _upsert(self, table: Any) -> Any:
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def fold_usage(self, events: Sequence[UsageEvent], now: datetime) -> int:
        """Fold usage records into the usage tables, one transaction; records of tokens this issuer does
        not hold (unknown, ended with a deleted environment, another deployment's) are skipped. The number
        of records folded."""
        if not events:
            return 0
        token_ids = list({e.token_id for e in events})
        folded = 0
        with self.serialised(), Session(self.engine) as session, session.begin():
            known = {
                token_id: env_id
                for token_id, env_id in session.execute(
                    sa.select(col(TokenRow.token_id), col(TokenRow.environment_id))
                    .join(EnvironmentRow, col(EnvironmentRow.id) == col(TokenRow.environment_id))
                    .where(col(TokenRow.token_id).in_(token_ids), col(EnvironmentRow.deleted_at).is_(None))
                ).all()
            }
            last: dict[str, datetime] = {}
            clients: dict[tuple[str, str], dict[str, Any]] = {}
            for event in events:
                env_id = known.get(event.token_id)
                if env_id is None or env_id != event.environment_id:
                    continue
                folded += 1
                for c in event.clients:
                    seen = _utc(c.last_seen_at)
                    if seen > last.get(event.token_id, datetime.min.replace(tzinfo=UTC)):
                        last[event.token_id] = seen
                    key = (event.token_id, client_key(c.address, c.user_agent, c.deployment_id, c.source))
                    held = clients.get(key)
                    if held is None:
                        clients[key] = {
                            "token_id": key[0],
                            "client_key": key[1],
                            "environment_id": env_id,
                            "address": c.address,
                            "user_agent": c.user_agent,
                            "deployment_id": c.deployment_id,
                            "source": c.source,
                            "last_seen_at": seen,
                            "uses": c.uses,
                        }
                    else:
                        held["last_seen_at"] = max(held["last_seen_at"], seen)
                        held["uses"] += c.uses
            if last:
                statement = self._upsert(TokenUsageRow).values(
                    [
                        {"token_id": t, "environment_id": known[t], "last_used_at": at, "updated_at": now}
                        for t, at in last.items()
                    ]
                )
                table = TokenUsageRow.__table__  # type: ignore[attr-defined]
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[table.c.token_id],
                        set_={
                            "last_used_at": sa.case(
                                (
                                    table.c.last_used_at < statement.excluded.last_used_at,
                                    statement.excluded.last_used_at,
                                ),
                                else_=table.c.last_used_at,
                            ),
                            "updated_at": statement.excluded.updated_at,
                        },
                    )
                )
            if clients:
                statement = self._upsert(TokenUsageClientRow).values(list(clients.values()))
                table = TokenUsageClientRow.__table__  # type: ignore[attr-defined]
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[table.c.token_id, table.c.client_key],
                        set_={
                            "last_seen_at": sa.case(
                                (
                                    table.c.last_seen_at < statement.excluded.last_seen_at,
                                    statement.excluded.last_seen_at,
                                ),
                                else_=table.c.last_seen_at,
                            ),
                            "uses": table.c.uses + statement.excluded.uses,
                        },
                    )
                )
        return folded

    def prune_usage(self, clients_before: datetime) -> int:
        """Forget clients last seen before ``clients_before`` (a token's last use is kept)."""
        with self.serialised(), self.engine.begin() as connection:
            deleted = connection.execute(
                sa.delete(TokenUsageClientRow).where(col(TokenUsageClientRow.last_seen_at) < clients_before)
            ).rowcount
        return int(deleted or 0)

    def reencrypt(self, rewrite: Callable[[str], str], batch: int = 500) -> tuple[int, int]:
        """Pass every stored token and idempotent answer through ``rewrite`` (encrypt again with the current
        key), ``batch`` rows per transaction; ``(tokens, answers)`` rewritten."""
        with self.serialised(), Session(self.engine) as session:
            token_ids = list(session.exec(select(TokenRow.token_id)).all())
            answer_keys = [
                tuple(k) for k in session.exec(select(IdempotencyRow.environment_id, IdempotencyRow.key))
            ]
        for start in range(0, len(token_ids), batch):
            with self.serialised(), Session(self.engine) as session, session.begin():
                chunk = token_ids[start : start + batch]
                for token in session.exec(select(TokenRow).where(col(TokenRow.token_id).in_(chunk))):
                    token.ciphertext = rewrite(token.ciphertext)
                    session.add(token)
        for start in range(0, len(answer_keys), batch):
            with self.serialised(), Session(self.engine) as session, session.begin():
                for env_id, key in answer_keys[start : start + batch]:
                    answer = session.get(IdempotencyRow, (env_id, key))
                    if answer is not None:
                        answer.response_ciphertext = rewrite(answer.response_ciphertext)
                        session.add(answer)
        return len(token_ids), len(answer_keys)

    def dispose(self) -> None:
        self.engine.dispose()
