"""A scheduled rotation's warning through the real notifier on loopback (issuer scheduler with an injected
clock): an unreachable notifier leaves the warning pending and it is sent on a later pass, once per
generation; the deployment's receiver gets a signed ``token.rotation_due``, not a rotation."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

from services.issuer import domain, usage
from services.issuer.adapters.notifier import HttpNotifierProbe
from services.notifier.bootstrap import build_app as build_notifier
from shared.kafka import KafkaSettings
from tests.integration.issuer.conftest import RunningIssuer
from tests.integration.notifier.conftest import fast_settings
from tests.integration.notifier.support import Receiver, Resolver
from tests.support import wait_until

KEY = "the-notifiers-internal-key-for-warnings"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_scheduler_warns_through_the_notifier_once_and_retries_an_unreachable_one(
    sqlite_url: str,
    tmp_path: Any,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    clock = {"now": datetime.now(UTC)}
    issuer = issuer_factory(
        sqlite_url, kafka_settings, clock=lambda: clock["now"], start_relay=False, start_scheduler=False
    )
    start = clock["now"]
    env = issuer.admin.post(
        "/v1/environments", json={"org": f"w{uuid.uuid4().hex[:6]}", "project": "p", "name": "x"}
    ).json()
    env_id = env["id"]
    body = {"every_days": 7, "unused_window_seconds": 900, "deadline_days": 2, "warn_before_seconds": 86400}
    assert issuer.admin.put(f"/v1/environments/{env_id}/rotation-schedule", json=body).status_code == 200
    deps = issuer.app.deps
    tokens = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()

    resolver = Resolver()
    token_1 = tokens["token_1"]
    with deps.store.transaction() as tx:
        state = tx.environment(env_id)
    assert state is not None
    resolver.apply(domain.to_event(state))  # the resolver has read the issuer's record
    notifier_settings = fast_settings(
        f"sqlite:///{tmp_path / 'notifier.db'}", serve_app(resolver.app), internal_key=KEY, consume=False
    )
    notifier = serve_app(build_notifier(notifier_settings))
    receiver = Receiver()
    hooks = serve_app(receiver)

    sub = httpx.post(
        f"{notifier}/v1/subscriptions",
        json={"deployment_id": "f1-producer", "url": f"{hooks}/hook", "action": "restart"},
        headers={"Authorization": f"Bearer {token_1['token']}"},
    )
    assert sub.status_code == 201, sub.text

    def audit() -> list[Any]:
        return [e for e in deps.store.audit_entries(env_id, 50) if e.action == "rotation_warned"]

    clock["now"] = start + timedelta(days=6, hours=1)  # within warn_before_seconds of the due time
    down = HttpNotifierProbe(f"http://127.0.0.1:{_closed_port()}", internal_key=KEY, timeout_s=1)
    assert usage.run_schedules(deps, down) == [(env_id, "warning_pending")]
    assert usage.run_schedules(deps, down) == [(env_id, "warning_pending")]  # asked again, audited once
    (pending,) = audit()
    assert pending.detail["webhook"].startswith("pending")

    up = HttpNotifierProbe(notifier, internal_key=KEY)
    clock["now"] += timedelta(minutes=1)
    assert usage.run_schedules(deps, up) == [(env_id, "warned")]
    assert audit()[0].detail["webhook"] == "sent"
    assert audit()[0].detail["deployments"] == 1
    assert usage.run_schedules(deps, up) == [(env_id, "warned")]  # once per generation
    assert len(audit()) == 2

    wait_until(lambda: receiver.at("/hook"), 30, "the warning at the deployment")
    (request,) = receiver.at("/hook")
    payload = Webhook(sub.json()["secret"]).verify(request.body, request.headers)
    assert payload["type"] == "token.rotation_due"
    assert "action" not in payload
    assert payload["generation"] == 1
    assert payload["environment_id"] == env_id
    # a repeat of the same generation's notice (a second issuer replica) sends nothing new
    assert (
        up.warn(
            env_id,
            {
                "kind": "rotation_due",
                "generation": 1,
                "due_at": payload["due_at"],
                "notice_id": "rotation-due-g1",
            },
        )
        == 1
    )
    assert len(receiver.at("/hook")) == 1
    down.close()
    up.close()
