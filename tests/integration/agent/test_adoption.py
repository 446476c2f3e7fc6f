"""Adopting the new Token 2 (``--adopt``): a real ``streamtoken run`` with a real child, after a rotation by
the real issuer whose webhook the real notifier delivers (real_services.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.integration.agent.conftest import RunningAgent, alive, wait_until
from tests.integration.agent.real_services import RealServices, agent_args, log_lines


def window(start: datetime, minutes: int) -> str:
    return f"{start:%H:%M}-{start + timedelta(minutes=minutes):%H:%M}"


def zero_downtime(real: RealServices, tmp_path: Path, *more: str) -> list[str]:
    # Heartbeats off: only the rotation's webhook tells the agent (the heartbeat path is test_heartbeat.py).
    return agent_args(
        real, tmp_path, "--slot", "2", "--inject-as", "MY_TOKEN", "--heartbeat-interval", "0", *more
    )


def test_adoption_inside_the_window_restarts_the_child_once_onto_the_new_token_2(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    now = datetime.now(UTC)
    agent = start_agent(
        zero_downtime(real, tmp_path, "--adopt-window", window(now - timedelta(minutes=1), 30)),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    assert first["token"] == real.tokens()["token_2"]["token"]
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")

    after = real.rotate()  # the child's token is now Token 1
    wait_until(lambda: agent.records("hup"), "the child to get SIGHUP (the rotation, without downtime)")
    second = wait_until(lambda: agent.starts()[1:], "the adoption restart")[0]
    assert second["token"] == after["token_2"]["token"]  # the new Token 2
    assert second["pid"] != first["pid"]
    assert not alive(first["pid"])
    assert [r["event"] for r in agent.records()] == ["start", "hup", "term", "start"]  # graceful
    wait_until(lambda: real.acknowledged() == [2], "the rotation, acknowledged")
    (scheduled,) = log_lines(agent.stderr(), "adoption_scheduled")
    assert scheduled["token_id"] == after["token_2"]["token_id"]
    assert [r["reason"] for r in log_lines(agent.stderr(), "restarting_child")] == ["adopt"]
    assert after["token_2"]["token"] not in agent.stderr()


def test_adoption_outside_the_window_waits_for_it(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    opens = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
    agent = start_agent(
        zero_downtime(real, tmp_path, "--adopt-window", window(opens, 60)), {"CHILD_TOKEN_VAR": "MY_TOKEN"}
    )
    first = wait_until(agent.starts, "the child to start")[0]
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")
    real.rotate()
    (scheduled,) = wait_until(
        lambda: log_lines(agent.stderr(), "adoption_scheduled"), "the adoption to be scheduled"
    )
    assert datetime.fromisoformat(scheduled["at"]) == opens  # at the window's start, not now
    assert scheduled["window"] == f"{window(opens, 60)} UTC"
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")
    assert len(agent.starts()) == 1
    assert alive(first["pid"])
    assert log_lines(agent.stderr(), "restarting_child") == []


def test_without_a_window_the_default_is_not_to_restart_and_to_say_so(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(zero_downtime(real, tmp_path), {"CHILD_TOKEN_VAR": "MY_TOKEN"})
    first = wait_until(agent.starts, "the child to start")[0]
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription")
    assert "--slot 2 without adoption" in agent.stderr()
    after = real.rotate()
    (warning,) = wait_until(lambda: log_lines(agent.stderr(), "token_not_adopted"), "the warning")
    assert warning["token_id"] == after["token_2"]["token_id"]
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")
    assert log_lines(agent.stderr(), "adoption_scheduled") == []
    assert len(agent.starts()) == 1
    assert alive(first["pid"])


def test_adoption_options_that_cannot_work_are_one_line_errors(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(zero_downtime(real, tmp_path, "--adopt", "reload"))
    assert agent.wait_exit() == 2
    assert "--adopt reload hands the child the new token through --token-file-out" in agent.stderr()
    agent = start_agent(agent_args(real, tmp_path, "--adopt", "restart"))
    assert agent.wait_exit() == 2
    assert "it needs --environment with --slot 2" in agent.stderr()
    agent = start_agent(zero_downtime(real, tmp_path, "--adopt-window", "25:00-26:00"))
    assert agent.wait_exit() == 2
    assert "--adopt-window/--adopt-after: '25:00-26:00'" in agent.stderr()
