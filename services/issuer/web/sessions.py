"""Login sessions of the page: a PAT exchanged for a cookie, checked on every request like the PAT itself.

- The cookie carries a random session id (256 bits); the database keeps its SHA-256 and the PAT's id.
- A session ends at the first of: its maximum age (``STREAMTOKEN_ISSUER_UI_SESSION_MAX_S``), its PAT's
  expiry, an idle time (``STREAMTOKEN_ISSUER_UI_SESSION_IDLE_S``), a logout, or its PAT being revoked
  (every request reads the PAT's record, so a revocation on any replica ends the sessions at once).
- The CSRF token is an HMAC of the session id under the issuer's JWT secret: the page gets it from
  ``GET /ui/session`` and sends it as ``X-CSRF-Token`` with every request that changes something.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.issuer.adapters.sessions import SessionRecord, SqlSessionStore
from services.issuer.auth import AuthError, Principal
from services.issuer.pats import PatVerifier, principal_of
from services.issuer.ports import IssuerStore
from shared.logs import get_logger

log = get_logger(__name__)

COOKIE = "streamtoken_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_SESSION_ID = 128  # a longer cookie is not one of ours


class SessionEnded(Exception):
    """The session is unknown, expired, idle, logged out or its PAT revoked; the message says which."""


@dataclass(frozen=True)
class Session:
    """A live session: who (the PAT's principal), its CSRF token, and until when."""

    principal: Principal
    csrf_token: str
    expires_at: datetime
    idle_timeout_s: float
    pat_expires_at: datetime


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionManager:
    def __init__(
        self,
        sessions: SqlSessionStore,
        store: IssuerStore,
        pats: PatVerifier,
        jwt_secret: str,
        clock: Callable[[], datetime],
        *,
        idle_timeout_s: float,
        max_age_s: float,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._pats = pats
        self._csrf_key = hmac.new(jwt_secret.encode(), b"streamtoken-ui-csrf", hashlib.sha256).digest()
        self._clock = clock
        self.idle_timeout_s = idle_timeout_s
        self.max_age_s = max_age_s
        # last_seen_at is written at most this often per session (no write per request).
        self._touch_every = timedelta(seconds=min(60.0, idle_timeout_s / 4))

    def csrf_for(self, session_id: str) -> str:
        digest = hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def csrf_matches(self, session_id: str, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(self.csrf_for(session_id), sent.strip())

    def login(self, pat: str, *, address: str | None, user_agent: str | None) -> tuple[str, Session]:
        """A new session for a valid PAT: ``(session id for the cookie, session)``; ``AuthError`` else."""
        principal = self._pats.verify(pat)
        record = self._store.pat_record(principal.pat_id)
        if record is None:  # pragma: no cover - verify() just read it
            raise AuthError("the personal access token is not known to this issuer")
        now = self._clock()
        idle_before = now - timedelta(seconds=self.idle_timeout_s)
        purged = self._sessions.purge(now, idle_before)
        if purged:
            log.info("ui_sessions_purged", sessions=purged)
        session_id = secrets.token_urlsafe(32)
        expires_at = min(now + timedelta(seconds=self.max_age_s), record.expires_at)
        self._sessions.add(
            SessionRecord(
                id_hash=hash_session_id(session_id),
                pat_jti=record.jti,
                created_at=now,
                last_seen_at=now,
                expires_at=expires_at,
                address=address,
                user_agent=user_agent,
            )
        )
        log.info(
            "ui_session_started",
            subject=principal.subject,
            pat=principal.pat_id,
            role=principal.role.value,
            expires_at=expires_at.isoformat(),
        )
        return session_id, self._session(session_id, principal, expires_at, record.expires_at)

    def _session(
        self, session_id: str, principal: Principal, expires_at: datetime, pat_expires_at: datetime
    ) -> Session:
        return Session(
            principal=principal,
            csrf_token=self.csrf_for(session_id),
            expires_at=expires_at,
            idle_timeout_s=self.idle_timeout_s,
            pat_expires_at=pat_expires_at,
        )

    def resolve(self, session_id: str | None) -> Session:
        """The live session the cookie names; ``SessionEnded`` (and the row deleted) when it has ended."""
        if not session_id or len(session_id) > MAX_SESSION_ID:
            raise SessionEnded("you are not logged in")
        id_hash = hash_session_id(session_id)
        row = self._sessions.get(id_hash)
        if row is None:
            raise SessionEnded(
                "your session has ended (logged out, expired or its PAT revoked); log in again"
            )
        now = self._clock()
        reason = None
        if now >= row.expires_at:
            reason = "your session has expired; log in again"
        elif (now - row.last_seen_at).total_seconds() > self.idle_timeout_s:
            reason = "your session ended after being idle; log in again"
        record = self._store.pat_record(row.pat_jti) if reason is None else None
        if reason is None and (record is None or record.revoked_at is not None):
            reason = "the personal access token of your session has been revoked; log in again"
        elif reason is None and record is not None and now >= record.expires_at:
            reason = "the personal access token of your session has expired; log in again"
        if reason is not None or record is None:
            self._sessions.delete(id_hash)
            log.info("ui_session_ended", pat=row.pat_jti, reason=reason)
            raise SessionEnded(reason or "your session has ended; log in again")
        if now - row.last_seen_at >= self._touch_every:
            self._sessions.touch(id_hash, now)
        return self._session(session_id, principal_of(record), row.expires_at, record.expires_at)

    def logout(self, session_id: str) -> bool:
        ended = self._sessions.delete(hash_session_id(session_id))
        if ended:
            log.info("ui_session_logged_out")
        return ended

    def end_for_pat(self, jti: str) -> None:
        """The PAT was revoked here: its sessions end now (other replicas find it revoked on next use)."""
        ended = self._sessions.delete_for_pat(jti)
        if ended:
            log.info("ui_sessions_ended_by_revocation", pat=jti, sessions=ended)
