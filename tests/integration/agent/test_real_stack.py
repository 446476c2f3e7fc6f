"""The agent against the real issuer, resolver and notifier (the session's Apache Kafka between them).

No stand-in: the issuer rotates, the resolver refuses the old token and answers heartbeats, the notifier
signs and delivers the webhook and records the acknowledgement, and the issuer's readiness view (usage by
heartbeat) and progress view show the deployment's part — the checks the stand-ins could not make (their
contracts had drifted from the services': ack 204 vs 200, error codes).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent.conftest import RunningAgent, wait_until
from tests.integration.agent.real_services import log_lines
from tests.integration.agent.test_adoption import window
from tests.integration.issuer.conftest import issuer_factory  # noqa: F401 (fixture)
from tests.integration.issuer.progress_stack import (  # noqa: F401 (fixture)
    WAIT,
    ProgressStack,
    progress_stack_factory,
)


class Stack(ProgressStack):
    """The progress tests' stack, with what the agent's tests read and do."""

    def tokens(self) -> dict[str, Any]:
        body: dict[str, Any] = self.issuer.admin.get(
            f"/v1/environments/{self.environment_id}/streaming-tokens"
        ).json()
        return body

    def readiness(self) -> list[dict[str, Any]]:
        view = self.issuer.member.get(f"/v1/environments/{self.environment_id}/streaming-tokens/usage")
        assert view.status_code == 200, view.text
        deployments: list[dict[str, Any]] = view.json()["deployments"]
        return deployments

    def rotate(self) -> dict[str, Any]:
        rotated = self.issuer.admin.post(f"/v1/environments/{self.environment_id}/streaming-tokens/rotate")
        assert rotated.status_code == 200, rotated.text
        body: dict[str, Any] = rotated.json()
        return body

    def agent_args(self, pat: str, *more: str) -> list[str]:
        return [
            "--issuer-url", self.issuer.url, "--environment", self.environment_id, "--pat-file", pat,
            "--portal-url", self.resolver, "--notifier-url", self.notifier, "--deployment-id", "f1-producer",
            *more,
        ]  # fmt: skip


@pytest.fixture
def stack(progress_stack_factory: Callable[[dict[str, str], type[Stack]], Stack]) -> Stack:  # noqa: F811
    return progress_stack_factory({"org": "acme", "project": "telemetry", "name": "dev"}, Stack)


def pat_file(tmp_path: Path, stack: Stack, role: str = "deployment") -> str:
    path = tmp_path / f"pat-{role}"
    path.write_text(stack.issuer.pat_for(role, "f1-agent", environments=[stack.environment_id]))
    path.chmod(0o600)
    return str(path)


def test_downtime_strategy_restart_acknowledged_and_reported(
    tmp_path: Path, stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(stack.agent_args(pat_file(tmp_path, stack), "--heartbeat-interval", "0.5"))
    first = wait_until(agent.starts, "the child to start", WAIT)[0]
    before = stack.tokens()
    assert first["token"] == before["token_1"]["token"]
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription at the real notifier", WAIT)
    on_1 = wait_until(stack.readiness, "the deployment in the readiness view", WAIT)
    assert [(d["deployment_id"], d["token_id"], d["slot"]) for d in on_1] == [
        ("f1-producer", before["token_1"]["token_id"], 1)
    ]

    rotated = stack.rotate()
    second = wait_until(lambda: agent.starts()[1:], "the restart on the new Token 1", WAIT)[0]
    assert second["token"] == rotated["token_1"]["token"] == before["token_2"]["token"]
    done = wait_until(
        lambda: (p := stack.progress())["state"] == "acknowledged" and p, "the acknowledgement", WAIT
    )
    assert done["deployments"]["acknowledged"] == 1
    moved = wait_until(
        lambda: [d for d in stack.readiness() if d["token_id"] == rotated["token_1"]["token_id"]],
        "the new token reported",
        WAIT,
    )
    assert moved[0]["slot"] == 1
    stderr = agent.stderr()
    for token in (before["token_1"]["token"], rotated["token_1"]["token"], rotated["token_2"]["token"]):
        assert token not in stderr


def test_zero_downtime_strategy_adopts_the_new_token_2_inside_the_window(
    tmp_path: Path, stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    now = datetime.now(UTC)
    agent = start_agent(
        stack.agent_args(
            pat_file(tmp_path, stack), "--slot", "2", "--inject-as", "MY_TOKEN",
            "--heartbeat-interval", "0.5", "--adopt-window", window(now - timedelta(minutes=1), 30),
        ),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )  # fmt: skip
    first = wait_until(agent.starts, "the child to start", WAIT)[0]
    before = stack.tokens()
    assert first["token"] == before["token_2"]["token"]
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription", WAIT)
    wait_until(lambda: [d for d in stack.readiness() if d["slot"] == 2], "the deployment on Token 2", WAIT)

    rotated = stack.rotate()  # the child's token is now Token 1: still valid, nothing stops
    # The webhook (a reload: SIGHUP) or the first heartbeat after the resolver applied the rotation (slot 1),
    # whichever comes first, tells the agent; either way the child is restarted once, inside the window.
    second = wait_until(lambda: agent.starts()[1:], "the adoption restart", WAIT)[0]
    assert second["token"] == rotated["token_2"]["token"]  # the new Token 2
    assert [r["reason"] for r in log_lines(agent.stderr(), "restarting_child")] == ["adopt"]
    assert [r["event"] for r in agent.records() if r["event"] != "hup"] == ["start", "term", "start"]
    wait_until(lambda: stack.progress()["state"] == "acknowledged", "the acknowledgement", WAIT)
    on_new_2 = wait_until(
        lambda: [d for d in stack.readiness() if d["token_id"] == rotated["token_2"]["token_id"]],
        "the readiness view showing the deployment on the new Token 2",
        WAIT,
    )
    assert on_new_2[0]["slot"] == 2
