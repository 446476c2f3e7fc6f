"""Heartbeats from a real ``streamtoken run`` to the real resolver (no Kafka: a table filled by the test)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from services.resolver.bootstrap import build_app
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.events import Change, ChangeType, TokenRef, TokenStateChanged
from shared.kafka import KafkaSettings
from shared.tokens import fingerprint
from shared.usage import TokenUsage
from tests.integration.agent.conftest import RunningAgent, issuer_args, wait_until
from tests.integration.agent.stand_ins import IssuerStandIn, NotifierStandIn
from tests.integration.agent.test_adoption import log_lines, window

Stack = tuple[IssuerStandIn, NotifierStandIn, str, str]


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


def token_state(issuer: IssuerStandIn) -> TokenStateChanged:
    """The issuer stand-in's tokens as the event the real issuer publishes to ``streaming-tokens``."""
    org, project, environment = issuer.environment_id.split("-", 2)
    rotated = issuer.generation > 1
    return TokenStateChanged(
        environment_id=issuer.environment_id,
        org=org,
        project=project,
        environment=environment,
        generation=issuer.generation,
        tokens=(
            TokenRef(slot=1, token_id=issuer.token_1.token_id, fingerprint=fingerprint(issuer.token_1.token)),
            TokenRef(slot=2, token_id=issuer.token_2.token_id, fingerprint=fingerprint(issuer.token_2.token)),
        ),
        change=Change(
            type=ChangeType.ROTATED if rotated else ChangeType.CREATED,
            actor="test",
            at=datetime.now(UTC),
            rotation_id=f"rot-{issuer.generation}" if rotated else None,
        ),
    )


@pytest.fixture
def resolver(stack: Stack, serve_app: Callable[..., str]) -> tuple[str, TokenTable, RecordingPublisher]:
    issuer = stack[0]
    table = TokenTable()
    table.apply_event(issuer.environment_id, token_state(issuer))
    publisher = RecordingPublisher()
    settings = ResolverSettings(
        kafka=KafkaSettings(bootstrap_servers="kafka.internal:9092"),
        usage_interval_seconds=1.0,
        usage_tick_seconds=0.1,
    )
    app = build_app(
        settings, table=table, start_replica=False, status=lambda: Status.READY, usage_publisher=publisher
    )
    return serve_app(app), table, publisher


def args(stack: Stack, portal_url: str, *more: str) -> list[str]:
    _, _, issuer_url, notifier_url = stack
    base = issuer_args(issuer_url, notifier_url, *more)
    i = base.index("--portal-url")
    return [*base[:i], "--portal-url", portal_url, *base[i + 2 :]]


def test_the_resolver_learns_which_token_each_deployment_runs_and_sees_it_move_to_token_2(
    stack: Stack,
    resolver: tuple[str, TokenTable, RecordingPublisher],
    start_agent: Callable[..., RunningAgent],
) -> None:
    issuer, notifier, _, _ = stack
    resolver_url, table, publisher = resolver
    now = datetime.now(UTC)
    agent = start_agent(
        args(
            stack, resolver_url, "--slot", "2", "--inject-as", "MY_TOKEN",
            "--adopt-window", window(now - timedelta(minutes=1), 30),
        ),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )  # fmt: skip
    first_token_2 = issuer.token_2
    wait_until(agent.starts, "the child to start")
    (beat,) = wait_until(lambda: log_lines(agent, "heartbeat"), "the first heartbeat")
    assert (beat["token_id"], beat["slot"], beat["environment_id"]) == (
        first_token_2.token_id,
        2,
        issuer.environment_id,
    )
    wait_until(lambda: "f1-producer" in publisher.deployments(first_token_2.token_id), "usage by deployment")

    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    issuer.rotate()
    table.apply_event(issuer.environment_id, token_state(issuer))
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    wait_until(lambda: agent.starts()[1:], "the adoption restart")
    moved = wait_until(
        lambda: [b for b in log_lines(agent, "heartbeat") if b["token_id"] == issuer.token_2.token_id],
        "a heartbeat on the new Token 2",
    )
    assert moved[0]["slot"] == 2
    wait_until(lambda: "f1-producer" in publisher.deployments(issuer.token_2.token_id), "usage of Token 2")
    for token in (first_token_2.token, issuer.token_2.token, issuer.token_1.token):
        assert token not in agent.stderr()


def test_a_heartbeat_on_token_1_makes_the_agent_adopt_without_a_webhook(
    stack: Stack,
    resolver: tuple[str, TokenTable, RecordingPublisher],
    start_agent: Callable[..., RunningAgent],
) -> None:
    # The rotation's webhook never arrives (--no-subscribe): the resolver's "slot 1" is how the agent learns.
    issuer, _, _, _ = stack
    resolver_url, table, _ = resolver
    agent = start_agent(
        args(stack, resolver_url, "--slot", "2", "--inject-as", "MY_TOKEN", "--no-subscribe",
             "--adopt", "restart", "--heartbeat-interval", "0.3"),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )  # fmt: skip
    wait_until(lambda: log_lines(agent, "heartbeat"), "the first heartbeat")
    issuer.rotate()
    table.apply_event(issuer.environment_id, token_state(issuer))
    second = wait_until(lambda: agent.starts()[1:], "the adoption restart")[0]
    assert second["token"] == issuer.token_2.token
    assert log_lines(agent, "child_on_token_1")


def test_a_resolver_without_the_route_is_told_once_and_not_asked_again(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    # The issuer stand-in has no /v1/heartbeat: a 404, as from a resolver older than the route.
    _, notifier, issuer_url, _ = stack
    agent = start_agent(args(stack, issuer_url, "--heartbeat-interval", "0.2"))
    wait_until(agent.starts, "the child to start")
    wait_until(lambda: log_lines(agent, "heartbeat_unsupported"), "the one line")
    wait_until(lambda: notifier.subscriptions, "the subscription")
    assert len(log_lines(agent, "heartbeat_unsupported")) == 1
    assert log_lines(agent, "heartbeat_failed") == []
