"""Usage per token end to end (issue 12): a real resolver (loopback HTTP, the session's Apache Kafka)
publishes what it sees to the usage topic, a real issuer folds it (SQLite and PostgreSQL) and shows it;
rotation refuses while Token 1 is in use unless forced; scopes hold."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.resolver.bootstrap import build_app as build_resolver
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.tokens import TOKEN_PATTERN
from tests.integration.issuer.conftest import RunningIssuer
from tests.integration.resolver.conftest import resolver_settings, wait_ready
from tests.support import read_records, wait_until


def _stack(
    database_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
    **resolver: Any,
) -> tuple[KafkaSettings, RunningIssuer, str]:
    kafka = kafka_settings.model_copy(update={"usage_topic": f"usage-{uuid.uuid4().hex[:8]}"})
    ensure_streaming_tokens_topic(kafka)
    resolver_url = serve_app(build_resolver(resolver_settings(kafka, usage_tick_seconds=0.2, **resolver)))
    wait_ready(resolver_url, timeout=120)
    issuer = issuer_factory(
        database_url,
        kafka,
        settings={"usage_group": f"usage-{uuid.uuid4().hex[:8]}", "resolver_urls": resolver_url},
    )
    return kafka, issuer, resolver_url


def _create(issuer: RunningIssuer) -> tuple[str, dict[str, Any]]:
    body = {"org": f"u{uuid.uuid4().hex[:6]}", "project": "p", "name": "prod"}
    response = issuer.admin.post("/v1/environments", json=body)
    assert response.status_code == 201, response.text
    env_id = str(response.json()["id"])
    path = f"/v1/environments/{env_id}/streaming-tokens/propagation"
    wait_until(lambda: issuer.member.get(path).json()["resolvers"] == "applied", 60, "the resolver")
    tokens = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()
    return env_id, tokens


def _usage(issuer: RunningIssuer, env_id: str) -> dict[str, Any]:
    response = issuer.member.get(f"/v1/environments/{env_id}/streaming-tokens/usage")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _clients(view: dict[str, Any], slot: int) -> list[dict[str, Any]]:
    token = next(t for t in view["tokens"] if t["slot"] == slot)
    clients: list[dict[str, Any]] = token["clients"]
    return clients


def test_a_quixstreams_app_and_portal_calls_show_up_in_the_usage_view_and_guard_the_rotation(
    database_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka, issuer, resolver = _stack(database_url, kafka_settings, serve_app, issuer_factory)
    env_id, tokens = _create(issuer)
    token_1, token_2 = tokens["token_1"]["token"], tokens["token_2"]["token"]
    assert tokens["token_1"]["usage"] == {"last_used_at": None, "client_count": 0}

    # An unmodified quixstreams application on Token 1 (Portal API: workspaces, librdkafka, topics).
    from quixstreams import Application

    monkeypatch.delenv("Quix__Broker__Address", raising=False)
    monkeypatch.delenv("Quix__Workspace__Id", raising=False)
    monkeypatch.setenv("Quix__Portal__Api", resolver)
    monkeypatch.setenv("Quix__Sdk__Token", token_1)
    app = Application(consumer_group="usage-app", request_timeout=10, topic_create_timeout=30)
    topic = app.topic("f1-data", value_serializer="json")
    with app.get_producer() as producer:
        message = topic.serialize(key="car-1", value={"lap": 1})
        producer.produce(topic=topic.name, key=message.key, value=message.value)
    # A lookup and a Portal API call on Token 2 by another client.
    headers = {"Authorization": f"Bearer {token_2}", "User-Agent": "telegraf/1.30 (outputs.quix)"}
    assert httpx.get(f"{resolver}/workspaces/{env_id}", headers=headers).status_code == 200
    assert httpx.get(f"{resolver}/v1/topics/f1-data", headers=headers).status_code == 200
    # An agent's heartbeat on Token 2.
    beat = httpx.post(
        f"{resolver}/v1/heartbeat",
        json={"deployment_id": "f1-producer"},
        headers={"Authorization": f"Bearer {token_2}", "User-Agent": "streamtoken-agent/0.1"},
    )
    assert beat.json() == {
        "environment_id": env_id,
        "token_id": tokens["token_2"]["token_id"],
        "slot": 2,
        "generation": 1,
    }

    def seen() -> dict[str, Any] | None:
        view = _usage(issuer, env_id)
        on_1 = {(c["source"], c["user_agent"].split("/")[0]) for c in _clients(view, 1)}
        on_2 = {(c["source"], c["user_agent"]) for c in _clients(view, 2)}
        wanted_2 = {
            ("portal", "telegraf/1.30 (outputs.quix)"),
            ("lookup", "telegraf/1.30 (outputs.quix)"),
            ("heartbeat", "streamtoken-agent/0.1"),
        }
        return view if ("portal", "python-httpx") in on_1 and wanted_2 <= on_2 else None

    view = wait_until(seen, 60, "the usage of both tokens in the issuer's view")
    ready = issuer.anonymous.get("/health/ready").json()
    assert ready["usage_fold"] == "running"
    assert ready["usage_folded"] >= 2
    first = view["tokens"][0]
    assert first["slot"] == 1
    assert first["token_id"] == tokens["token_1"]["token_id"]
    assert first["last_used_at"] is not None
    assert first["client_count"] == len(first["clients"])
    assert {c["address"] for c in first["clients"]} == {"127.0.0.1"}
    assert view["window_seconds"] == 900
    assert view["deployments"] == [
        {
            "deployment_id": "f1-producer",
            "token_id": tokens["token_2"]["token_id"],
            "slot": 2,
            "last_seen_at": view["deployments"][0]["last_seen_at"],
        }
    ]
    shown = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()
    assert shown["token_1"]["usage"]["client_count"] >= 1
    assert shown["token_2"]["usage"]["client_count"] == 3

    # No token ever reaches the usage topic (ids and fingerprints only).
    records = read_records(kafka.librdkafka(), kafka.usage_topic, 2, 30, settle=0.5)
    assert records
    for record in records:
        assert record.value is not None
        assert TOKEN_PATTERN.search(record.value.decode()) is None
        assert token_1 not in record.value.decode()
        assert record.key in (tokens["token_1"]["token_id"], tokens["token_2"]["token_id"])

    # Safe rotation: Token 1 was used within the window, so the rotation is refused with its clients.
    rotate = f"/v1/environments/{env_id}/streaming-tokens/rotate"
    refused = issuer.admin.post(rotate, json={"if_unused_seconds": 900})
    assert refused.status_code == 409, refused.text
    error = refused.json()
    assert error["error"] == "token_1_in_use"
    assert {c["source"] for c in error["clients"]} >= {"portal"}
    assert all(c["address"] == "127.0.0.1" for c in error["clients"])
    assert issuer.admin.get(f"/v1/environments/{env_id}").json()["generation"] == 1
    forced = issuer.admin.post(rotate, json={"if_unused_seconds": 900, "force": True})
    assert forced.status_code == 200, forced.text
    assert forced.json()["generation"] == 2
    audit = issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id, "limit": 5}).json()
    rotation = next(e for e in audit["entries"] if e["action"] == "rotate")
    assert rotation["detail"]["if_unused_seconds"] == 900
    assert rotation["detail"]["forced_in_use_clients"] >= 1

    # After the rotation the old Token 2 is Token 1: its clients and the deployment are now on slot 1.
    after = _usage(issuer, env_id)
    assert after["tokens"][0]["token_id"] == tokens["token_2"]["token_id"]
    assert after["deployments"][0]["slot"] == 1
    # The new Token 2 was never used: a rotation requiring Token 1 unused still refuses (it is in use).
    assert issuer.admin.post(rotate, json={"if_unused_seconds": 60}).status_code == 409


def test_lookups_are_throttled_into_few_usage_records(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    # A 3 s interval instead of 30 s: the same throttling, and the rest of the burst is due sooner.
    interval = 3.0
    kafka, issuer, resolver = _stack(
        sqlite_url, kafka_settings, serve_app, issuer_factory, usage_interval_seconds=interval
    )
    env_id, tokens = _create(issuer)
    headers = {"Authorization": f"Bearer {tokens['token_1']['token']}", "User-Agent": "burst/1"}
    started = time.monotonic()
    with httpx.Client(base_url=resolver, headers=headers) as client:
        for _ in range(500):
            assert client.get("/v1/topics/f1-data").status_code == 200
    elapsed = time.monotonic() - started

    def folded() -> list[dict[str, Any]] | None:
        clients = _clients(_usage(issuer, env_id), 1)
        return clients if clients and clients[0]["uses"] == 500 else None

    (client,) = wait_until(folded, 90, "all 500 lookups counted")
    assert client["source"] == "lookup"
    records = [
        json.loads(r.value)
        for r in read_records(kafka.librdkafka(), kafka.usage_topic, 1, 30, settle=1.0)
        if r.value is not None
    ]
    ours = [r for r in records if r["token_id"] == tokens["token_1"]["token_id"]]
    # One record at the first tick, then at most one per interval while the burst lasted.
    assert 1 <= len(ours) <= 2 + int(elapsed // interval), len(ours)
    assert sum(c["uses"] for r in ours for c in r["clients"]) == 500


def test_another_environments_pat_cannot_read_usage_or_progress_and_bad_input_is_4xx(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    _, issuer, _ = _stack(sqlite_url, kafka_settings, serve_app, issuer_factory)
    mine, _ = _create(issuer)
    other, _ = _create(issuer)
    scoped = issuer.client_for(issuer.pat_for("admin", environments=[other]))
    deployment = issuer.client_for(issuer.pat_for("deployment", environments=[other]))
    for client in (scoped, deployment):
        for view in ("usage", "progress"):
            response = client.get(f"/v1/environments/{mine}/streaming-tokens/{view}")
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "forbidden"
        assert client.get(f"/v1/environments/{other}/streaming-tokens/usage").status_code == 200
    assert scoped.get(f"/v1/environments/{other}/streaming-tokens/progress").status_code == 200
    assert issuer.anonymous.get(f"/v1/environments/{mine}/streaming-tokens/usage").status_code == 401
    rotate = f"/v1/environments/{mine}/streaming-tokens/rotate"
    for body in (
        {"if_unused_seconds": 0},
        {"if_unused_seconds": -5},
        {"if_unused_seconds": "15m"},
        {"if_unused_seconds": 10**12},
        {"force": "yes"},
    ):
        response = issuer.admin.post(rotate, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"] == "invalid_request"
    for path in ("NOT-AN-ID", "a" * 200, "x-y"):
        response = issuer.member.get(f"/v1/environments/{path}/streaming-tokens/usage")
        assert response.status_code in (404, 422), response.text
        assert "error" in response.json()
    # Never used: rotating with if_unused passes.
    assert issuer.admin.post(rotate, json={"if_unused_seconds": 900}).status_code == 200


def _json_out(stdout: str) -> Any:
    """The JSON a command printed (the services of the test log to the same captured stdout)."""
    lines = stdout.splitlines()
    start = lines.index("{")
    end = len(lines) - 1 - lines[::-1].index("}")
    return json.loads("\n".join(lines[start : end + 1]))


def test_the_cli_shows_usage_refuses_rotate_if_unused_and_forces(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    from typer.testing import CliRunner

    from cli.main import app as cli_app

    _, issuer, resolver = _stack(sqlite_url, kafka_settings, serve_app, issuer_factory)
    env_id, tokens = _create(issuer)
    headers = {"Authorization": f"Bearer {tokens['token_1']['token']}", "User-Agent": "f1-dashboard/2.1"}
    assert httpx.get(f"{resolver}/v1/topics/laps", headers=headers).status_code == 200
    wait_until(lambda: _clients(_usage(issuer, env_id), 1), 60, "the lookup folded")

    def run(*args: str, role: str = "admin") -> Any:
        env = {
            "STREAMTOKEN_ISSUER_URL": issuer.url,
            "STREAMTOKEN_PAT": issuer.pat_for(role),
            "COLUMNS": "200",
        }
        return CliRunner().invoke(cli_app, list(args), env=env)

    shown = run("tokens", "show", env_id, role="member")
    assert shown.exit_code == 0, shown.stderr
    assert "f1-dashboard/2.1" in shown.stdout
    assert "never" in shown.stdout  # Token 2 was never used
    assert not TOKEN_PATTERN.search(shown.stdout)
    as_json = _json_out(run("tokens", "show", env_id, "--json").stdout)
    assert as_json["usage_view"]["tokens"][0]["clients"][0]["user_agent"] == "f1-dashboard/2.1"
    usage = _json_out(run("tokens", "usage", env_id, "--json", role="member").stdout)
    assert usage["tokens"][0]["client_count"] == 1

    refused = run("tokens", "rotate", env_id, "--if-unused", "15m")
    assert refused.exit_code == 3
    assert "409" in refused.stderr
    assert "f1-dashboard/2.1" in refused.stderr
    assert (
        run("env", "show", env_id).stdout.count('"generation": 1') == 1
        or "generation" in run("env", "show", env_id).stdout
    )
    assert run("tokens", "rotate", env_id, "--if-unused", "fortnight").exit_code == 2
    assert run("tokens", "rotate", env_id, "--force").exit_code == 2
    forced = run("tokens", "rotate", env_id, "--if-unused", "15m", "--force", "--json")
    assert forced.exit_code == 0, forced.stderr
    assert _json_out(forced.stdout)["generation"] == 2
    progress = run("tokens", "progress", env_id, role="member")
    assert progress.exit_code == 0, progress.stderr
    assert "generation 2" in progress.stdout
    assert "deployments: unknown" in progress.stdout

    scheduled = run("tokens", "schedule", env_id, "--every-days", "30", "--deadline-days", "7")
    assert scheduled.exit_code == 0, scheduled.stderr
    assert "every 30 days once Token 1 is unused for 15m" in scheduled.stdout
    assert run("tokens", "schedule", env_id, role="member").exit_code == 0
    assert run("tokens", "schedule", env_id, "--off").exit_code == 0
    assert "404" in run("tokens", "schedule", env_id).stderr
