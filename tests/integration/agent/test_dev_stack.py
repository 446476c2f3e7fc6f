"""``streamtoken dev``: no process left behind, and the demo's issuer calls against a stand-in issuer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from cli.dev import Child, DemoError, Stack, create_demo_data, ensure_environment
from shared.broker import free_port
from tests.integration.agent.stand_ins import IssuerStandIn

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


def test_demo_data_is_created_once_and_read_back_on_a_second_run(serve_app: Callable[..., str]) -> None:
    issuer = IssuerStandIn(environment_id="acme-telemetry-dev")
    url = serve_app(issuer.app())
    first = create_demo_data(url, issuer.pat)
    assert first.environments == ["acme-telemetry-dev", "acme-telemetry-prod"]
    assert first.tokens["token_1"]["token"] == issuer.token_1.token
    again = create_demo_data(url, issuer.pat)  # the environments exist: 409, then read
    assert again.environments == first.environments
    with pytest.raises(DemoError, match="401"):
        create_demo_data(url, "wrong-pat")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {issuer.pat}"}) as client:
        assert ensure_environment(client, "acme", "telemetry", "dev")["id"] == "acme-telemetry-dev"


def test_dev_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """Works with whatever services are present (none on the agent branch, all three once merged)."""
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
        deadline = time.monotonic() + 120
        for line in process.stdout:
            lines.append(line)
            for proc in psutil.Process(process.pid).children(recursive=True):
                seen.add(proc.pid)
            if "Ctrl-C stops it all" in line or time.monotonic() > deadline:
                break
        assert any("kafka" in line for line in lines), "".join(lines)
        assert any("Ctrl-C stops it all" in line for line in lines), "".join(lines)
        seen.update(p.pid for p in psutil.Process(process.pid).children(recursive=True))
        assert seen, "the broker should be running"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopped." in rest
    alive = [
        pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
