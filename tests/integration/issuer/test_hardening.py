"""Findings 9, 12, 13 and 14 of the security review over HTTP and on the real databases."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import SecretStr

from services.issuer.adapters.db import SqlStore, make_engine
from services.issuer.bootstrap import reencrypt
from services.issuer.ports import AuditEntry
from shared.kafka import KafkaSettings
from tests.integration.issuer.conftest import RunningIssuer, make_settings

ENV = {"org": "acme", "project": "telemetry", "name": "prod"}
ENV_ID = "acme-telemetry-prod"
TOKENS = f"/v1/environments/{ENV_ID}/streaming-tokens"


def test_rotate_with_if_match_rotates_only_from_that_generation(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    shown = issuer.admin.get(f"/v1/environments/{ENV_ID}")
    assert shown.headers["etag"] == '"1"'
    first = issuer.admin.post(f"{TOKENS}/rotate", headers={"If-Match": '"1"'})
    assert first.status_code == 200, first.text
    stale = issuer.admin.post(f"{TOKENS}/rotate", headers={"If-Match": '"1"'})  # a rerun after a timeout
    assert stale.status_code == 412
    assert stale.json()["error"] == "precondition_failed"
    assert "generation 2" in stale.json()["message"]
    assert stale.headers["etag"] == '"2"'
    by_body = issuer.admin.post(f"{TOKENS}/rotate", json={"expected_generation": 1})
    assert by_body.status_code == 412
    assert issuer.admin.post(f"{TOKENS}/rotate", json={"expected_generation": 2}).status_code == 200
    assert issuer.admin.post(f"{TOKENS}/revoke", headers={"If-Match": "2"}).status_code == 412
    assert issuer.admin.post(f"{TOKENS}/rotate", headers={"If-Match": "two"}).status_code == 422
    assert issuer.admin.get(f"/v1/environments/{ENV_ID}").json()["generation"] == 3


def test_token_answers_are_not_cached_and_a_replay_is_audited_as_a_reveal(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    answers = [
        issuer.member.get(TOKENS),
        issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k1"}),
        issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k1"}),
        issuer.admin.post(f"{TOKENS}/revoke"),
    ]
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.headers["cache-control"] for a in answers} == {"no-store"}
    entries = issuer.admin.get("/v1/admin/audit", params={"environment_id": ENV_ID}).json()["entries"]
    assert [e["action"] for e in reversed(entries)] == ["create", "reveal", "rotate", "reveal", "revoke"]
    replay = entries[1]
    assert replay["detail"]["replay_of"] == "rotate"
    assert replay["pat_id"]


def test_grace_tokens_are_capped_with_a_clear_409(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False, settings={"max_grace_tokens": 2})
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    grace = {"grace_period_seconds": 3600}
    for _ in range(2):
        assert issuer.admin.post(f"{TOKENS}/rotate", json=grace).status_code == 200
    refused = issuer.admin.post(f"{TOKENS}/rotate", json=grace)
    assert refused.status_code == 409
    assert "MAX_GRACE_TOKENS" in refused.json()["message"]
    assert issuer.admin.post(f"{TOKENS}/rotate").status_code == 200


def test_a_deleted_id_is_not_inherited_by_other_names_unless_purged(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings)  # the relay deletes the purged id's topics
    first = {"org": "acme", "project": "data-prod", "name": "eu"}
    other = {"org": "acme-data", "project": "prod", "name": "eu"}  # the same id, acme-data-prod-eu
    assert issuer.admin.post("/v1/environments", json=first).status_code == 201
    assert issuer.admin.delete("/v1/environments/acme-data-prod-eu").status_code == 204
    refused = issuer.admin.post("/v1/environments", json=other)
    assert refused.status_code == 409
    assert "purge=true" in refused.json()["message"]
    assert (
        issuer.admin.delete("/v1/environments/acme-data-prod-eu", params={"purge": "true"}).status_code == 204
    )
    deadline = time.monotonic() + 30
    while (created := issuer.admin.post("/v1/environments", json=other)).status_code == 409:
        assert "still being deleted" in created.json()["message"]  # until the relay deleted its topics
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert created.status_code == 201
    assert (created.json()["org"], created.json()["generation"]) == ("acme-data", 2)
    # Once re-created, it is protected again.
    assert issuer.admin.delete("/v1/environments/acme-data-prod-eu").status_code == 204
    assert issuer.admin.post("/v1/environments", json=first).status_code == 409


def test_fernet_keys_rotate_and_reencrypt_moves_everything_to_the_new_key(
    database_url: str,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
    tmp_path: Path,
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    issuer = issuer_factory(
        database_url, kafka_settings, start_relay=False, settings={"encryption_key": SecretStr(old)}
    )
    assert issuer.admin.post("/v1/environments", json=ENV).status_code == 201
    before = issuer.admin.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k"}).json()
    pat = issuer.pat_for("admin", "keeper")

    def start(keys: str) -> RunningIssuer:
        return issuer_factory(
            database_url, kafka_settings, start_relay=False, settings={"encryption_key": SecretStr(keys)}
        )

    both = start(f"{new},{old}")
    client = both.client_for(pat)
    assert client.get(TOKENS).json()["token_1"]["token"] == before["token_1"]["token"]  # old key still listed
    settings = make_settings(
        database_url, kafka_settings, tmp_path / "data", encryption_key=SecretStr(f"{new},{old}")
    )
    tokens, answers = reencrypt(settings)
    assert tokens == 3  # two created, one rotated in
    assert answers == 1
    only_new = start(new)
    client = only_new.client_for(pat)
    assert client.get(TOKENS).json()["token_2"]["token"] == before["token_2"]["token"]
    replay = client.post(f"{TOKENS}/rotate", headers={"Idempotency-Key": "k"})
    assert replay.status_code == 200
    assert replay.json()["token_2"] == before["token_2"]


def test_housekeeping_purges_audit_entries_past_their_retention(database_url: str, tmp_path: Path) -> None:
    from services.issuer.adapters import migrate

    engine = make_engine(database_url)
    migrate.upgrade(engine)
    store = SqlStore(engine)
    now = datetime.now(UTC)
    with store.transaction() as tx:
        tx.add_audit(
            AuditEntry(at=now - timedelta(days=400), actor="a", action="reveal", environment_id=None)
        )
        tx.add_audit(AuditEntry(at=now - timedelta(days=10), actor="a", action="reveal", environment_id=None))
    assert store.purge(now, now, audit_before=now - timedelta(days=365)) == (0, 0, 1)
    assert [e.at.date() for e in store.audit_entries(None, 10)] == [(now - timedelta(days=10)).date()]
    store.dispose()
