"""Scheduled rotation (issue 12) on the real database (SQLite and PostgreSQL) with an injected clock: the
warning ahead of time, waiting while Token 1 is in use, forced after the deadline, rotated once unused;
each rotation audited with actor ``scheduler``. The schedule API's bad input is a 4xx JSON error."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from services.issuer.adapters.db import SqlStore
from shared.kafka import KafkaSettings
from shared.usage import TokenUsage, UsageClient
from tests.integration.issuer.conftest import RunningIssuer


def _use(store: SqlStore, env_id: str, token_id: str, fingerprint: str, at: datetime) -> None:
    """What the usage fold does with a resolver's record of one use of the token at ``at``."""
    record = TokenUsage(
        token_id=token_id,
        fingerprint=fingerprint,
        environment_id=env_id,
        slot=1,
        generation=1,
        resolver="test",
        published_at=at,
        clients=(
            UsageClient(address="10.0.0.7", user_agent="f1-app/1", source="lookup", last_seen_at=at, uses=3),
        ),
    )
    assert store.fold_usage([record], at) == 1


def test_a_schedule_warns_waits_for_token_1_to_be_unused_and_forces_after_the_deadline(
    database_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    clock = {"now": datetime.now(UTC)}
    issuer = issuer_factory(
        database_url,
        kafka_settings,
        clock=lambda: clock["now"],
        start_relay=False,
        start_scheduler=False,
    )
    start = clock["now"]
    env = issuer.admin.post(
        "/v1/environments", json={"org": f"s{uuid.uuid4().hex[:6]}", "project": "p", "name": "x"}
    )
    env_id = env.json()["id"]
    path = f"/v1/environments/{env_id}/rotation-schedule"
    assert issuer.member.get(path).status_code == 404
    body = {"every_days": 7, "unused_window_seconds": 900, "deadline_days": 2, "warn_before_seconds": 86400}
    assert issuer.member.put(path, json=body).status_code == 403  # rotation needs the admin role
    put = issuer.admin.put(path, json=body)
    assert put.status_code == 200, put.text
    schedule = put.json()
    assert datetime.fromisoformat(schedule["due_at"]) == datetime.fromisoformat(
        env.json()["updated_at"]
    ) + timedelta(days=7)
    assert schedule["forced_at"] is not None
    assert issuer.member.get(path).json()["every_days"] == 7

    store = issuer.app.store
    run: Callable[[], list[tuple[str, str]]] = issuer.app.run_schedules

    def generation() -> int:
        with store.transaction() as tx:
            found = tx.environment(env_id)
            assert found is not None
            return found.generation

    def token_1() -> tuple[str, str]:
        with store.transaction() as tx:
            found = tx.environment(env_id)
            assert found is not None
            return found.token_1.token_id, found.token_1.fingerprint

    def audit(action: str) -> list[Any]:
        return [e for e in store.audit_entries(env_id, 50) if e.action == action]

    assert run() == [(env_id, "not_due")]
    clock["now"] = start + timedelta(days=6, hours=1)  # within warn_before_seconds of the due time
    assert run() == [(env_id, "warned")]
    (warned,) = audit("rotation_warned")
    assert warned.actor == "scheduler"
    assert warned.detail["generation"] == 1
    assert run() == [(env_id, "warned")]  # warned once per generation
    assert len(audit("rotation_warned")) == 1

    # Due, but Token 1 was used five minutes ago: the scheduler waits.
    clock["now"] = start + timedelta(days=7, minutes=1)
    _use(store, env_id, *token_1(), clock["now"] - timedelta(minutes=5))
    assert run() == [(env_id, "waiting")]
    assert generation() == 1
    with store.transaction() as tx:
        stored = tx.rotation_schedule(env_id)
    assert stored is not None
    assert stored.last_outcome is not None
    assert stored.last_outcome.startswith("waiting: Token 1 used within 900 s (1 clients)")

    # Still in use, but past the deadline (due + 2 days): forced, audited like a manual rotation.
    clock["now"] = start + timedelta(days=9, minutes=2)
    _use(store, env_id, *token_1(), clock["now"] - timedelta(minutes=1))
    assert run() == [(env_id, "forced")]
    assert generation() == 2
    (rotation,) = audit("rotate")
    assert rotation.actor == "scheduler"
    assert rotation.detail["forced_in_use_clients"] == 1
    assert rotation.detail["if_unused_seconds"] == 900

    # The next rotation is due 7 days after that one; Token 1 (the promoted one) unused: rotated.
    clock["now"] = start + timedelta(days=16, minutes=3)
    outcomes = run()
    assert outcomes == [(env_id, "rotated")]
    assert generation() == 3
    assert [e.actor for e in audit("rotate")] == ["scheduler", "scheduler"]
    assert len(audit("rotation_warned")) == 2  # warned before it as well


def test_the_schedule_api_refuses_bad_input_with_4xx_json(
    sqlite_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False, start_scheduler=False)
    env_id = issuer.admin.post("/v1/environments", json={"org": "sa", "project": "p", "name": "x"}).json()[
        "id"
    ]
    path = f"/v1/environments/{env_id}/rotation-schedule"
    assert issuer.admin.patch(path, json={"every_days": 3}).status_code == 404
    for bad in (
        {},
        {"every_days": 0},
        {"every_days": -1},
        {"every_days": "weekly"},
        {"every_days": 7, "unused_window_seconds": 5},
        {"every_days": 7, "warn_before_seconds": -1},
        {"every_days": 7, "deadline_days": -2},
        {"every_days": 7, "surprise": 1},
        {"every_days": 7, "grace_period_seconds": 10**9},
    ):
        response = issuer.admin.put(path, json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"] == "invalid_request"
    assert (
        issuer.admin.put(path, content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert issuer.admin.put(path, json={"every_days": 7}).status_code == 200
    patched = issuer.admin.patch(path, json={"deadline_days": 3, "every_days": 14})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["every_days"], patched.json()["deadline_days"]) == (14, 3)
    assert issuer.admin.patch(path, json={"deadline_days": None}).json()["deadline_days"] is None
    assert issuer.admin.patch(path, json={"every_days": None}).status_code == 422
    assert (
        issuer.admin.put("/v1/environments/NOPE/rotation-schedule", json={"every_days": 7}).status_code == 422
    )
    assert (
        issuer.admin.put("/v1/environments/no-such-env/rotation-schedule", json={"every_days": 7}).status_code
        == 404
    )
    other = issuer.admin.post("/v1/environments", json={"org": "sb", "project": "p", "name": "x"}).json()[
        "id"
    ]
    scoped = issuer.client_for(issuer.pat_for("admin", environments=[other]))
    assert scoped.get(path).status_code == 403
    assert scoped.delete(path).status_code == 403
    assert issuer.admin.delete(path).status_code == 204
    assert issuer.admin.delete(path).status_code == 404
    kinds = [
        e["action"]
        for e in issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id}).json()["entries"]
    ]
    assert "schedule_set" in kinds
    assert "schedule_delete" in kinds
    # Deleting the environment takes its schedule and its usage along.
    assert issuer.admin.put(path, json={"every_days": 7}).status_code == 200
    store = issuer.app.store
    with store.transaction() as tx:
        env = tx.environment(env_id)
        assert env is not None
        token_id, token_fingerprint = env.token_1.token_id, env.token_1.fingerprint
    _use(store, env_id, token_id, token_fingerprint, datetime.now(UTC))
    assert issuer.member.get(f"/v1/environments/{env_id}/streaming-tokens/usage").json()["tokens"][0][
        "clients"
    ]
    assert issuer.admin.delete(f"/v1/environments/{env_id}").status_code == 204
    assert issuer.app.run_schedules() == []
    import sqlalchemy as sa

    with store.engine.connect() as connection:
        for table in ("token_usage", "token_usage_client", "rotation_schedule"):
            count = connection.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE environment_id = :e"), {"e": env_id}
            ).scalar_one()
            assert count == 0, table
    # A record of its token arriving after the deletion is skipped, not folded.
    record = TokenUsage(
        token_id=token_id,
        fingerprint=token_fingerprint,
        environment_id=env_id,
        slot=1,
        generation=1,
        resolver="late",
        published_at=datetime.now(UTC),
        clients=(
            UsageClient(
                address="10.0.0.8",
                user_agent="late/1",
                source="lookup",
                last_seen_at=datetime.now(UTC),
                uses=1,
            ),
        ),
    )
    assert store.fold_usage([record], datetime.now(UTC)) == 0
