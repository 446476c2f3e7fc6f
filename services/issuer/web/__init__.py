"""The issuer's page: Settings → APIs and tokens → Streaming Tokens, served by the issuer itself.

Plain HTML, one vanilla JS module and CSS shipped inside the package (``static/``): no CDN, no build step.
The page logs in with a PAT (``POST /ui/session`` → an HttpOnly, SameSite=Strict cookie) and then calls the
issuer's JSON API (``/v1/...``) with that cookie; :func:`api_principal` turns the cookie into the same
principal the PAT has, and refuses a request that changes something without the session's CSRF token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.issuer.adapters.db import SqlStore
from services.issuer.adapters.sessions import SqlSessionStore
from services.issuer.auth import Action, AuthError, Principal
from services.issuer.pats import PatVerifier
from services.issuer.settings import IssuerSettings
from services.issuer.web.sessions import (
    COOKIE,
    CSRF_HEADER,
    SAFE_METHODS,
    Session,
    SessionEnded,
    SessionManager,
)
from shared.errors import ApiError, error_body
from shared.logs import get_logger
from shared.web import error_responses

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
PREFIX = "/ui"
NO_STORE = {"Cache-Control": "no-store"}
# No inline script or style, nothing from elsewhere, never framed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the page's security headers to every answer under ``/ui`` (a plain ASGI wrapper: the JSON API's
    requests pass straight through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in SECURITY_HEADERS if h[0] not in names),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def api_principal(manager: SessionManager, request: Request, session_id: str) -> Principal:
    """The PAT's principal for a request that carries the session cookie (and no Authorization header):
    401 ``session_ended`` when the session is over, 403 ``csrf_failed`` for a request that changes
    something without the session's CSRF token."""
    try:
        session = manager.resolve(session_id)
    except SessionEnded as exc:
        raise ApiError(401, "session_ended", str(exc)) from None
    if request.method.upper() not in SAFE_METHODS and not manager.csrf_matches(
        session_id, request.headers.get(CSRF_HEADER)
    ):
        raise ApiError(
            403,
            "csrf_failed",
            f"a request with the session cookie that changes something needs the session's {CSRF_HEADER} "
            "header (GET /ui/session gives it)",
        )
    return session.principal


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pat: str = Field(min_length=1, max_length=4096, description="a personal access token (PAT)")


class SessionPublic(BaseModel):
    subject: str
    role: str
    pat_id: str
    environments: list[str] | None
    actions: list[str] = Field(description="what the session may do (the PAT's actions)")
    may_rotate: bool
    may_reveal: bool
    may_admin: bool
    csrf_token: str = Field(description=f"send it as {CSRF_HEADER} with every request that changes something")
    expires_at: str
    pat_expires_at: str
    idle_timeout_s: float


class ClientError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=1000)
    source: str | None = Field(None, max_length=300)
    line: int | None = Field(None, ge=0, le=10_000_000)
    column: int | None = Field(None, ge=0, le=10_000_000)
    stack: str | None = Field(None, max_length=4000)
    page: str | None = Field(None, max_length=300)
    kind: str | None = Field(None, max_length=40, description="error, unhandledrejection, api, ...")


class Accepted(BaseModel):
    accepted: bool


class RateLimit:
    """At most ``per_client`` reports a minute from one address and ``overall`` from everyone (token
    buckets; the table of addresses is bounded)."""

    def __init__(self, per_client: int = 20, overall: int = 200, clock: Any = time.monotonic) -> None:
        self._per_client = per_client
        self._overall = overall
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def _take(self, key: str, capacity: int, now: float) -> bool:
        tokens, at = self._buckets.get(key, (float(capacity), now))
        tokens = min(float(capacity), tokens + (now - at) * capacity / 60.0)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def allow(self, client: str) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._buckets) > 10_000:
                self._buckets.clear()
            if not self._take("", self._overall, now):
                return False
            return self._take(f"c:{client}", self._per_client, now)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site request (browsers send Origin with every POST)
    host = request.headers.get("host", "")
    return origin in {f"{request.url.scheme}://{host}", f"http://{host}", f"https://{host}"}


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _public(session: Session) -> SessionPublic:
    who = session.principal
    return SessionPublic(
        subject=who.subject,
        role=who.role.value,
        pat_id=who.pat_id,
        environments=list(who.environments) if who.environments is not None else None,
        actions=sorted(a.value for a in who.allowed),
        may_rotate=who.may(Action.ROTATE),
        may_reveal=who.may(Action.REVEAL),
        may_admin=who.may(Action.ADMIN) and who.unscoped,
        csrf_token=session.csrf_token,
        expires_at=session.expires_at.isoformat(),
        pat_expires_at=session.pat_expires_at.isoformat(),
        idle_timeout_s=session.idle_timeout_s,
    )


