"""``streamtoken dev``: no process left behind, and the demo's issuer calls against a stand-in issuer."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil
import pytest

from cli.dev import SERVICE_PORTS, Child, DemoError, Stack, available_services, create_demo_data
from services.agent.adapters.issuer import IssuerClient
from shared.broker import free_port
from tests.integration.agent.real_services import start_real_services

REPO = Path(__file__).resolve().parents[3]

# A parent that starts a grandchild in a session of its own, as the agent does with its deployment.
SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    grandchild = subprocess.Popen(sleeper, start_new_session=True)
    print(grandchild.pid, flush=True)
    time.sleep(120)
    """
)


def test_stack_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    out = tmp_path / "spawner.out"
    stack = Stack(broker=None)
    stack.start_child(Child("spawner", [sys.executable, "-c", SPAWNER], None, stdout=out))
    deadline = time.monotonic() + 20
    while not out.read_text().strip():
        assert time.monotonic() < deadline, "the spawner did not start its grandchild"
        time.sleep(0.05)
    grandchild = int(out.read_text().split()[0])
    spawner = stack.children[0].process
    assert spawner is not None
    assert psutil.pid_exists(grandchild)
    assert os.getpgid(spawner.pid) == spawner.pid  # its own process group
    stack.stop(timeout=5)
    assert spawner.poll() is not None
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_demo_data_is_created_once_and_read_back_on_a_second_run(
    serve_app: Callable[..., str], tmp_path: Path
) -> None:
    real = start_real_services(serve_app, tmp_path)  # the real issuer; acme-telemetry-dev exists already
    admin_pat = real.issuer_app.issue_pat("demo-admin", "admin", actor="test")[1]
    first = create_demo_data(real.issuer_url, admin_pat)
    assert first.environments == ["acme-telemetry-dev", "acme-telemetry-prod"]
    assert first.tokens["token_1"]["token"] == real.tokens()["token_1"]["token"]
    again = create_demo_data(real.issuer_url, admin_pat)  # the environments exist: 409, then read
    assert again.environments == first.environments
    with pytest.raises(DemoError, match="401"):
        create_demo_data(real.issuer_url, "wrong-pat")
    client = IssuerClient(real.issuer_url, admin_pat)  # the one issuer client the agent and `dev` share
    created = asyncio.run(client.ensure_environment("acme", "telemetry", "dev"))
    assert created["id"] == "acme-telemetry-dev"


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """Lines of ``stream`` read by a thread, so the test can wait for them with a deadline (None: EOF)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_dev_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """Every service present in the tree must come up (issuer now; resolver and notifier once merged)."""
    expected = available_services()  # those whose services.<name>.__main__ exists
    assert set(expected) <= set(SERVICE_PORTS)
    args = [
        sys.executable, "-m", "cli.main", "dev", "--no-demo",
        "--kafka-port", str(free_port()), "--issuer-port", str(free_port()),
        "--resolver-port", str(free_port()), "--notifier-port", str(free_port()),
        "--data-dir", str(tmp_path / "data"), "--ready-timeout", "60",
    ]  # fmt: skip
    process = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    seen: set[int] = set()
    try:
        assert process.stdout is not None
        incoming = _lines(process.stdout)
        deadline = time.monotonic() + 120
        while not any("Ctrl-C stops it all" in line for line in lines):
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the stack:\n" + "".join(lines)
            try:
                line = incoming.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            assert line is not None, "streamtoken dev ended early:\n" + "".join(lines)
            lines.append(line)
            seen.update(p.pid for p in psutil.Process(process.pid).children(recursive=True))
        output = "".join(lines)
        assert any("kafka" in line for line in lines), output
        for name in expected:
            assert re.search(rf"^  {name} +http://127\.0\.0\.1:\d+ ready in ", output, re.M), output
        assert "error:" not in output, output
        seen.update(p.pid for p in psutil.Process(process.pid).children(recursive=True))
        assert len(seen) >= 1 + len(expected), "the broker and every service should be running"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        rest = []
        while (line := incoming.get(timeout=10)) is not None:
            rest.append(line)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, "".join(lines + rest)
    assert "stopped." in "".join(rest)
    alive = [
        pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
