"""Adopting the new Token 2 (``--adopt``): a real ``streamtoken run`` with a real child, after a rotation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.agent.conftest import (
    RunningAgent,
    alive,
    issuer_args,
    wait_until,
)
from tests.integration.agent.stand_ins import IssuerStandIn, NotifierStandIn

Stack = tuple[IssuerStandIn, NotifierStandIn, str, str]


def log_lines(agent: RunningAgent, event: str) -> list[dict[str, Any]]:
    lines = []
    for line in agent.stderr().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                lines.append(record)
    return lines


def window(start: datetime, minutes: int) -> str:
    return f"{start:%H:%M}-{start + timedelta(minutes=minutes):%H:%M}"


def zero_downtime(issuer_url: str, notifier_url: str, *more: str) -> list[str]:
    return issuer_args(issuer_url, notifier_url, "--slot", "2", "--inject-as", "MY_TOKEN", *more)


def test_adoption_inside_the_window_restarts_the_child_once_onto_the_new_token_2(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    now = datetime.now(UTC)
    agent = start_agent(
        zero_downtime(issuer_url, notifier_url, "--adopt-window", window(now - timedelta(minutes=1), 30)),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    assert first["token"] == issuer.token_2.token
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")

    issuer.rotate()  # the child's token is now Token 1
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    wait_until(lambda: agent.records("hup"), "the child to get SIGHUP (the rotation, without downtime)")
    second = wait_until(lambda: agent.starts()[1:], "the adoption restart")[0]
    assert second["token"] == issuer.token_2.token  # the new Token 2
    assert second["pid"] != first["pid"]
    assert not alive(first["pid"])
    assert [r["event"] for r in agent.records()] == ["start", "hup", "term", "start"]  # graceful
    assert notifier.acks == [(sub.id, 2, issuer.token_2.token)]  # the rotation, acknowledged once
    (scheduled,) = log_lines(agent, "adoption_scheduled")
    assert scheduled["token_id"] == issuer.token_2.token_id
    assert [r["reason"] for r in log_lines(agent, "restarting_child")] == ["adopt"]
    assert issuer.token_2.token not in agent.stderr()


def test_adoption_outside_the_window_waits_for_it(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    opens = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
    agent = start_agent(
        zero_downtime(issuer_url, notifier_url, "--adopt-window", window(opens, 60)),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    issuer.rotate()
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    (scheduled,) = wait_until(lambda: log_lines(agent, "adoption_scheduled"), "the adoption to be scheduled")
    assert datetime.fromisoformat(scheduled["at"]) == opens  # at the window's start, not now
    assert scheduled["window"] == f"{window(opens, 60)} UTC"
    wait_until(lambda: notifier.acks, "the acknowledgement")
    assert len(agent.starts()) == 1
    assert alive(first["pid"])
    assert log_lines(agent, "restarting_child") == []


def test_without_a_window_the_default_is_not_to_restart_and_to_say_so(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    agent = start_agent(zero_downtime(issuer_url, notifier_url), {"CHILD_TOKEN_VAR": "MY_TOKEN"})
    first = wait_until(agent.starts, "the child to start")[0]
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    assert "--slot 2 without adoption" in agent.stderr()
    issuer.rotate()
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    (warning,) = wait_until(lambda: log_lines(agent, "token_not_adopted"), "the warning")
    assert warning["token_id"] == issuer.token_2.token_id
    wait_until(lambda: notifier.acks, "the acknowledgement")
    assert log_lines(agent, "adoption_scheduled") == []
    assert len(agent.starts()) == 1
    assert alive(first["pid"])


def test_adopt_reload_needs_a_token_file_and_slot_2(
    stack: Stack, start_agent: Callable[..., RunningAgent]
) -> None:
    _, _, issuer_url, notifier_url = stack
    agent = start_agent(zero_downtime(issuer_url, notifier_url, "--adopt", "reload"))
    assert agent.wait_exit() == 2
    assert "--adopt reload hands the child the new token through --token-file-out" in agent.stderr()
    agent = start_agent(issuer_args(issuer_url, notifier_url, "--adopt", "restart"))
    assert agent.wait_exit() == 2
    assert "it needs --environment with --slot 2" in agent.stderr()
    agent = start_agent(zero_downtime(issuer_url, notifier_url, "--adopt-window", "25:00-26:00"))
    assert agent.wait_exit() == 2
    assert "is not a window" in agent.stderr() or "hour must be in" in agent.stderr()
