"""The issuer end to end over HTTP on SQLite and PostgreSQL, the relay publishing to the real broker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

from services.issuer.auth import Role
from shared.events import ChangeType, decode_event
from shared.kafka import KafkaSettings
from shared.tokens import TOKEN_PATTERN, fingerprint, is_well_formed
from tests.integration.issuer.conftest import LogCapture, RunningIssuer, read_topic

ENV = {"org": "acme", "project": "telemetry", "name": "prod"}
ENV_ID = "acme-telemetry-prod"
TOKENS = f"/v1/environments/{ENV_ID}/streaming-tokens"


def test_rotation_semantics_end_to_end_with_the_event_on_the_topic(
    database_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
    captured_logs: LogCapture,
) -> None:
    issuer = issuer_factory(database_url, kafka_settings)

    created = issuer.admin.post("/v1/environments", json=ENV)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == ENV_ID
    assert created.json()["generation"] == 1

    before = issuer.member.get(TOKENS)  # members may display tokens
    assert before.status_code == 200, before.text
    before_body = before.json()
    old_1, old_2 = before_body["token_1"], before_body["token_2"]
    assert is_well_formed(old_1["token"])
    assert is_well_formed(old_2["token"])
    assert old_1["fingerprint"] == fingerprint(old_1["token"])

    rotated = issuer.admin.post(f"{TOKENS}/rotate", json={"grace_period_seconds": 0})
    assert rotated.status_code == 200, rotated.text
    after = rotated.json()
    assert after["generation"] == 2
    assert after["token_1"] == old_2  # old Token 2 is now Token 1, unchanged
    new_2 = after["token_2"]
    assert new_2["token"] not in {old_1["token"], old_2["token"]}
    assert after["grace_tokens"] == []
    shown = issuer.member.get(TOKENS).json()
    assert (shown["token_1"]["token"], shown["token_2"]["token"]) == (old_2["token"], new_2["token"])

    records = read_topic(kafka_settings, expected=2)
    assert [r.key for r in records] == [ENV_ID, ENV_ID]
    events = [decode_event(r.value) for r in records]
    assert [e.generation for e in events if e] == [1, 2]
    created_event, rotated_event = events
    assert created_event is not None
    assert rotated_event is not None
    assert created_event.change.type is ChangeType.CREATED
    assert {(t.slot, t.fingerprint) for t in created_event.tokens} == {
        (1, old_1["fingerprint"]),
        (2, old_2["fingerprint"]),
    }
    assert rotated_event.change.type is ChangeType.ROTATED
    assert rotated_event.change.actor == "pat:alice"
    assert rotated_event.change.rotation_id == after["rotation_id"]
    assert {(t.slot, t.token_id, t.fingerprint) for t in rotated_event.tokens} == {
        (1, old_2["token_id"], old_2["fingerprint"]),
        (2, new_2["token_id"], new_2["fingerprint"]),
    }
    assert old_1["fingerprint"] not in {t.fingerprint for t in rotated_event.tokens}

    # No plaintext token anywhere on the topic or in the logs; the logs do speak of the change.
    plaintexts = [old_1["token"], old_2["token"], new_2["token"]]
    topic_bytes = b"".join(((r.key or "").encode() + (r.value or b"")) for r in records)
    assert b"stk_" not in topic_bytes
    logs = captured_logs.text
    assert ENV_ID in logs
    assert new_2["fingerprint"] in logs
    assert "tokens_rotated" in logs
    for token in plaintexts:
        assert token not in logs
        assert token.encode() not in topic_bytes
    assert "stk_[REDACTED]" not in logs  # nothing even tried to log a token

    audit = issuer.admin.get("/v1/admin/audit", params={"environment_id": ENV_ID}).json()["entries"]
    assert [e["action"] for e in audit] == ["reveal", "rotate", "reveal", "create"]
    assert audit[1]["actor"] == "pat:alice"
    assert new_2["token_id"] in audit[1]["token_ids"]
    assert all("stk_" not in str(e) for e in audit)


def test_grace_revoke_and_delete_reach_the_topic(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    first = issuer.admin.get(TOKENS).json()

    graced = issuer.admin.post(f"{TOKENS}/rotate", json={"grace_period_seconds": 300}).json()
    assert [g["token_id"] for g in graced["grace_tokens"]] == [first["token_1"]["token_id"]]
    revoked = issuer.admin.post(f"{TOKENS}/revoke").json()
    assert revoked["generation"] == 3
    assert revoked["grace_tokens"] == []
    assert {revoked["token_1"]["token"], revoked["token_2"]["token"]}.isdisjoint(
        {first["token_1"]["token"], first["token_2"]["token"], graced["token_2"]["token"]}
    )
    assert issuer.admin.delete(f"/v1/environments/{ENV_ID}").status_code == 204
    assert issuer.member.get(f"/v1/environments/{ENV_ID}").status_code == 404

    records = read_topic(kafka_settings, expected=4)
    events = [decode_event(r.value) for r in records]
    assert events[3] is None  # the tombstone comes last
    grace_event, revoke_event = events[1], events[2]
    assert grace_event is not None
    assert revoke_event is not None
    in_grace = [t for t in grace_event.tokens if t.valid_until is not None]
    assert [(t.slot, t.token_id) for t in in_grace] == [(1, first["token_1"]["token_id"])]
    assert revoke_event.change.type is ChangeType.REVOKED
    assert {t.fingerprint for t in revoke_event.tokens} == {
        revoked["token_1"]["fingerprint"],
        revoked["token_2"]["fingerprint"],
    }

    # The id can be created again; its generation continues so consumers accept it.
    again = issuer.admin.post("/v1/environments", json=ENV)
    assert again.status_code == 201
    assert again.json()["generation"] == 4


def test_authentication_authorisation_and_validation_errors(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    streaming_token = issuer.admin.get(TOKENS).json()["token_1"]["token"]

    def expect(response: httpx.Response, status: int, code: str | None = None) -> None:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) >= {"error", "message"}
        assert body["message"]
        if code:
            assert body["error"] == code
        assert not TOKEN_PATTERN.search(response.text)  # an error never echoes a token

    missing = issuer.anonymous.post(f"{TOKENS}/rotate")
    expect(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    expect(issuer.anonymous.get("/v1/environments", headers={"Authorization": "Bearer nope"}), 401)
    expired = issuer.pat(Role.ADMIN, ttl=timedelta(seconds=-10))
    response = issuer.anonymous.get("/v1/environments", headers={"Authorization": f"Bearer {expired}"})
    expect(response, 401)
    assert "expired" in response.json()["message"]
    as_pat = issuer.anonymous.get("/v1/environments", headers={"Authorization": f"Bearer {streaming_token}"})
    expect(as_pat, 401)
    assert "streaming token" in as_pat.json()["message"]
    assert streaming_token not in as_pat.text

    expect(issuer.member.post(f"{TOKENS}/rotate"), 403, "forbidden")
    expect(issuer.member.post(f"{TOKENS}/revoke"), 403, "forbidden")
    expect(issuer.member.post("/v1/environments", json={**ENV, "name": "dev"}), 403)
    expect(issuer.member.delete(f"/v1/environments/{ENV_ID}"), 403)
    expect(issuer.member.post("/v1/admin/republish"), 403)
    expect(issuer.member.get("/v1/admin/audit"), 403)
    assert issuer.member.get("/v1/environments").status_code == 200

    expect(issuer.admin.post("/v1/environments", json=ENV), 409, "conflict")
    expect(issuer.admin.post("/v1/environments", json={**ENV, "org": "Not Valid"}), 422)
    expect(issuer.admin.post("/v1/environments", json={"org": "acme"}), 422)
    expect(
        issuer.admin.post(
            "/v1/environments", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    expect(issuer.admin.post("/v1/environments", json={**ENV, "extra": 1}), 422)
    expect(issuer.admin.get("/v1/environments/UPPER_case!/streaming-tokens"), 422)
    expect(issuer.admin.get("/v1/environments/acme-telemetry-nope/streaming-tokens"), 404, "not_found")
    expect(issuer.admin.post(f"{TOKENS}/rotate", json={"grace_period_seconds": -1}), 422)
    expect(issuer.admin.post(f"{TOKENS}/rotate", json={"grace_period_seconds": "soon"}), 422)
    expect(issuer.admin.post(f"{TOKENS}/rotate", json={"grace_period_seconds": 10**9}), 422)


def test_idempotency_key_rotates_once(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    first = issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k-1"})
    again = issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["generation"] == 2
    assert issuer.admin.get(f"/v1/environments/{ENV_ID}").json()["generation"] == 2

    reused = issuer.admin.post(
        f"{TOKENS}/rotate", headers={"Idempotency-Key": "k-1"}, json={"grace_period_seconds": 60}
    )
    assert reused.status_code == 409
    assert "Idempotency-Key" in reused.json()["message"]
    other = issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k-2"})
    assert other.json()["generation"] == 3
    rotations = [e for e in issuer.admin.get("/v1/admin/audit").json()["entries"] if e["action"] == "rotate"]
    assert len(rotations) == 2


def test_openapi_health_and_metrics(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings)
    assert issuer.anonymous.get("/health/live").status_code == 200
    ready = issuer.anonymous.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["relay"] == "running"
    paths = issuer.anonymous.get("/openapi.json").json()["paths"]
    assert "/v1/environments/{environment_id}/streaming-tokens/rotate" in paths
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    issuer.admin.post(f"{TOKENS}/rotate")
    read_topic(kafka_settings, expected=2, settle=0)
    metrics = issuer.anonymous.get("/metrics").text
    assert "streamtoken_issuer_rotations_total 1.0" in metrics
    assert "streamtoken_issuer_outbox_depth" in metrics
    assert "streamtoken_issuer_publish_latency_seconds_count" in metrics


@pytest.mark.parametrize("kind", ["member", "admin"])
def test_list_environments_is_open_to_members_and_admins(
    kind: str, sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    issuer.admin.post("/v1/environments", json=ENV)
    issuer.admin.post("/v1/environments", json={**ENV, "name": "dev"})
    client = issuer.member if kind == "member" else issuer.admin
    listed = client.get("/v1/environments").json()["environments"]
    assert [e["id"] for e in listed] == ["acme-telemetry-dev", ENV_ID]
    assert all("token" not in key for e in listed for key in e if not key.endswith("_id"))
