"""PATs as records (finding 3) and their scopes (finding 2), on the in-memory store with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet

from services.issuer import handlers
from services.issuer.auth import Action, AuthError, Role, mint_pat
from services.issuer.crypto import TokenCipher
from services.issuer.pats import PatVerifier
from tests.unit.issuer.fakes import FakeStore

SECRET = "k7Qd9-xLpZ2vN4mR8sTbW1yHc6eJ0aUf-3gE5iO"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deps(clock: Clock) -> handlers.Deps:
    return handlers.Deps(
        store=FakeStore(),
        cipher=TokenCipher(Fernet.generate_key().decode()),
        clock=clock,
        jwt_secret=SECRET,
    )


def store_of(deps: handlers.Deps) -> FakeStore:
    assert isinstance(deps.store, FakeStore)
    return deps.store


def test_a_signed_pat_without_a_record_is_refused(deps: handlers.Deps, clock: Clock) -> None:
    # What `streamtoken admin pat` used to print: anyone holding the JWT secret could mint any role.
    forged = mint_pat(SECRET, "mallory", Role.ADMIN, timedelta(days=3650 // 10), now=clock.now)
    verifier = PatVerifier(SECRET, deps.store, clock)
    with pytest.raises(AuthError, match="not known"):
        verifier.verify(forged)


def test_a_revoked_pat_is_refused_after_at_most_the_cache_ttl(deps: handlers.Deps, clock: Clock) -> None:
    record, token = handlers.create_pat(deps, "ci-bot", "admin", actor="pat:alice")
    elsewhere = PatVerifier(SECRET, deps.store, clock, ttl_s=5.0)  # another replica, its own cache
    here = PatVerifier(SECRET, deps.store, clock, ttl_s=5.0)
    assert elsewhere.verify(token).pat_id == record.jti
    assert here.verify(token).subject == "ci-bot"
    deps.pat_revoked = here.forget
    clock.advance(1.0)
    handlers.revoke_pat(deps, record.jti, actor="pat:alice")
    with pytest.raises(AuthError, match="revoked"):
        here.verify(token)  # the replica that revoked it: at once
    clock.advance(3.9)
    elsewhere.verify(token)  # still cached (4.9 s after it was read)
    clock.advance(0.1)
    with pytest.raises(AuthError, match="revoked"):
        elsewhere.verify(token)  # 5 s: the cache entry is stale, the record is read again


def test_records_are_cached_between_requests(deps: handlers.Deps, clock: Clock) -> None:
    _, token = handlers.create_pat(deps, "ci-bot", "member", actor="a")
    verifier = PatVerifier(SECRET, deps.store, clock, ttl_s=5.0)
    for _ in range(10):
        verifier.verify(token)
    assert store_of(deps).pat_reads == 1


def test_lifetimes_default_to_30_days_and_are_capped(deps: handlers.Deps, clock: Clock) -> None:
    record, _ = handlers.create_pat(deps, "a", "member", actor="a")
    assert record.expires_at - record.created_at == timedelta(days=30)
    with pytest.raises(handlers.Invalid, match="at most 90 days"):
        handlers.create_pat(deps, "a", "member", actor="a", ttl=timedelta(days=3650))
    record, token = handlers.create_pat(deps, "a", "member", actor="a", ttl=timedelta(days=90))
    verifier = PatVerifier(SECRET, deps.store, clock)
    clock.advance(90 * 86400)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_creating_and_revoking_pats_is_audited_with_the_pat_id(deps: handlers.Deps) -> None:
    record, _ = handlers.create_pat(deps, "bob", "member", actor="pat:alice", pat_id="a1")
    handlers.revoke_pat(deps, record.jti, actor="pat:alice", pat_id="a1")
    entries = store_of(deps).state.audit
    assert [(e.action, e.pat_id, e.detail["pat"]) for e in entries] == [
        ("pat_create", "a1", record.jti),
        ("pat_revoke", "a1", record.jti),
    ]
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="pat:bob", pat_id=record.jti)
    handlers.reveal_tokens(deps, env.id, actor="pat:bob", pat_id=record.jti)
    assert [e.pat_id for e in store_of(deps).state.audit[-2:]] == [record.jti, record.jti]
    with pytest.raises(handlers.NotFound):
        handlers.revoke_pat(deps, "0" * 32, actor="a")


def test_scopes_fit_the_role(deps: handlers.Deps, clock: Clock) -> None:
    handlers.create_environment(deps, "acme", "telemetry", "dev", actor="a")
    with pytest.raises(handlers.Invalid, match="exactly one environment"):
        handlers.create_pat(deps, "agent", "deployment", actor="a")
    with pytest.raises(handlers.Invalid, match="cannot be given rotate"):
        handlers.create_pat(deps, "bob", "member", actor="a", actions=["rotate"])
    with pytest.raises(handlers.NotFound):
        handlers.create_pat(deps, "bob", "member", actor="a", environments=["acme-telemetry-prod"])
    _, token = handlers.create_pat(
        deps, "agent", "deployment", actor="a", environments=["acme-telemetry-dev"]
    )
    who = PatVerifier(SECRET, deps.store, clock).verify(token)
    assert who.allowed == {Action.READ_CURRENT}
    assert who.covers("acme-telemetry-dev")
    assert not who.covers("acme-telemetry-prod")
    _, token = handlers.create_pat(deps, "ro", "admin", actor="a", actions=["read"])
    who = PatVerifier(SECRET, deps.store, clock).verify(token)
    assert who.may(Action.READ)
    assert not who.may(Action.REVEAL)


def test_pats_list_in_pages(deps: handlers.Deps, clock: Clock) -> None:
    made = []
    for i in range(5):
        made.append(handlers.create_pat(deps, f"p{i}", "member", actor="a")[0].jti)
        clock.advance(1)
    first = handlers.list_pats(deps, 2)
    second = handlers.list_pats(deps, 2, after=first[-1].jti)
    third = handlers.list_pats(deps, 2, after=second[-1].jti)
    assert [p.jti for p in first + second + third] == made
