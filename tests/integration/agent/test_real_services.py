"""``streamtoken run`` against the real issuer, resolver and notifier without Kafka (see real_services.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent.conftest import RunningAgent, alive, wait_until
from tests.integration.agent.real_services import RealServices, WebhookSender, start_real_services
from tests.integration.agent.test_adoption import log_lines


@pytest.fixture
def real(serve_app: Callable[..., str], tmp_path: Path) -> RealServices:
    return start_real_services(serve_app, tmp_path)


def agent_args(real: RealServices, tmp_path: Path, *more: str) -> list[str]:
    pat = tmp_path / "pat"
    pat.write_text(real.pat())
    pat.chmod(0o600)
    return [
        "--issuer-url", real.issuer_url, "--environment", real.environment_id, "--pat-file", str(pat),
        "--portal-url", real.resolver_url, "--notifier-url", real.notifier_url,
        "--deployment-id", "f1-producer",
        "--state-dir", str(tmp_path / "state"), *more,
    ]  # fmt: skip


def subscribed(real: RealServices, agent: RunningAgent) -> dict[str, Any]:
    wait_until(lambda: log_lines(agent, "subscribed"), "the subscription at the notifier")
    (sub,) = real.subscriptions()
    return sub


def sender(real: RealServices, tmp_path: Path, sub: dict[str, Any]) -> WebhookSender:
    """What the test needs to sign webhooks as the notifier: the subscription's secret, read with the
    management key the agent keeps in its state dir."""
    (key_file,) = (tmp_path / "state").iterdir()
    secret = real.store.secret(real.environment_id, sub["id"], key_file.read_text().strip())
    assert secret is not None
    return WebhookSender(sub["url"], secret)


def test_a_rotation_restarts_the_child_on_the_new_token_1_and_the_notifier_records_the_ack(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(agent_args(real, tmp_path, "--stop-timeout", "5"))
    first = wait_until(agent.starts, "the child to start")[0]
    before = real.tokens()
    assert first["token"] == before["token_1"]["token"]
    assert first["pat"] is None
    sub = subscribed(real, agent)
    assert (sub["deployment_id"], sub["action"]) == ("f1-producer", "restart")

    after = real.rotate()  # the notifier delivers the signed webhook itself
    second = wait_until(lambda: agent.starts()[1:], "the child to restart")[0]
    assert second["token"] == after["token_1"]["token"] == before["token_2"]["token"]
    assert not alive(first["pid"])
    assert [r["event"] for r in agent.records()][:3] == ["start", "term", "start"]
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement recorded by the notifier")
    beats = wait_until(
        lambda: [b for b in log_lines(agent, "heartbeat") if b["token_id"] == after["token_1"]["token_id"]],
        "a heartbeat on the new token",
    )
    assert beats[0]["slot"] == 1
    stderr = agent.stderr()
    for token in (before["token_1"]["token"], after["token_1"]["token"], after["token_2"]["token"]):
        assert token not in stderr


def test_a_revocation_restarts_even_a_reload_deployment(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(
        agent_args(real, tmp_path, "--slot", "2", "--inject-as", "MY_TOKEN", "--adopt", "off"),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )
    wait_until(agent.starts, "the child to start")
    assert subscribed(real, agent)["action"] == "reload"
    after = real.rotate("revoke")
    second = wait_until(lambda: agent.starts()[1:], "the restart after the revocation")[0]
    assert second["token"] == after["token_2"]["token"]
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")


def test_forged_signatures_are_refused_by_the_agent_and_a_signed_one_applies(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(agent_args(real, tmp_path))
    wait_until(agent.starts, "the child to start")
    sub = subscribed(real, agent)
    hooks = sender(real, tmp_path, sub)
    # The issuer rotates but the notifier is not told (as if its consumer lagged): only the test's
    # webhooks reach the agent.
    answer = real.admin.post(f"/v1/environments/{real.environment_id}/streaming-tokens/rotate")
    assert answer.status_code == 200
    payload = {
        "type": "streaming_tokens.rotated",
        "environment_id": real.environment_id,
        "generation": 2,
        "action": "restart",
        "subscription_id": sub["id"],
        "deployment_id": "f1-producer",
    }
    assert hooks.send(payload, secret="whsec_" + "A" * 32).status_code == 401
    assert hooks.send(payload, signature="v1,bm90IGEgc2lnbmF0dXJl").status_code == 401
    assert hooks.send(payload, signature="").json()["error"] == "invalid_signature"
    other_environment = {**payload, "environment_id": "acme-telemetry-prod"}
    assert hooks.send(other_environment).status_code == 400
    time.sleep(0.5)  # nothing may happen: give a wrong restart the chance to show
    assert len(agent.starts()) == 1
    assert hooks.send(payload, webhook_id="msg_once").status_code == 202
    assert hooks.send(payload, webhook_id="msg_once").status_code == 202  # a redelivery: applied once
    second = wait_until(lambda: agent.starts()[1:], "the child to restart")[0]
    assert second["token"] == real.tokens()["token_1"]["token"]
    real.relay()  # the resolver learns of the rotation now; the acknowledgement is checked against it
    wait_until(lambda: log_lines(agent, "acknowledged"), "the acknowledgement")
    time.sleep(0.5)
    assert len(agent.starts()) == 2
