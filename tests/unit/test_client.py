"""shared.client against the real resolver on loopback (no Kafka: a filled table), and the error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from services.issuer.auth import MAX_SUBJECT
from services.issuer.domain import MAX_GRACE
from services.notifier import domain as notifier_domain
from services.resolver.bootstrap import build_app
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.broker import free_port
from shared.client import (
    NO_RETRY,
    ApiCallError,
    AsyncResolverClient,
    Call,
    IssuerClient,
    Policy,
    ResolverClient,
)
from shared.kafka import KafkaSettings
from shared.models import issuer as issuer_models
from shared.models import notifier as notifier_models
from shared.tokens import generate_token
from tests.unit.resolver.factories import Env


def test_the_shared_models_repeat_the_services_limits() -> None:
    assert issuer_models.MAX_SUBJECT == MAX_SUBJECT
    assert int(MAX_GRACE.total_seconds()) == issuer_models.MAX_GRACE_SECONDS
    assert notifier_models.MAX_GENERATION == notifier_domain.MAX_GENERATION
    assert notifier_domain.Action is notifier_models.Action  # one enum, not two


@pytest.fixture
def resolver_url(serve_app: Callable[..., str]) -> tuple[str, Env]:
    env = Env("acme-telemetry-dev")
    table = TokenTable()
    table.apply_event(env.environment_id, env.event())
    # Nothing listens on 127.0.0.1:9 and usage is off: this resolver needs no Kafka and sends nothing out.
    settings = ResolverSettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), usage_enabled=False)
    app = build_app(settings, table=table, start_replica=False, status=lambda: Status.READY)
    return serve_app(app), env


def test_resolver_answers_typed_refusals_with_the_servers_code(
    resolver_url: tuple[str, Env],
) -> None:
    url, env = resolver_url
    with ResolverClient(url, bearer=env.token_1) as client:
        assert client.topic("f1-data").topic_id == "acme-telemetry-dev-f1-data"
        me = client.whoami(env.token_2)
        assert (me.environment_id, me.slot, me.generation) == ("acme-telemetry-dev", 2, 1)
        with pytest.raises(ApiCallError) as refused:
            client.whoami(generate_token())
        assert (refused.value.status, refused.value.code) == (401, "invalid_token")
        assert refused.value.refused
        assert not refused.value.unreachable
        assert str(refused.value).startswith("401 invalid_token: ")
        with pytest.raises(ApiCallError) as bad:
            client.topic("bad name!")
        assert bad.value.status == 400
        assert bad.value.code != "bad_answer"

    async def check() -> None:
        async with AsyncResolverClient(url, policy=NO_RETRY) as client:
            assert (await client.whoami(env.token_1, ("10.0.0.7", "probe/1"))).slot == 1
            beat = await client.heartbeat(env.token_2, "f1-producer")
            assert (beat.environment_id, beat.slot) == ("acme-telemetry-dev", 2)
            with pytest.raises(ApiCallError) as bad_body:
                await client.heartbeat(env.token_2, "no spaces allowed")
            assert (bad_body.value.status, bad_body.value.code) == (422, "invalid_request")
            with pytest.raises(ApiCallError) as exc:
                await client.whoami("not-a-token")
            assert exc.value.status == 401

    asyncio.run(check())


def test_unreachable_is_one_error_with_no_status_and_retries_stay_bounded() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    token = generate_token()
    with (
        IssuerClient(
            url, bearer="a.pat.value", policy=Policy(timeout=2.0, retries=1, backoff=0.01)
        ) as client,
        pytest.raises(ApiCallError) as exc,
    ):
        client.environments()
    assert exc.value.unreachable
    assert exc.value.code == "unreachable"
    assert f"cannot reach the issuer at {url}" in str(exc.value)
    with ResolverClient(url, policy=NO_RETRY) as resolver, pytest.raises(ApiCallError) as exc:
        resolver.whoami(token)
    assert token not in str(exc.value)


def test_an_invalid_environment_id_fails_before_any_request() -> None:
    with IssuerClient("http://127.0.0.1:9", bearer="x") as client, pytest.raises(ValueError):
        client.environment("../admin")


def test_dev_waits_for_the_resolver_to_know_a_token(resolver_url: tuple[str, Env]) -> None:
    from cli.dev import wait_token_known

    url, env = resolver_url
    assert wait_token_known(url, env.token_1, 10.0, lambda: False)
    assert not wait_token_known(url, generate_token(), 0.5, lambda: False)


def test_the_policy_retries_idempotent_calls_on_503_and_never_a_plain_post(
    serve_app: Callable[..., str],
) -> None:
    """A tiny ASGI app on loopback that answers 503 (our error body) to the first two requests."""
    seen: list[str] = []

    async def flaky(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(f"{scope['method']} {scope['path']}")
        status, body = (
            (503, b'{"error":"not_ready","message":"catching up"}') if len(seen) <= 2 else (200, b"{}")
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    url = serve_app(flaky)
    fast = Policy(timeout=5.0, retries=2, backoff=0.01)
    with IssuerClient(url, bearer="x", policy=fast) as client:
        assert client.send(Call("GET", "/v1/environments", "listing")).status_code == 200
        assert len(seen) == 3  # two 503s, then the answer
        seen.clear()
        with pytest.raises(ApiCallError) as once:
            client.send(Call("POST", "/v1/environments", "creating", json={}))
        assert len(seen) == 1  # no Idempotency-Key: never sent twice
        assert (once.value.status, once.value.code, once.value.message) == (503, "not_ready", "catching up")
        seen.clear()
        keyed = Call("POST", "/rotate", "rotating", json={}, headers={"Idempotency-Key": "k1"})
        assert client.send(keyed).status_code == 200
        assert seen == ["POST /rotate"] * 3
