"""``streamtoken run`` against the real issuer, resolver and notifier without Kafka (see real_services.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.agent.conftest import RunningAgent, alive, wait_until
from tests.integration.agent.real_services import RealServices, agent_args, log_lines, sender


def subscribed(real: RealServices, agent: RunningAgent) -> dict[str, Any]:
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription at the notifier")
    (sub,) = real.subscriptions()
    return sub


def test_a_rotation_restarts_the_child_on_the_new_token_1_and_the_notifier_records_the_ack(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(agent_args(real, tmp_path, "--stop-timeout", "5"))
    first = wait_until(agent.starts, "the child to start")[0]
    before = real.tokens()
    assert first["token"] == before["token_1"]["token"]
    assert first["pat"] is None  # the agent's PAT never reaches the child
    assert first["streamtoken_variables"] == []
    assert first["portal"] == real.resolver_url
    sub = subscribed(real, agent)
    assert (sub["deployment_id"], sub["action"]) == ("f1-producer", "restart")

    after = real.rotate()  # the notifier delivers the signed webhook itself
    second = wait_until(lambda: agent.starts()[1:], "the child to restart")[0]
    assert second["token"] == after["token_1"]["token"] == before["token_2"]["token"]
    assert not alive(first["pid"])
    assert [r["event"] for r in agent.records()][:3] == ["start", "term", "start"]
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement recorded by the notifier")
    new_id = after["token_1"]["token_id"]
    beats = wait_until(
        lambda: [b for b in log_lines(agent.stderr(), "heartbeat") if b["token_id"] == new_id],
        "a heartbeat on the new token",
    )
    assert beats[0]["slot"] == 1
    assert len(agent.starts()) == 2
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert real.subscriptions() == []  # unsubscribed on the way out
    stderr = agent.stderr()
    assert '"generation": 2' in stderr
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
    wait_until(lambda: log_lines(agent.stderr(), "acknowledged"), "the acknowledgement")
    time.sleep(0.5)
    assert len(agent.starts()) == 2
