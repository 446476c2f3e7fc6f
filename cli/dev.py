"""``streamtoken dev``: the whole local stack in one foreground process group.

Starts the embedded broker, then each service as a child process, waits until each answers
``/health/ready``, and on Ctrl-C (or SIGTERM) stops every child it started, leaving no process behind.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import typer

from shared.broker import DEFAULT_PORT, BrokerError, EmbeddedBroker

SERVICE_PORTS = {"issuer": 8001, "resolver": 8002, "notifier": 8003}


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


class Stack:
    """Children started in order, each waited for, all stopped together."""

    def __init__(self, broker: EmbeddedBroker | None) -> None:
        self.broker = broker
        self.children: list[Child] = []

    def start_child(self, child: Child, timeout: float = 60.0) -> None:
        env = {**os.environ, **child.env}
        child.process = subprocess.Popen(child.argv, env=env)
        self.children.append(child)
        if child.ready_url:
            wait_ready(child, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.process and c.process.poll() is not None), None)


def wait_ready(child: Child, timeout: float) -> None:
    import httpx

    assert child.process is not None
    assert child.ready_url is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.process.returncode} while starting")
        try:
            if httpx.get(child.ready_url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} was not ready at {child.ready_url} after {timeout:g} s")


def available_services() -> list[str]:
    return [
        name for name in SERVICE_PORTS if importlib.util.find_spec(f"services.{name}.__main__") is not None
    ]


def register(app: typer.Typer) -> None:
    app.command("dev")(dev)


def dev(
    kafka_port: int = typer.Option(DEFAULT_PORT, help="port of the embedded broker"),
    data_dir: Path = typer.Option(Path(".streamtoken"), help="where the SQLite databases and keys live"),
    demo: bool = typer.Option(
        False, "--demo/--no-demo", help="create demo environments and a sample deployment"
    ),
) -> None:
    """Run the embedded broker and every service in the foreground until Ctrl-C."""
    broker = EmbeddedBroker(port=kafka_port)
    try:
        broker.start()
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    stack = Stack(broker)
    stopping = False

    def _stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    typer.echo(f"broker    kafka://{broker.bootstrap_servers} (embedded, memory storage)")
    data_dir.mkdir(parents=True, exist_ok=True)
    common = {"STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "STREAMTOKEN_ENV": "dev"}
    try:
        for name in available_services():
            port = SERVICE_PORTS[name]
            child = Child(
                name,
                [sys.executable, "-m", f"services.{name}"],
                f"http://127.0.0.1:{port}/health/ready",
                env={**common, "STREAMTOKEN_DATA_DIR": str(data_dir.resolve())},
            )
            stack.start_child(child)
            typer.echo(f"{name:<9} http://127.0.0.1:{port} (ready)")
        typer.echo("Everything is up. Ctrl-C stops it all.")
        while not stopping:
            exited = stack.first_exited()
            if exited is not None:
                typer.echo(f"error: {exited.name} exited unexpectedly; stopping the stack", err=True)
                break
            time.sleep(0.2)
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        stack.stop()
        raise typer.Exit(1) from None
    finally:
        typer.echo("stopping...")
        stack.stop()
