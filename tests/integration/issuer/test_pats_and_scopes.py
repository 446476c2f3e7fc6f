"""PATs as records, scoped PATs and the deployment credential over HTTP, on SQLite and PostgreSQL
(findings 2 and 3 of the security review)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.agent.adapters.tokens import IssuerTokenSource
from services.issuer.auth import Role, mint_pat
from shared.kafka import KafkaSettings
from tests.integration.issuer.conftest import RunningIssuer

DEV = {"org": "acme", "project": "telemetry", "name": "dev"}
PROD = {"org": "acme", "project": "telemetry", "name": "prod"}
DEV_ID, PROD_ID = "acme-telemetry-dev", "acme-telemetry-prod"


def _two_environments(issuer: RunningIssuer) -> None:
    for body in (DEV, PROD):
        assert issuer.admin.post("/v1/environments", json=body).status_code == 201


def test_admins_mint_list_and_revoke_pats_and_only_recorded_pats_work(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    # A JWT signed with the issuer's secret but never recorded (the old `admin pat`) is refused.
    forged = mint_pat(issuer.app.jwt_secret, "mallory", Role.ADMIN, timedelta(days=300))
    refused = issuer.client_for(forged).get("/v1/environments")
    assert refused.status_code == 401
    assert "not known" in refused.json()["message"]

    created = issuer.admin.post("/v1/pats", json={"subject": "ci-bot", "role": "member", "ttl_days": 7})
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    pat_id, token = body["id"], body["token"]
    expires = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(body["created_at"])
    assert expires == timedelta(days=7)
    bot = issuer.client_for(token)
    assert bot.get("/v1/environments").status_code == 200

    too_long = issuer.admin.post("/v1/pats", json={"subject": "x", "role": "admin", "ttl_days": 3650})
    assert too_long.status_code == 422
    assert issuer.member.post("/v1/pats", json={"subject": "x"}).status_code == 403

    for i in range(3):
        assert issuer.admin.post("/v1/pats", json={"subject": f"p{i}"}).status_code == 201
    page = issuer.admin.get("/v1/pats", params={"limit": 2}).json()
    assert len(page["pats"]) == 2
    assert page["next"]
    seen = [p["id"] for p in page["pats"]]
    while page["next"]:
        page = issuer.admin.get("/v1/pats", params={"limit": 2, "after": page["next"]}).json()
        seen += [p["id"] for p in page["pats"]]
    assert pat_id in seen
    assert len(seen) == len(set(seen)) >= 6  # alice, bob, ci-bot, p0-p2
    assert token not in issuer.admin.get("/v1/pats", params={"limit": 500}).text

    revoked = issuer.admin.delete(f"/v1/pats/{pat_id}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    gone = bot.get("/v1/environments")  # revoked through this replica: refused at once
    assert gone.status_code == 401
    assert "revoked" in gone.json()["message"]
    assert issuer.admin.delete(f"/v1/pats/{'0' * 32}").status_code == 404

    audit = issuer.admin.get("/v1/admin/audit").json()["entries"]
    revoke_entry = next(e for e in audit if e["action"] == "pat_revoke")
    assert revoke_entry["detail"]["pat"] == pat_id
    assert revoke_entry["pat_id"] is not None  # alice's PAT, by id
    assert revoke_entry["actor"] == "pat:alice"


def test_a_pat_limited_to_environments_sees_and_reveals_only_those(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    _two_environments(issuer)
    dev_member = issuer.client_for(issuer.pat_for("member", "dev-only", environments=[DEV_ID]))
    listed = dev_member.get("/v1/environments").json()["environments"]
    assert [e["id"] for e in listed] == [DEV_ID]
    assert dev_member.get(f"/v1/environments/{DEV_ID}/streaming-tokens").status_code == 200
    for path in ("", "/streaming-tokens", "/streaming-tokens/propagation"):
        assert dev_member.get(f"/v1/environments/{PROD_ID}{path}").status_code == 403, path
    dev_admin = issuer.client_for(issuer.pat_for("admin", "dev-admin", environments=[DEV_ID]))
    assert dev_admin.post(f"/v1/environments/{DEV_ID}/streaming-tokens/rotate").status_code == 200
    assert dev_admin.post(f"/v1/environments/{PROD_ID}/streaming-tokens/rotate").status_code == 403
    assert dev_admin.delete(f"/v1/environments/{PROD_ID}").status_code == 403
    assert dev_admin.post("/v1/pats", json={"subject": "x"}).status_code == 403  # not for every environment
    assert dev_admin.get("/v1/admin/audit").status_code == 403
    assert dev_admin.get("/v1/admin/audit", params={"environment_id": DEV_ID}).status_code == 200
    read_only = issuer.client_for(issuer.pat_for("admin", "auditor", actions=["read"]))
    assert read_only.get(f"/v1/environments/{PROD_ID}").status_code == 200
    assert read_only.get(f"/v1/environments/{PROD_ID}/streaming-tokens").status_code == 403


def test_a_deployment_pat_reads_only_the_current_token_of_its_environment(
    database_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(database_url, kafka_settings, start_relay=False)
    _two_environments(issuer)
    both = issuer.admin.get(f"/v1/environments/{DEV_ID}/streaming-tokens").json()
    created = issuer.admin.post(
        "/v1/pats", json={"subject": "demo-agent", "role": "deployment", "environments": [DEV_ID]}
    )
    assert created.status_code == 201, created.text
    deployment = issuer.client_for(created.json()["token"])

    current = deployment.get(f"/v1/environments/{DEV_ID}/streaming-tokens")
    assert current.status_code == 200, current.text
    assert current.headers["cache-control"] == "no-store"
    assert current.json()["token_1"]["token"] == both["token_1"]["token"]
    assert current.json()["token_2"] is None
    next_token = deployment.get(f"/v1/environments/{DEV_ID}/streaming-tokens", params={"slot": 2}).json()
    assert (next_token["token_1"], next_token["token_2"]["token"]) == (None, both["token_2"]["token"])
    assert deployment.get(f"/v1/environments/{DEV_ID}").status_code == 200
    assert deployment.get(f"/v1/environments/{PROD_ID}/streaming-tokens").status_code == 403
    assert deployment.get(f"/v1/environments/{PROD_ID}").status_code == 403
    assert [e["id"] for e in deployment.get("/v1/environments").json()["environments"]] == [DEV_ID]
    assert deployment.post(f"/v1/environments/{DEV_ID}/streaming-tokens/rotate").status_code == 403
    assert deployment.post(f"/v1/environments/{DEV_ID}/streaming-tokens/revoke").status_code == 403
    assert deployment.post("/v1/environments", json={**DEV, "name": "x"}).status_code == 403
    two_envs = issuer.admin.post(
        "/v1/pats", json={"subject": "a", "role": "deployment", "environments": [DEV_ID, PROD_ID]}
    )
    assert two_envs.status_code == 422

    # What the deployment agent calls (services/agent/adapters/tokens.py) works with it, for Token 1.
    source = IssuerTokenSource(issuer.url, created.json()["token"], DEV_ID)
    credential = asyncio.run(source.fetch())
    assert credential.token == both["token_1"]["token"]
    reveal = issuer.admin.get("/v1/admin/audit", params={"environment_id": DEV_ID}).json()["entries"][0]
    assert (reveal["action"], reveal["actor"], reveal["token_ids"]) == (
        "reveal",
        "pat:demo-agent",
        [both["token_1"]["token_id"]],
    )
    assert reveal["pat_id"] == created.json()["id"]


@pytest.mark.parametrize("ttl", [timedelta(seconds=-10)])
def test_an_expired_pat_is_refused(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
    ttl: timedelta,
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    record, token = issuer.app.issue_pat("short", Role.MEMBER, ttl=timedelta(seconds=30))
    assert record.expires_at < datetime.now(UTC) + timedelta(minutes=1)
    assert issuer.client_for(token).get("/v1/environments").status_code == 200
    assert issuer.client_for(issuer.pat(Role.ADMIN, ttl=ttl)).get("/v1/environments").status_code == 401
