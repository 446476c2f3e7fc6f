"""The rotation progress view end to end (issue 12): a real resolver and a real notifier on loopback, the
session's Apache Kafka; the issuer reads the notifier with its internal key (no streaming token, so no
usage). The view moves from the broker to the resolvers to the deployment notified and acknowledged; an
unreachable notifier or a wrong key is a reason, never a 500."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.issuer.conftest import RunningIssuer
from tests.integration.issuer.progress_stack import (  # noqa: F401 (fixture)
    NOTIFIER_KEY,
    ProgressStack,
    progress,
    progress_stack_factory,
)
from tests.integration.notifier.support import Receiver
from tests.support import wait_until


def test_progress_reaches_acknowledged_and_tolerates_a_missing_notifier(
    sqlite_url: str,
    request: pytest.FixtureRequest,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
    progress_stack_factory: Callable[[dict[str, str], type[ProgressStack]], ProgressStack],  # noqa: F811
) -> None:
    stack = progress_stack_factory({"org": "prg", "project": "p", "name": "prod"}, ProgressStack)
    issuer, notifier, kafka, env_id = stack.issuer, stack.notifier, stack.kafka, stack.environment_id
    receiver = Receiver()
    hooks = serve_app(receiver)
    tokens = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()
    subscription = httpx.post(
        f"{notifier}/v1/subscriptions",
        json={"deployment_id": "f1-producer", "url": f"{hooks}/hook", "action": "restart"},
        headers={"Authorization": f"Bearer {tokens['token_1']['token']}"},
    )
    assert subscription.status_code == 201, subscription.text
    sub = subscription.json()
    before = stack.progress()
    assert before["deployments"] == {"subscribed": 1, "notified": 0, "acknowledged": 0, "dead": 0}
    assert before["broker"]["applied"] is True
    assert before["resolvers"] == {**before["resolvers"], "applied": 1, "total": 1}

    rotated = issuer.admin.post(f"/v1/environments/{env_id}/streaming-tokens/rotate").json()
    assert stack.progress()["rotation_id"] == rotated["rotation_id"]
    notified = wait_until(
        lambda: (p := stack.progress())["state"] == "notified" and p, 60, "the deployment notified"
    )
    assert notified["generation"] == 2
    assert notified["deployments"]["notified"] == 1
    assert receiver.at("/hook")
    ack = httpx.post(
        f"{notifier}/v1/subscriptions/{sub['id']}/acks",
        json={"generation": 2},
        headers={
            "Authorization": f"Bearer {rotated['token_1']['token']}",
            "X-Subscription-Key": sub["management_key"],
        },
    )
    assert ack.status_code in (200, 201), ack.text
    done = stack.progress()
    assert done["state"] == "acknowledged"
    assert done["deployments"]["acknowledged"] == 1

    # The deployment's calls to the notifier count for the deployment (forwarded, source "notifier"), not
    # for the notifier; the issuer's own calls carried no streaming token at all.
    def via_notifier() -> list[dict[str, Any]]:
        view = issuer.member.get(f"/v1/environments/{env_id}/streaming-tokens/usage").json()
        clients = [c for t in view["tokens"] + view["grace_tokens"] for c in t["clients"]]
        return [c for c in clients if c["source"] == "notifier"]

    forwarded = wait_until(via_notifier, 60, "the deployment's notifier calls counted for it")
    assert {c["user_agent"].split("/")[0] for c in forwarded} == {"python-httpx"}
    assert not [c for c in forwarded if c["source"] == "whoami"]

    # Without the key the notifier refuses the issuer; unreachable is a reason too — both answer 200.
    wrong = issuer_factory(
        sqlite_url, kafka, settings={"notifier_url": notifier, "notifier_internal_key": "x"}
    )
    body = progress(wrong, env_id)
    assert body["deployments"] is None
    assert body["deployments_reason"].startswith("401")
    assert NOTIFIER_KEY not in str(body)
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    request.addfinalizer(held.close)
    down = issuer_factory(
        sqlite_url, kafka, settings={"notifier_url": f"http://127.0.0.1:{held.getsockname()[1]}"}
    )
    body = progress(down, env_id)
    assert body["deployments"] is None
    assert "unreachable" in body["deployments_reason"]
    # A streaming token of the environment cannot read the notifier's rotations of another environment.
    other = httpx.get(
        f"{notifier}/v1/environments/acme-other-prod/rotations",
        headers={"Authorization": f"Bearer {rotated['token_1']['token']}"},
    )
    assert other.status_code == 403
    assert httpx.get(f"{notifier}/v1/environments/{env_id}/rotations").status_code == 401
