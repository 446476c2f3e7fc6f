"""The page's login sessions in the issuer's database (table ``ui_session``, migration 0005).

A row is keyed by the SHA-256 of the session id the cookie carries (the id itself is never stored) and names
the PAT the person logged in with. Writes go through :meth:`SqlStore.serialised` like every other write, so
SQLite keeps one writer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel, col

from services.issuer.adapters.db import SqlStore, _utc

_TZ = sa.DateTime(timezone=True)


class UiSessionRow(SQLModel, table=True):
    __tablename__ = "ui_session"

    id_hash: str = Field(primary_key=True, max_length=64)
    pat_jti: str = Field(max_length=64, index=True)
    created_at: datetime = Field(sa_type=_TZ)
    last_seen_at: datetime = Field(sa_type=_TZ)
    expires_at: datetime = Field(sa_type=_TZ, index=True)
    address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=200)


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    pat_jti: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    address: str | None = None
    user_agent: str | None = None


_TABLE = UiSessionRow.__table__  # type: ignore[attr-defined]


class SqlSessionStore:
    """Create, read, touch and end sessions; every call is one short transaction."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def add(self, record: SessionRecord) -> None:
        with self._store.serialised(), self._store.engine.begin() as connection:
            connection.execute(
                sa.insert(_TABLE).values(
                    id_hash=record.id_hash,
                    pat_jti=record.pat_jti,
                    created_at=record.created_at,
                    last_seen_at=record.last_seen_at,
                    expires_at=record.expires_at,
                    address=(record.address or None) and record.address[:64],
                    user_agent=(record.user_agent or None) and record.user_agent[:200],
                )
            )

    def get(self, id_hash: str) -> SessionRecord | None:
        with self._store.serialised(), self._store.engine.connect() as connection:
            row = connection.execute(sa.select(_TABLE).where(_TABLE.c.id_hash == id_hash)).mappings().first()
        if row is None:
            return None
        return SessionRecord(
            id_hash=row["id_hash"],
            pat_jti=row["pat_jti"],
            created_at=_utc(row["created_at"]),
            last_seen_at=_utc(row["last_seen_at"]),
            expires_at=_utc(row["expires_at"]),
            address=row["address"],
            user_agent=row["user_agent"],
        )

    def touch(self, id_hash: str, at: datetime) -> None:
        with self._store.serialised(), self._store.engine.begin() as connection:
            connection.execute(sa.update(_TABLE).where(_TABLE.c.id_hash == id_hash).values(last_seen_at=at))

    def delete(self, id_hash: str) -> bool:
        with self._store.serialised(), self._store.engine.begin() as connection:
            return bool(connection.execute(sa.delete(_TABLE).where(_TABLE.c.id_hash == id_hash)).rowcount)

    def delete_for_pat(self, pat_jti: str) -> int:
        with self._store.serialised(), self._store.engine.begin() as connection:
            return int(connection.execute(sa.delete(_TABLE).where(_TABLE.c.pat_jti == pat_jti)).rowcount or 0)

    def purge(self, now: datetime, idle_before: datetime) -> int:
        """Forget sessions past their end or idle since before ``idle_before``."""
        with self._store.serialised(), self._store.engine.begin() as connection:
            deleted = connection.execute(
                sa.delete(_TABLE).where(
                    sa.or_(col(UiSessionRow.expires_at) <= now, col(UiSessionRow.last_seen_at) < idle_before)
                )
            ).rowcount
        return int(deleted or 0)

    def count_for_pat(self, pat_jti: str) -> int:
        with self._store.serialised(), self._store.engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(_TABLE).where(_TABLE.c.pat_jti == pat_jti)
            return int(connection.execute(query).scalar_one())
