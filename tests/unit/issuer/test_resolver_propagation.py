"""The resolvers' part of the propagation view: handlers on fakes, the HTTP probe on httpx.MockTransport."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.issuer import handlers
from services.issuer.adapters.resolvers import INTERNAL_KEY_HEADER, HttpResolverProbe
from services.issuer.crypto import TokenCipher
from services.issuer.settings import IssuerSettings
from tests.unit.issuer.fakes import CountingWakeup, FakeResolvers, FakeStore

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
A, B = "http://10.0.0.1:8002", "http://10.0.0.2:8002"


def make_deps(resolvers: FakeResolvers | None) -> handlers.Deps:
    return handlers.Deps(
        store=FakeStore(),
        cipher=TokenCipher(Fernet.generate_key().decode()),
        wakeup=CountingWakeup(),
        clock=lambda: NOW,
        resolvers=resolvers,
    )


def test_no_resolver_configured_is_unknown() -> None:
    deps = make_deps(None)
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    state = handlers.propagation(deps, env.id)
    assert (state.resolvers, state.resolver_detail) == ("unknown", ())
    assert handlers.rotate_tokens(deps, env.id, actor="a").to_json()["propagation"]["resolvers"] == "unknown"


def test_applied_only_when_every_ready_replica_holds_the_generation() -> None:
    resolvers = FakeResolvers({A: (1, True), B: (1, True)})
    deps = make_deps(resolvers)
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    state = handlers.propagation(deps, env.id)
    assert state.resolvers == "applied"
    assert state.to_json()["resolver_detail"] == [
        {"url": A, "generation": 1, "applied": True, "ready": True, "error": None},
        {"url": B, "generation": 1, "applied": True, "ready": True, "error": None},
    ]

    resolvers.answers = {A: (2, True), B: (1, True)}  # B has not read the rotation yet
    handlers.rotate_tokens(deps, env.id, actor="a")
    behind = handlers.propagation(deps, env.id).to_json()
    assert behind["resolvers"] == "pending"
    assert [r["applied"] for r in behind["resolver_detail"]] == [True, False]

    resolvers.answers = {A: (2, True), B: (2, False)}  # B is loading: it does not serve lookups yet
    assert handlers.propagation(deps, env.id).resolvers == "pending"
    resolvers.answers = {A: (3, True), B: (2, True)}  # newer than asked for counts as applied
    assert handlers.propagation(deps, env.id).resolvers == "applied"


def test_an_unreachable_replica_is_pending_with_its_reason() -> None:
    deps = make_deps(FakeResolvers({A: (1, True), B: "unreachable (ConnectError: refused)"}))
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    detail = handlers.propagation(deps, env.id).to_json()
    assert detail["resolvers"] == "pending"
    assert detail["resolver_detail"][1] == {
        "url": B,
        "generation": None,
        "applied": False,
        "ready": False,
        "error": "unreachable (ConnectError: refused)",
    }


def test_only_the_propagation_view_polls_and_outside_the_transaction() -> None:
    store_holder: list[FakeStore] = []

    def no_open_transaction() -> None:
        assert store_holder[0].open_transactions == 0, "a resolver poll must not hold the database"

    resolvers = FakeResolvers({A: (1, True)}, during=no_open_transaction)
    deps = make_deps(resolvers)
    assert isinstance(deps.store, FakeStore)
    store_holder.append(deps.store)
    env = handlers.create_environment(deps, "acme", "telemetry", "prod", actor="a")
    rotated = handlers.rotate_tokens(deps, env.id, actor="a", idempotency_key="k")
    assert rotated.propagation is not None
    assert (rotated.propagation.resolvers, rotated.propagation.resolver_detail) == ("pending", ())
    replayed = handlers.rotate_tokens(deps, env.id, actor="a", idempotency_key="k")
    assert replayed.propagation is not None
    assert replayed.propagation.resolvers == "pending"
    revoked = handlers.revoke_tokens(deps, env.id, actor="a")
    assert revoked.propagation is not None
    assert revoked.propagation.resolvers == "pending"
    assert resolvers.polls == []

    resolvers.answers = {A: (3, True)}
    # The token state is what agents fetch: it must not wait on resolvers (nor make them work per fetch).
    shown = handlers.reveal_tokens(deps, env.id, actor="a")
    assert shown.propagation is not None
    assert (shown.propagation.resolvers, shown.propagation.resolver_detail) == ("pending", ())
    assert resolvers.polls == []
    assert handlers.propagation(deps, env.id).resolvers == "applied"
    assert resolvers.polls == [env.id]


# -- the HTTP probe -----------------------------------------------------------------------------------------


def test_the_probe_asks_every_replica_at_once_with_the_internal_key() -> None:
    seen: list[tuple[str, str | None]] = []
    both_in = threading.Barrier(2, timeout=5)  # only concurrent polls can both pass it

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get(INTERNAL_KEY_HEADER)))
        both_in.wait()
        generation = 4 if request.url.host == "10.0.0.1" else None
        return httpx.Response(200, json={"environment_id": "x", "generation": generation, "ready": True})

    probe = HttpResolverProbe([A, B], internal_key="k3y", transport=httpx.MockTransport(handler))
    try:
        answers = probe.generations("acme-telemetry-prod")
    finally:
        probe.close()
    assert [(a.url, a.generation, a.ready, a.error) for a in answers] == [
        (A, 4, True, None),
        (B, None, True, None),
    ]
    assert sorted(seen) == [
        (f"{A}/v1/environments/acme-telemetry-prod/generation", "k3y"),
        (f"{B}/v1/environments/acme-telemetry-prod/generation", "k3y"),
    ]
    assert answers[0].applied(4)
    assert not answers[0].applied(5)
    assert not answers[1].applied(1)


GOOD = {"environment_id": "acme-telemetry-prod", "generation": 7, "ready": True}  # the answer, one field off


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        (lambda r: httpx.Response(401, json={"error": "unauthorized"}), "401"),
        (lambda r: httpx.Response(503, json={}), "HTTP 503"),
        (lambda r: httpx.Response(200, text="<html>"), "not a resolver's generation answer"),
        (lambda r: httpx.Response(200, json={"generation": "7", "ready": True}), "not a resolver's"),
        (lambda r: httpx.Response(200, json={**GOOD, "generation": "7"}), "not a resolver's"),
        (lambda r: httpx.Response(200, json={**GOOD, "generation": True}), "not a resolver's"),
        (lambda r: httpx.Response(200, json={**GOOD, "ready": 1}), "not a resolver's"),
    ],
)
def test_the_probe_turns_bad_answers_into_reasons(respond: object, error: str) -> None:
    probe = HttpResolverProbe([A], transport=httpx.MockTransport(respond))  # type: ignore[arg-type]
    try:
        (answer,) = probe.generations("acme-telemetry-prod")
    finally:
        probe.close()
    assert answer.generation is None
    assert not answer.applied(1)
    assert answer.error is not None
    assert answer.error.startswith(error)


def test_the_probe_reports_an_unreachable_replica_and_never_the_key() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    for handler, start in ((refuse, "unreachable (ConnectError"), (slow, "timed out")):
        probe = HttpResolverProbe([A], internal_key="s3cret", transport=httpx.MockTransport(handler))
        try:
            (answer,) = probe.generations("acme-telemetry-prod")
        finally:
            probe.close()
        assert answer.error is not None
        assert answer.error.startswith(start), answer.error
        assert "s3cret" not in answer.error
        assert "\n" not in answer.error


def test_resolver_url_settings() -> None:
    settings = IssuerSettings(resolver_urls=f" {A}/ , {B},,{A}", resolver_internal_key="k")
    assert settings.resolver_url_list() == [A, B]
    assert "k" not in repr(settings.resolver_internal_key)
    assert IssuerSettings().resolver_url_list() == []
    with pytest.raises(ValidationError, match="not an http"):
        IssuerSettings(resolver_urls="10.0.0.1:8002")
