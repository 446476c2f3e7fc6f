import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.broker import BrokerError, EmbeddedBroker, find_binary, free_port

CLI = [sys.executable, "-m", "cli.main"]


def test_broker_starts_accepts_connections_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(port=free_port()).start()
    pid = broker.pid
    try:
        with socket.create_connection(("127.0.0.1", broker.port), timeout=1):
            pass
    finally:
        broker.stop()
    assert pid is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=0.5)


def test_taken_port_is_one_clear_sentence() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError, match=rf"Port {port} on 127.0.0.1 is already in use"):
            EmbeddedBroker(port=port).start()


def test_missing_binary_names_the_remedy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMTOKEN_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match=r"STREAMTOKEN_TANSU_BIN=.* is not an executable file"):
        find_binary()


def test_cli_broker_on_taken_port_prints_one_sentence_and_exits_non_zero() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [*CLI, "broker", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: Port {port} on 127.0.0.1 is already in use; stop whatever listens there or pick "
        "another port (--port)."
    ]


def test_cli_broker_without_binary_prints_one_sentence_and_exits_non_zero(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "STREAMTOKEN_TANSU_BIN": str(tmp_path / "missing-tansu")}
    result = subprocess.run(
        [*CLI, "broker", "--broker", "embedded", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: STREAMTOKEN_TANSU_BIN=")
