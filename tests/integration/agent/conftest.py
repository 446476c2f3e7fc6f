"""The harness of the agent's process tests: a real ``streamtoken run`` with a real child (child_app.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests.integration.agent.real_services import RealServices, RealStack, real_stack_on_loopback

REPO = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("child_app.py")
WAIT = 20.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return support.wait_until(predicate, timeout, what)


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
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    started: list[RunningAgent] = []

    def start(
        args: list[str],
        child_env: dict[str, str] | None = None,
        *,
        user: int | None = None,
        logs: Path | None = None,
        child_python: str = sys.executable,
        entry: tuple[str, ...] = ("-m", "cli.main", "run"),
        **extra_env: str,
    ) -> RunningAgent:
        n = len(started)
        child_log = (logs or tmp_path) / f"child-{n}.jsonl"
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
            as_user = (
                [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
            )
            process = subprocess.Popen(
                [*as_user, sys.executable, *entry, *args, "--", child_python, str(CHILD)],
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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """The real issuer, resolver and notifier, without Kafka (``real_services.py``), one stack per module:
    each test gets an environment of its own on it (``real``)."""
    with real_stack_on_loopback(tmp_path_factory.mktemp("real-stack")) as stack:
        yield stack


@pytest.fixture
def real(real_stack: RealStack) -> RealServices:
    """A new environment on the module's real services: its tokens, rotations, subscriptions and
    acknowledgements are this test's alone."""
    return real_stack.environment()
