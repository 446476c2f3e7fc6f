"""The page's sessions against the real issuer on loopback, on SQLite and PostgreSQL: a PAT exchanged for an
HttpOnly, SameSite=Strict cookie, CSRF on every change, the same principal as the PAT, and every way a
session ends (logout, revocation, idle, maximum age, the PAT's own expiry) answered as 401 / a redirect."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.issuer.auth import Role
from services.issuer.web.sessions import COOKIE, CSRF_HEADER
from shared.kafka import KafkaSettings
from tests.integration.issuer.conftest import LogCapture, RunningIssuer

pytestmark = pytest.mark.integration

NOWHERE = KafkaSettings(bootstrap_servers="127.0.0.1:9")  # sessions never reach a broker; the relay is off


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(issuer_factory: Callable[..., RunningIssuer], database_url: str, clock: Clock) -> RunningIssuer:
    return issuer_factory(
        database_url,
        NOWHERE,
        start_relay=False,
        clock=clock,
        settings={"ui_session_idle_s": 600, "ui_session_max_s": 3600},
    )


def browser(issuer: RunningIssuer) -> httpx.Client:
    client = httpx.Client(base_url=issuer.url, timeout=30.0, follow_redirects=False)
    issuer._extra_clients.append(client)
    return client


def login(issuer: RunningIssuer, pat: str) -> tuple[httpx.Client, dict[str, Any], httpx.Response]:
    client = browser(issuer)
    response = client.post("/ui/session", json={"pat": pat})
    assert response.status_code == 200, response.text
    return client, response.json(), response


def test_login_sets_an_httponly_strict_cookie_and_stores_only_its_hash(issuer: RunningIssuer) -> None:
    pat = issuer.pat(Role.ADMIN, "carol", ttl=timedelta(hours=2))
    client, session, response = login(issuer, pat)
    header = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "path"} <= attributes
    assert "samesite=strict" in header.lower()
    assert "path=/" in header.lower()
    assert "secure" not in attributes  # served over http here; over https the cookie is Secure
    cookie = SimpleCookie(header)[COOKIE].value
    assert pat not in header
    assert len(cookie) >= 40
    assert response.headers["cache-control"] == "no-store"
    assert session["subject"] == "carol"
    assert session["role"] == "admin"
    assert session["may_rotate"]
    assert session["csrf_token"]
    assert session["csrf_token"] != cookie

    engine = issuer.app.store.engine
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id_hash, pat_jti FROM ui_session")).all()
    assert [row[0] for row in rows] == [hashlib.sha256(cookie.encode()).hexdigest()]
    assert rows[0][1] == session["pat_id"]
    # Whoever asks again gets the same session and CSRF token; the maximum age (1 h) comes before the PAT's.
    again = client.get("/ui/session").json()
    assert again["csrf_token"] == session["csrf_token"]
    expires = datetime.fromisoformat(again["expires_at"])
    assert expires < datetime.fromisoformat(again["pat_expires_at"])


def test_a_session_never_outlives_its_pat(issuer: RunningIssuer, clock: Clock) -> None:
    pat = issuer.pat(Role.ADMIN, "short")  # 1 h, like the maximum age: the PAT's end is the session's end
    client, session, _ = login(issuer, pat)
    assert datetime.fromisoformat(session["expires_at"]) <= datetime.fromisoformat(session["pat_expires_at"])
    for _ in range(7):  # in use all along (never idle for 10 min), up to just before the PAT's end
        clock.advance(500)
        assert client.get("/v1/environments").status_code == 200
    clock.advance(3600 - 3500 + 30)
    refused = client.get("/v1/environments")
    assert refused.status_code == 401
    assert refused.json()["error"] == "session_ended"


def test_the_cookie_gives_the_pats_principal_and_bearer_is_unchanged(issuer: RunningIssuer) -> None:
    created = issuer.admin.post("/v1/environments", json={"org": "acme", "project": "web", "name": "prod"})
    assert created.status_code == 201, created.text
    env_id = created.json()["id"]
    member_pat = issuer.pat(Role.MEMBER, "dave")
    member, session, _ = login(issuer, member_pat)
    assert session["role"] == "member"
    assert not session["may_rotate"]
    assert session["may_reveal"]
    csrf = {CSRF_HEADER: session["csrf_token"]}
    assert (
        member.get("/v1/environments").json() == issuer.client_for(member_pat).get("/v1/environments").json()
    )
    assert member.get(f"/v1/environments/{env_id}/streaming-tokens").status_code == 200
    # A member may not rotate, with a cookie as with the PAT (403 forbidden, not csrf_failed).
    refused = member.post(f"/v1/environments/{env_id}/streaming-tokens/rotate", json={}, headers=csrf)
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert member.get("/v1/pats").status_code == 403

    # Scopes hold: a PAT limited to another environment sees nothing of this one through its session.
    other = issuer.admin.post("/v1/environments", json={"org": "acme", "project": "web", "name": "other"})
    assert other.status_code == 201, other.text
    scoped, _, _ = login(issuer, issuer.pat(Role.ADMIN, "eve", environments=["acme-web-other"]))
    assert scoped.get(f"/v1/environments/{env_id}").status_code == 403
    assert [e["id"] for e in scoped.get("/v1/environments").json()["environments"]] == ["acme-web-other"]

    # The audit log names the PAT the session was opened with.
    audit = issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id}).json()["entries"]
    assert audit[0]["action"] == "reveal"
    assert audit[0]["pat_id"] == session["pat_id"]

    # An Authorization header wins over a cookie: a bad PAT is a 401 even with a live session.
    bad = member.get("/v1/environments", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401
    assert bad.json()["error"] == "unauthorized"
    # ...and a good PAT with a stale cookie works as it always did.
    stale = browser(issuer)
    stale.cookies.set(COOKIE, "not-a-session")
    assert stale.get("/v1/environments", headers={"Authorization": f"Bearer {member_pat}"}).status_code == 200
    assert stale.get("/v1/environments").status_code == 401


def test_changes_with_the_cookie_need_the_csrf_token(issuer: RunningIssuer) -> None:
    admin, session, _ = login(issuer, issuer.pat(Role.ADMIN, "frank"))
    body = {"org": "acme", "project": "csrf", "name": "prod"}
    missing = admin.post("/v1/environments", json=body)
    assert missing.status_code == 403
    assert missing.json()["error"] == "csrf_failed"
    wrong = admin.post("/v1/environments", json=body, headers={CSRF_HEADER: "x" * 43})
    assert wrong.status_code == 403
    assert wrong.json()["error"] == "csrf_failed"
    other, other_session, _ = login(issuer, issuer.pat(Role.ADMIN, "grace"))
    crossed = admin.post("/v1/environments", json=body, headers={CSRF_HEADER: other_session["csrf_token"]})
    assert crossed.status_code == 403, "one session's CSRF token is no good for another"
    assert issuer.admin.get("/v1/environments/acme-csrf-prod").status_code == 404  # nothing was created
    done = admin.post("/v1/environments", json=body, headers={CSRF_HEADER: session["csrf_token"]})
    assert done.status_code == 201, done.text
    rotate = f"/v1/environments/{done.json()['id']}/streaming-tokens/rotate"
    assert admin.post(rotate, json={}).status_code == 403
    assert admin.delete(f"/v1/pats/{other_session['pat_id']}").status_code == 403
    assert other.get("/v1/environments").status_code == 200  # the refused revocation did nothing
    assert admin.delete("/ui/session").status_code == 403  # logging out needs it too
    assert admin.get("/ui/session").status_code == 200


def test_logout_ends_the_session_and_pages_redirect_to_login(issuer: RunningIssuer) -> None:
    client, session, response = login(issuer, issuer.pat(Role.ADMIN, "heidi"))
    cookie = SimpleCookie(response.headers["set-cookie"])[COOKIE].value
    page = client.get("/ui/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert client.get("/ui/login").headers.get("location") == "/ui/"  # logged in already
    out = client.delete("/ui/session", headers={CSRF_HEADER: session["csrf_token"]})
    assert out.status_code == 204
    assert COOKIE in out.headers.get("set-cookie", "")
    assert "max-age=0" in out.headers["set-cookie"].lower()
    # The browser would drop the cookie; a copy of it kept elsewhere is dead on the server too.
    replay = browser(issuer)
    replay.cookies.set(COOKIE, cookie)
    ended = replay.get("/v1/environments")
    assert ended.status_code == 401
    assert ended.json()["error"] == "session_ended"
    assert "log in again" in ended.json()["message"]
    redirect = replay.get("/ui/")
    assert redirect.status_code == 303
    assert redirect.headers["location"] == "/ui/login?reason=ended"
    assert browser(issuer).get("/ui/").headers["location"] == "/ui/login"
    assert browser(issuer).get("/ui").headers["location"] == "/ui/"


def test_revoking_the_pat_ends_its_sessions(issuer: RunningIssuer) -> None:
    pat = issuer.pat(Role.MEMBER, "ivan")
    first, session, _ = login(issuer, pat)
    second, _, _ = login(issuer, pat)
    assert first.get("/v1/environments").status_code == 200
    store = issuer.app.ui_sessions._sessions
    assert store.count_for_pat(session["pat_id"]) == 2
    assert issuer.admin.delete(f"/v1/pats/{session['pat_id']}").status_code == 200
    assert store.count_for_pat(session["pat_id"]) == 0  # ended at once on this replica
    for client in (first, second):
        ended = client.get("/v1/environments")
        assert ended.status_code == 401
        assert ended.json()["error"] == "session_ended"
        assert client.get("/ui/").status_code == 303
    assert browser(issuer).post("/ui/session", json={"pat": pat}).status_code == 401


def test_a_revocation_elsewhere_ends_the_session_on_its_next_request(issuer: RunningIssuer) -> None:
    """Another replica revoked the PAT (its record changed in the shared database, no callback here)."""
    client, session, _ = login(issuer, issuer.pat(Role.ADMIN, "judy"))
    engine = issuer.app.store.engine
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE pat SET revoked_at = :now WHERE jti = :jti"),
            {"now": datetime.now(UTC), "jti": session["pat_id"]},
        )
    ended = client.get("/v1/environments")
    assert ended.status_code == 401
    assert "revoked" in ended.json()["message"]


def test_idle_sessions_end(issuer: RunningIssuer, clock: Clock) -> None:
    client, _, _ = login(issuer, issuer.pat(Role.ADMIN, "ken", ttl=timedelta(days=2)))
    for _ in range(4):  # used every 5 minutes: it lives on past the idle time (10 min)
        clock.advance(300)
        assert client.get("/v1/environments").status_code == 200
    clock.advance(601)
    ended = client.get("/ui/session")
    assert ended.status_code == 401
    assert "idle" in ended.json()["message"]
    assert client.get("/v1/environments").status_code == 401  # and it stays ended


def test_login_refusals(issuer: RunningIssuer, clock: Clock) -> None:
    client = browser(issuer)
    for pat, words in [
        ("nonsense", "invalid"),
        ("stk_" + "a" * 40, "streaming token"),
        (issuer.pat(Role.ADMIN, "old", ttl=timedelta(hours=-1)), "expired"),
    ]:
        refused = client.post("/ui/session", json={"pat": pat})
        assert refused.status_code == 401, refused.text
        assert words in refused.json()["message"]
        assert "set-cookie" not in refused.headers
    assert client.post("/ui/session", json={}).status_code == 422
    assert (
        client.post("/ui/session", content=b"pat=x", headers={"content-type": "text/plain"}).status_code
        == 422
    )
    assert client.post("/ui/session", json={"pat": "x" * 5000}).status_code == 422
    cross = client.post(
        "/ui/session",
        json={"pat": issuer.pat(Role.ADMIN, "lee")},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    assert "set-cookie" not in cross.headers
    assert client.get("/ui/session").status_code == 401


def test_pages_carry_a_strict_content_security_policy(issuer: RunningIssuer) -> None:
    client = browser(issuer)
    login_page = client.get("/ui/login")
    assert login_page.status_code == 200
    for response in (login_page, client.get("/ui/static/app.js"), client.get("/ui/static/app.css")):
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "javascript" in client.get("/ui/static/app.js").headers["content-type"]
    # No inline script or style anywhere in the pages (the CSP would block it anyway).
    logged_in, _, _ = login(issuer, issuer.pat(Role.ADMIN, "mia"))
    for html in (login_page.text, logged_in.get("/ui/").text):
        assert html.count("<script") == html.count('<script type="module" src="/ui/static/')
        assert " style=" not in html
        assert "<style" not in html
        assert "onclick" not in html
    assert client.get("/ui/static/../web/sessions.py").status_code == 404
    assert "content-security-policy" not in issuer.admin.get("/v1/environments").headers  # the API as before


def test_client_errors_are_logged_bounded_and_rate_limited(
    issuer: RunningIssuer, captured_logs: LogCapture
) -> None:
    client, _, _ = login(issuer, issuer.pat(Role.ADMIN, "nina"))
    report = {"kind": "error", "message": "TypeError: boom <b>", "source": "/ui/static/app.js", "line": 3}
    assert client.post("/ui/client-errors", json=report).status_code == 202
    assert "ui_client_error" in captured_logs.text
    assert "TypeError: boom" in captured_logs.text
    assert "nina" in captured_logs.text
    assert client.post("/ui/client-errors", json={"message": "x" * 1001}).status_code == 422
    assert client.post("/ui/client-errors", json={"message": "m", "extra": 1}).status_code == 422
    leaked = client.post("/ui/client-errors", json={"message": "token stk_" + "b" * 40})
    assert leaked.status_code == 202
    assert "stk_" + "b" * 40 not in captured_logs.text
    crossed = client.post("/ui/client-errors", json=report, headers={"Origin": "http://evil.example"})
    assert crossed.status_code == 403
    answers = [client.post("/ui/client-errors", json=report).status_code for _ in range(40)]
    assert 429 in answers
    assert answers.count(202) <= 20
    limited = client.post("/ui/client-errors", json=report)
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert limited.headers["retry-after"] == "60"