def build_ui_router(manager: SessionManager, limiter: RateLimit | None = None) -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    limiter = limiter or RateLimit()
    index_html = (STATIC / "index.html").read_text()
    login_html = (STATIC / "login.html").read_text()

    def current(request: Request) -> tuple[str, Session] | None:
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        try:
            return session_id, manager.resolve(session_id)
        except SessionEnded:
            return None

    def to_login(request: Request, reason: str | None = None) -> RedirectResponse:
        target = f"{PREFIX}/login" + (f"?reason={reason}" if reason else "")
        response = RedirectResponse(target, status_code=303, headers=NO_STORE)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    @router.get("/", include_in_schema=False, response_model=None)
    def page(request: Request) -> Response:
        """The page (environments, Streaming Tokens, PATs); without a live session: the login page."""
        if current(request) is None:
            return to_login(request, "ended" if request.cookies.get(COOKIE) else None)
        return HTMLResponse(index_html, headers=NO_STORE)

    @router.get("/login", include_in_schema=False, response_model=None)
    def login_page(request: Request) -> Response:
        if current(request) is not None:
            return RedirectResponse(f"{PREFIX}/", status_code=303, headers=NO_STORE)
        return HTMLResponse(login_html, headers=NO_STORE)

    @router.post(
        "/session",
        response_model=SessionPublic,
        tags=["page"],
        responses=error_responses(401, 403, 413, 422),
    )
    def login(
        body: LoginRequest,
        request: Request,
        response: Response,
        user_agent: Annotated[str | None, Header(max_length=1000)] = None,
    ) -> SessionPublic:
        """Log in to the page with a PAT: the answer sets an HttpOnly, SameSite=Strict session cookie (the
        PAT is not kept in the browser) and gives the session's CSRF token."""
        if not _same_origin(request):
            raise ApiError(403, "cross_origin", "log in from the issuer's own page")
        try:
            session_id, session = manager.login(
                body.pat.strip(),
                address=request.client.host if request.client else None,
                user_agent=user_agent,
            )
        except AuthError as exc:
            log.info("ui_login_refused", reason=str(exc))
            raise ApiError(401, "unauthorized", str(exc)) from None
        response.headers.update(NO_STORE)
        response.set_cookie(
            COOKIE,
            session_id,
            httponly=True,
            samesite="strict",
            secure=_cookie_secure(request),
            path="/",
        )
        return _public(session)

    @router.get("/session", response_model=SessionPublic, tags=["page"], responses=error_responses(401))
    def whoami(request: Request, response: Response) -> SessionPublic:
        """Who the session is, what it may do, and its CSRF token (401 ``session_ended`` when it is over)."""
        session_id = request.cookies.get(COOKIE)
        try:
            session = manager.resolve(session_id)
        except SessionEnded as exc:
            raise ApiError(401, "session_ended", str(exc)) from None
        response.headers.update(NO_STORE)
        return _public(session)

    @router.delete("/session", status_code=204, tags=["page"], responses=error_responses(401, 403))
    def logout(
        request: Request,
        x_csrf_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        """Log out: the session ends on the server and the cookie is cleared (needs ``X-CSRF-Token``)."""
        session_id = request.cookies.get(COOKIE)
        try:
            manager.resolve(session_id)
        except SessionEnded as exc:
            raise ApiError(401, "session_ended", str(exc)) from None
        assert session_id is not None
        if not manager.csrf_matches(session_id, x_csrf_token):
            raise ApiError(403, "csrf_failed", f"logging out needs the session's {CSRF_HEADER} header")
        manager.logout(session_id)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.post(
        "/client-errors",
        status_code=202,
        response_model=Accepted,
        tags=["page"],
        responses=error_responses(403, 413, 422, 429),
    )
    def client_error(body: ClientError, request: Request) -> Any:
        """A JavaScript error of the page, logged by the issuer (``ui_client_error``); bounded in size and
        rate-limited per address (429 beyond it)."""
        if not _same_origin(request):
            raise ApiError(403, "cross_origin", "only the issuer's own page reports its errors")
        address = request.client.host if request.client else "unknown"
        if not limiter.allow(address):
            return JSONResponse(
                error_body("rate_limited", "too many error reports; try again in a minute"),
                status_code=429,
                headers={"Retry-After": "60"},
            )
        known = current(request)
        log.warning(
            "ui_client_error",
            message=body.message,
            kind=body.kind,
            source=body.source,
            line=body.line,
            column=body.column,
            stack=body.stack,
            page=body.page,
            subject=known[1].principal.subject if known else None,
            address=address,
        )
        return Accepted(accepted=True)

    return router


def install_ui(app: FastAPI, manager: SessionManager) -> None:
    """Mount the page on the issuer's app: routes under ``/ui``, static files and security headers (the
    cookie path of the JSON API gets ``manager`` from :func:`services.issuer.api.build_router`)."""
    app.include_router(build_ui_router(manager))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_middleware(SecurityHeaders)


def session_manager(
    store: SqlStore,
    pats: PatVerifier,
    jwt_secret: str,
    clock: Callable[[], datetime],
    settings: IssuerSettings,
) -> SessionManager:
    """The page's sessions in the issuer's database, timed by its settings."""
    return SessionManager(
        SqlSessionStore(store),
        store,
        pats,
        jwt_secret,
        clock,
        idle_timeout_s=settings.ui_session_idle_s,
        max_age_s=settings.ui_session_max_s,
    )
