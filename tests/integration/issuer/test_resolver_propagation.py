"""The issuer's propagation view polls real resolvers (services.resolver on loopback, the session's Apache
Kafka): a new environment and a rotation reach "applied", a replica that is down or refuses the internal
key reads "pending" with its reason, and `tokens rotate --wait` waits for the resolvers too."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from services.resolver.bootstrap import build_app as build_resolver
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from tests.integration.issuer.conftest import RunningIssuer
from tests.integration.resolver.conftest import resolver_settings, wait_ready
from tests.support import wait_until

KEY = "internal-key-of-the-test-resolvers"


def _resolver(serve_app: Callable[..., str], kafka: KafkaSettings, **extra: Any) -> str:
    ensure_streaming_tokens_topic(kafka)  # the resolver reads the topic the issuer will write
    url = serve_app(build_resolver(resolver_settings(kafka, **extra)))
    wait_ready(url, timeout=120)
    return url


def _create(issuer: RunningIssuer) -> str:
    body = {"org": f"rp{uuid.uuid4().hex[:6]}", "project": "p", "name": "prod"}
    response = issuer.admin.post("/v1/environments", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_creation_and_rotation_reach_every_resolver_and_rotate_wait_waits_for_them(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    resolvers = [_resolver(serve_app, kafka_settings, internal_key=KEY) for _ in range(2)]
    issuer = issuer_factory(
        sqlite_url,
        kafka_settings,
        settings={"resolver_urls": ",".join(resolvers), "resolver_internal_key": KEY},
    )
    env_id = _create(issuer)
    path = f"/v1/environments/{env_id}/streaming-tokens/propagation"

    def propagated(generation: int) -> dict[str, Any] | None:
        state = issuer.member.get(path).json()
        return state if state["resolvers"] == "applied" and state["generation"] == generation else None

    state = wait_until(lambda: propagated(1), 60, "the new environment on every resolver")
    assert state["broker"] == "applied"
    assert state["resolver_detail"] == [
        {"url": url, "generation": 1, "applied": True, "ready": True, "error": None} for url in resolvers
    ]
    shown = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()
    assert shown["propagation"]["resolvers"] == "pending"  # the token state does not poll (agents call it)
    assert shown["propagation"]["resolver_detail"] == []

    rotated = issuer.admin.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
    assert rotated.status_code == 200
    answer = rotated.json()["propagation"]
    assert (answer["resolvers"], answer["resolver_detail"]) == ("pending", [])  # not polled: answers fast
    state = wait_until(lambda: propagated(2), 60, "the rotation on every resolver")
    assert [r["generation"] for r in state["resolver_detail"]] == [2, 2]

    # The promoted token now authenticates at the resolvers.
    token_1 = rotated.json()["token_1"]["token"]
    for url in resolvers:
        whoami = issuer.client_for(token_1).get(f"{url}/v1/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["generation"] == 2

    result = CliRunner().invoke(
        cli_app,
        ["tokens", "rotate", env_id, "--wait", "--wait-timeout", "60", "--json"],
        env={"STREAMTOKEN_ISSUER_URL": issuer.url, "STREAMTOKEN_PAT": issuer.pat_for("admin")},
    )
    assert result.exit_code == 0, result.stderr
    assert "broker: applied (generation 3)" in result.stderr
    assert "resolvers: applied (2 of 2 at generation 3 or newer)" in result.stderr
    assert '"resolvers": "applied"' in result.stdout


def test_a_resolver_that_is_down_or_refuses_the_key_reads_pending_with_its_reason(
    request: pytest.FixtureRequest,
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    keyed = _resolver(serve_app, kafka_settings, internal_key=KEY)
    # A port held by this test but not listening: connections to it are refused, and nobody else takes it.
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    request.addfinalizer(held.close)
    down = f"http://127.0.0.1:{held.getsockname()[1]}"
    issuer = issuer_factory(sqlite_url, kafka_settings, settings={"resolver_urls": f"{down},{keyed}"})
    env_id = _create(issuer)

    response = issuer.member.get(f"/v1/environments/{env_id}/streaming-tokens/propagation")
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["resolvers"] == "pending"
    dead, refused = state["resolver_detail"]
    assert (dead["url"], dead["applied"], dead["generation"]) == (down, False, None)
    assert dead["error"].startswith("unreachable (ConnectError")
    assert (refused["url"], refused["applied"]) == (keyed, False)
    assert refused["error"].startswith("401")  # this issuer was not given the resolvers' internal key
    assert KEY not in response.text

    result = CliRunner().invoke(
        cli_app,
        ["tokens", "rotate", env_id, "--wait", "--wait-timeout", "1"],
        env={"STREAMTOKEN_ISSUER_URL": issuer.url, "STREAMTOKEN_PAT": issuer.pat_for("admin")},
    )
    assert result.exit_code == 1
    assert "the resolvers did not apply generation 2" in result.stderr
    assert f"{down}: unreachable" in result.stderr


def test_without_resolver_urls_the_resolvers_are_unknown(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    env_id = _create(issuer)
    state = issuer.member.get(f"/v1/environments/{env_id}/streaming-tokens/propagation").json()
    assert (state["resolvers"], state["resolver_detail"]) == ("unknown", [])
