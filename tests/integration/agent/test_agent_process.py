"""``streamtoken run`` as a real process, with a real child and loopback stand-ins for issuer and notifier."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.tokens import generate_token
from tests.integration.agent.stand_ins import IssuerStandIn, NotifierStandIn

REPO = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("child_app.py")
WAIT = 20.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    child_log: Path
    stderr_path: Path

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.child_log.exists():
            return []
        lines = [json.loads(line) for line in self.child_log.read_text().splitlines() if line.strip()]
        return [r for r in lines if event is None or r["event"] == event]

    def starts(self) -> list[dict[str, Any]]:
        return self.records("start")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)


@pytest.fixture
def stack(serve_app: Callable[..., str]) -> tuple[IssuerStandIn, NotifierStandIn, str, str]:
    issuer = IssuerStandIn()
    notifier = NotifierStandIn(issuer)
    return issuer, notifier, serve_app(issuer.app()), serve_app(notifier.app())


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    started: list[RunningAgent] = []

    def start(args: list[str], child_env: dict[str, str] | None = None, **extra_env: str) -> RunningAgent:
        n = len(started)
        child_log = tmp_path / f"child-{n}.jsonl"
        stderr_path = tmp_path / f"agent-{n}.err"
        env = {
            **os.environ,
            "CHILD_LOG": str(child_log),
            "STREAMTOKEN_LOG_JSON": "true",
            "PYTHONPATH": str(REPO),
            **(child_env or {}),
            **extra_env,
        }
        with stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "run", *args, "--", sys.executable, str(CHILD)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        agent = RunningAgent(process, child_log, stderr_path)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
            try:
                agent.process.wait(10)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
        for record in agent.records():
            with suppress(ProcessLookupError, PermissionError):
                os.kill(record["pid"], signal.SIGKILL)


def issuer_args(issuer_url: str, notifier_url: str, *more: str) -> list[str]:
    return [
        "--issuer-url", issuer_url, "--pat", "pat-admin", "--environment", "acme-telemetry-dev",
        "--notifier-url", notifier_url, "--portal-url", "http://127.0.0.1:1/portal",
        "--deployment-id", "f1-producer", *more,
    ]  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restart_webhook_restarts_the_child_with_the_new_token_1_and_acks(
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    agent = start_agent(issuer_args(issuer_url, notifier_url, "--stop-timeout", "5"))
    first = wait_until(agent.starts, "the child to start")[0]
    assert first["token"] == issuer.token_1.token
    assert first["portal"] == "http://127.0.0.1:1/portal"
    assert first["pat"] is None  # the agent's PAT never reaches the child
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    assert (sub.deployment_id, sub.action) == ("f1-producer", "restart")

    issuer.rotate()
    payload = notifier.payload(sub)
    assert notifier.send(sub, payload, webhook_id="msg_rot2").status_code == 202
    assert notifier.send(sub, payload, webhook_id="msg_rot2").status_code == 202  # a retry: applied once

    second = wait_until(lambda: agent.starts()[1:], "the child to restart")[0]
    assert second["token"] == issuer.token_1.token  # the new Token 1, which was Token 2
    assert second["pid"] != first["pid"]
    assert not alive(first["pid"])
    assert [r["event"] for r in agent.records()][:3] == ["start", "term", "start"]  # stopped gracefully
    wait_until(lambda: notifier.acks, "the acknowledgement")
    assert notifier.acks == [(sub.id, 2, issuer.token_1.token)]
    time.sleep(0.5)
    assert len(agent.starts()) == 2  # the duplicate delivery did not restart it again

    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert notifier.deleted == [sub.id]
    stderr = agent.stderr()
    for token in (first["token"], second["token"], issuer.token_2.token):
        assert token not in stderr
    assert '"generation": 2' in stderr


def test_reload_with_a_signal_keeps_the_child_running(
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    agent = start_agent(
        issuer_args(issuer_url, notifier_url, "--slot", "2", "--inject-as", "MY_TOKEN"),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    old_token_2 = issuer.token_2.token
    assert first["token"] == old_token_2
    assert first["sdk_token"] is None  # --inject-as puts it in MY_TOKEN instead
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    assert sub.action == "reload"

    issuer.rotate()
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    wait_until(lambda: agent.records("hup"), "the child to get SIGHUP")
    wait_until(lambda: notifier.acks, "the acknowledgement")
    assert notifier.acks == [(sub.id, 2, issuer.token_2.token)]
    assert len(agent.starts()) == 1
    assert alive(first["pid"])
    assert old_token_2 == issuer.token_1.token  # what the child holds is still valid: no downtime


def test_reload_with_a_token_file_rewrites_it_atomically(
    tmp_path: Path,
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str],
    start_agent: Callable[..., RunningAgent],
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    token_file = tmp_path / "secrets" / "token"
    agent = start_agent(
        issuer_args(
            issuer_url, notifier_url, "--slot", "2", "--action", "reload", "--token-file-out", str(token_file)
        ),
        {"CHILD_TOKEN_FILE": str(token_file)},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    assert first["file_token"] == issuer.token_2.token
    assert first["sdk_token"] == issuer.token_2.token
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")

    issuer.rotate()
    assert notifier.send(sub, notifier.payload(sub)).status_code == 202
    wait_until(lambda: notifier.acks, "the acknowledgement")
    assert token_file.read_text().strip() == issuer.token_2.token  # the new Token 2
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["token"]
    assert agent.records("hup") == []  # with a token file, no signal unless asked
    assert len(agent.starts()) == 1
    assert alive(first["pid"])


def test_bad_signatures_are_refused(
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    issuer, notifier, issuer_url, notifier_url = stack
    agent = start_agent(issuer_args(issuer_url, notifier_url))
    wait_until(agent.starts, "the child to start")
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    issuer.rotate()
    payload = notifier.payload(sub)
    other_secret = "whsec_" + "A" * 32
    assert notifier.send(sub, payload, secret=other_secret).status_code == 401
    assert notifier.send(sub, payload, signature="v1,bm90IGEgc2lnbmF0dXJl").status_code == 401
    assert notifier.send(sub, payload, signature="garbage").status_code == 401
    response = notifier.send(sub, payload, signature="")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_signature"
    time.sleep(0.5)
    assert len(agent.starts()) == 1
    assert notifier.acks == []
    # A correctly signed one still works afterwards.
    assert notifier.send(sub, payload).status_code == 202
    wait_until(lambda: agent.starts()[1:], "the child to restart")


def test_crashed_child_is_restarted_with_backoff(
    tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    counter = tmp_path / "crashes"
    counter.write_text("2")
    agent = start_agent(
        ["--token-env", "DEMO_TOKEN", "--no-subscribe", "--backoff-initial", "0.3"],
        {"CHILD_CRASHES": str(counter)},
        DEMO_TOKEN=generate_token(),
    )
    starts = wait_until(lambda: agent.starts()[2:] and agent.starts(), "the third start")
    assert [r["event"] for r in agent.records()][:5] == ["start", "crash", "start", "crash", "start"]
    crashes = agent.records("crash")
    gap_1 = starts[1]["t"] - crashes[0]["t"]
    gap_2 = starts[2]["t"] - crashes[1]["t"]
    assert gap_1 >= 0.3
    assert gap_2 >= 0.6  # the delay doubled
    assert agent.process.poll() is None
    assert '"event": "child_crashed"' in agent.stderr()


def test_sigterm_stops_the_child_and_the_agent_exits_with_its_status(
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    _, notifier, issuer_url, notifier_url = stack
    agent = start_agent(issuer_args(issuer_url, notifier_url), {"CHILD_TERM_STATUS": "7"})
    child = wait_until(agent.starts, "the child to start")[0]
    sub = wait_until(lambda: notifier.subscriptions and notifier.only_subscription(), "the subscription")
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 7
    assert agent.records("term")
    assert not alive(child["pid"])
    assert notifier.deleted == [sub.id]


def test_a_child_ignoring_sigterm_is_killed_after_the_stop_timeout(
    start_agent: Callable[..., RunningAgent],
) -> None:
    agent = start_agent(
        ["--token-env", "DEMO_TOKEN", "--no-subscribe", "--stop-timeout", "0.5"],
        {"CHILD_IGNORE_TERM": "1"},
        DEMO_TOKEN=generate_token(),
    )
    child = wait_until(agent.starts, "the child to start")[0]
    time.sleep(0.3)  # let the child install its handlers
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 128 + signal.SIGKILL
    assert not alive(child["pid"])


def test_a_refused_pat_is_one_clear_line(
    stack: tuple[IssuerStandIn, NotifierStandIn, str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    _, _, issuer_url, notifier_url = stack
    args = issuer_args(issuer_url, notifier_url)
    args[args.index("pat-admin")] = "pat-wrong"
    agent = start_agent(args)
    assert agent.wait_exit() == 1
    lines = agent.stderr().splitlines()
    assert (
        lines[-1] == "streamtoken run: error: the issuer refused the PAT (401): check --pat / STREAMTOKEN_PAT"
    )
    assert agent.starts() == []
