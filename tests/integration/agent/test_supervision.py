"""``streamtoken dev`` and ``streamtoken broker`` supervise what they started (issue 10): a process that dies
is named with the reason and started again with back-off, and Ctrl-C / SIGTERM still stop everything."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from shared.broker import free_port
from tests.integration.agent.test_dev_stack import REPO, _lines


def _wait_line(incoming: queue.Queue[str | None], lines: list[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in lines:
            if needle in line:
                return line
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {needle!r}:\n" + "".join(lines[-40:])
        try:
            read = incoming.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        assert read is not None, f"ended before {needle!r}:\n" + "".join(lines[-40:])
        lines.append(read)


def _child(parent: int, marker: str) -> psutil.Process:
    for process in psutil.Process(parent).children(recursive=True):
        try:
            if marker in " ".join(process.cmdline()):
                return process
        except psutil.Error:
            continue
    raise AssertionError(f"no child process with {marker!r}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _stop(process: subprocess.Popen[str], seen: set[int]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    alive = [
        pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []


def test_dev_restarts_a_service_and_the_broker_that_died(tmp_path: Path) -> None:
    resolver_port, kafka_port = free_port(), free_port()
    args = [
        sys.executable, "-m", "cli.main", "dev", "--no-demo", "--broker", "embedded",
        "--kafka-port", str(kafka_port), "--issuer-port", str(free_port()),
        "--resolver-port", str(resolver_port), "--notifier-port", str(free_port()),
        "--data-dir", str(tmp_path / "data"), "--ready-timeout", "60",
    ]  # fmt: skip
    process = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert process.stdout is not None
    incoming = _lines(process.stdout)
    lines: list[str] = []
    seen: set[int] = set()
    try:
        _wait_line(incoming, lines, "Ctrl-C stops it all", 120)
        resolver = _child(process.pid, "services.resolver")
        seen.update(p.pid for p in psutil.Process(process.pid).children(recursive=True))
        resolver.kill()
        said = _wait_line(incoming, lines, "error: resolver exited", 30)
        assert "killed by SIGKILL" in said
        assert "restarting it in" in said
        _wait_line(incoming, lines, "resolver  restarted", 60)
        url = f"http://127.0.0.1:{resolver_port}"
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert time.monotonic() < deadline, "the restarted resolver never became ready"
            time.sleep(0.5)
        assert _child(process.pid, "services.resolver").pid != resolver.pid

        broker = _child(process.pid, "tansu")
        broker.kill()
        said = _wait_line(incoming, lines, "error: the broker exited", 30)
        assert "killed by SIGKILL" in said
        _wait_line(incoming, lines, f":{kafka_port} restarted", 60)
        assert _child(process.pid, "tansu").pid != broker.pid
        seen.update(p.pid for p in psutil.Process(process.pid).children(recursive=True))
    finally:
        _stop(process, seen)


def test_broker_command_restarts_its_broker_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "broker", "--broker", "embedded", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    incoming = _lines(process.stdout)
    lines: list[str] = []
    try:
        _wait_line(incoming, lines, "listening on", 60)
        broker = _child(process.pid, "tansu")
        broker.kill()
        _wait_line(incoming, lines, "error: the broker exited (killed by SIGKILL)", 30)
        _wait_line(incoming, lines, "restarted", 60)
        replacement = _child(process.pid, "tansu")
        assert replacement.pid != broker.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not psutil.pid_exists(replacement.pid) or replacement.status() == psutil.STATUS_ZOMBIE
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
