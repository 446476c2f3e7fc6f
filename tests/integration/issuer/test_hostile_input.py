"""Hostile input gets a 4xx JSON answer that never echoes a token, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt

from services.issuer.auth import ALGORITHM, AUDIENCE, ISSUER
from shared.kafka import KafkaSettings
from shared.tokens import generate_token
from tests.integration.issuer.conftest import RunningIssuer

ENV = {"org": "acme", "project": "telemetry", "name": "prod"}
ENV_ID = "acme-telemetry-prod"
TOKENS = f"/v1/environments/{ENV_ID}/streaming-tokens"


def _assert_clean_4xx(response: httpx.Response, secret: str) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) >= {"error", "message"}
    assert secret not in response.text
    assert secret[8:40] not in response.text


def test_tokens_in_keys_paths_and_subjects_are_never_echoed(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    token = generate_token()
    _assert_clean_4xx(issuer.admin.post("/v1/environments", json={token: 1, **ENV}), token)
    _assert_clean_4xx(issuer.admin.post("/v1/environments", json={**ENV, "org": token}), token)
    _assert_clean_4xx(issuer.admin.get(f"/v1/environments/{token}"), token)
    _assert_clean_4xx(issuer.admin.get("/v1/admin/audit", params={"environment_id": token}), token)
    member_named_like_a_token = issuer.client_for(issuer.pat_for("member", subject=token))
    _assert_clean_4xx(member_named_like_a_token.post("/v1/environments", json=ENV), token)


def test_a_forged_long_subject_or_a_nul_byte_is_a_4xx_not_a_500(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x" * 500, "role": "admin", "iat": now, "exp": now + 60}
    long_subject = jwt.encode(claims, issuer.app.jwt_secret, algorithm=ALGORITHM)
    response = issuer.client_for(long_subject).post("/v1/environments", json=ENV)
    assert response.status_code == 401
    assert "subject" in response.json()["message"]
    nul = issuer.admin.get("/v1/admin/audit", params={"environment_id": "a\x00b"})
    assert nul.status_code == 422
    huge = issuer.admin.post("/v1/environments", content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert huge.status_code == 413
    assert huge.json()["error"] == "payload_too_large"


def test_an_idempotency_key_does_not_outlive_its_environment(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    before = issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k"}).json()
    assert issuer.admin.delete(f"/v1/environments/{ENV_ID}").status_code in (200, 204)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    after = issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k"})
    assert after.status_code == 200
    assert after.json()["generation"] > before["generation"]
    assert after.json()["token_1"]["token"] != before["token_1"]["token"]
    assert after.json()["token_2"]["token"] != before["token_2"]["token"]


def test_environment_ids_never_nest(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201  # acme-telemetry-prod
    inner = issuer.admin.post("/v1/environments", json={**ENV, "name": "prod-x"})
    assert inner.status_code == 409
    assert "acme-telemetry-prod" in inner.json()["message"]
    assert issuer.admin.post("/v1/environments", json={**ENV, "name": "prod2"}).status_code == 201
    assert issuer.admin.post("/v1/environments", json={**ENV, "name": "stage-eu"}).status_code == 201
    outer = issuer.admin.post("/v1/environments", json={**ENV, "name": "stage"})
    assert outer.status_code == 409
    # A deleted id still holds its namespace (its topics may still be in Kafka) ...
    assert issuer.admin.delete("/v1/environments/acme-telemetry-stage-eu").status_code in (200, 204)
    assert issuer.admin.post("/v1/environments", json={**ENV, "name": "stage"}).status_code == 409
    # ... and may itself be created again.
    assert issuer.admin.post("/v1/environments", json={**ENV, "name": "stage-eu"}).status_code == 201


def test_a_trailing_newline_is_refused_in_bodies_and_paths_and_the_pattern_is_published(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    for field in ("org", "project", "name"):
        refused = issuer.admin.post("/v1/environments", json={**ENV, field: ENV[field] + "\n"})
        assert refused.status_code == 422, (field, refused.text)
    assert issuer.admin.get("/v1/environments").json()["environments"] == []
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    for path in ("", "/streaming-tokens", "/streaming-tokens/rotate"):
        method = "POST" if path.endswith("rotate") else "GET"
        answer = issuer.admin.request(method, f"/v1/environments/{ENV_ID}%0A{path}")
        assert answer.status_code == 422, (path, answer.text)
    spec = issuer.anonymous.get("/openapi.json").json()
    create = spec["components"]["schemas"]["EnvironmentCreate"]["properties"]
    assert {create[f]["pattern"] for f in ("org", "project", "name")} == {"^[a-z0-9]+(?:-[a-z0-9]+)*$"}
    parameters = spec["paths"]["/v1/environments/{environment_id}"]["get"]["parameters"]
    path_id = next(p for p in parameters if p["name"] == "environment_id")
    assert path_id["schema"]["pattern"] == "^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
