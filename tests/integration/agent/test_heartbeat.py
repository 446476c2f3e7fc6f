"""Heartbeats from a real ``streamtoken run`` to the real resolver (no Kafka, see real_services.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.usage import TokenUsage
from tests.integration.agent.conftest import RunningAgent, wait_until
from tests.integration.agent.real_services import RealServices, agent_args, log_lines, start_real_services
from tests.integration.agent.test_adoption import window


class RecordingPublisher:
    """Where the resolver's usage records go instead of the usage topic (this test needs no Kafka)."""

    def __init__(self) -> None:
        self.records: list[TokenUsage] = []
        self._lock = threading.Lock()

    def publish(self, records: Sequence[TokenUsage]) -> None:
        with self._lock:
            self.records.extend(records)

    def close(self) -> None:
        return None

    def deployments(self, token_id: str) -> set[str | None]:
        with self._lock:
            return {c.deployment_id for r in self.records if r.token_id == token_id for c in r.clients}


def test_the_resolver_learns_which_token_each_deployment_runs_and_sees_it_move_to_token_2(
    serve_app: Callable[..., str], tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    publisher = RecordingPublisher()
    real = start_real_services(serve_app, tmp_path, usage_publisher=publisher)
    now = datetime.now(UTC)
    agent = start_agent(
        agent_args(
            real, tmp_path, "--slot", "2", "--inject-as", "MY_TOKEN",
            "--adopt-window", window(now - timedelta(minutes=1), 30),
        ),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )  # fmt: skip
    first_token_2 = real.tokens()["token_2"]
    wait_until(agent.starts, "the child to start")
    (beat,) = wait_until(lambda: log_lines(agent.stderr(), "heartbeat"), "the first heartbeat")
    assert (beat["token_id"], beat["slot"], beat["environment_id"]) == (
        first_token_2["token_id"],
        2,
        real.environment_id,
    )
    wait_until(
        lambda: "f1-producer" in publisher.deployments(first_token_2["token_id"]), "usage by deployment"
    )

    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")
    after = real.rotate()
    wait_until(lambda: agent.starts()[1:], "the adoption restart")
    new_id = after["token_2"]["token_id"]
    moved = wait_until(
        lambda: [b for b in log_lines(agent.stderr(), "heartbeat") if b["token_id"] == new_id],
        "a heartbeat on the new Token 2",
    )
    assert moved[0]["slot"] == 2
    wait_until(lambda: "f1-producer" in publisher.deployments(new_id), "usage of the new Token 2")
    for token in (first_token_2["token"], after["token_2"]["token"], after["token_1"]["token"]):
        assert token not in agent.stderr()


def test_a_heartbeat_on_token_1_makes_the_agent_adopt_without_a_webhook(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    # No subscription (--no-subscribe): the resolver's "slot 1" is how the agent learns of the rotation.
    agent = start_agent(
        agent_args(real, tmp_path, "--slot", "2", "--inject-as", "MY_TOKEN", "--no-subscribe",
                   "--adopt", "restart", "--heartbeat-interval", "0.3"),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )  # fmt: skip
    wait_until(lambda: log_lines(agent.stderr(), "heartbeat"), "the first heartbeat")
    after = real.rotate()
    second = wait_until(lambda: agent.starts()[1:], "the adoption restart")[0]
    assert second["token"] == after["token_2"]["token"]
    assert log_lines(agent.stderr(), "child_on_token_1")


def test_a_resolver_without_the_route_is_told_once_and_not_asked_again(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    # The issuer has no /v1/heartbeat: a 404, as from a resolver older than the route.
    args = agent_args(real, tmp_path, "--heartbeat-interval", "0.2")
    args[args.index("--portal-url") + 1] = real.issuer_url
    agent = start_agent(args)
    wait_until(agent.starts, "the child to start")
    wait_until(lambda: log_lines(agent.stderr(), "heartbeat_unsupported"), "the one line")
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")
    assert len(log_lines(agent.stderr(), "heartbeat_unsupported")) == 1
    assert log_lines(agent.stderr(), "heartbeat_failed") == []
    token_1 = real.tokens()["token_1"]["token"]  # the child's token: this test's heartbeats alone
    assert real.issuer_observed.count("POST", "/v1/heartbeat", token_1) == 1
