"""``streamtoken broker``: the embedded Kafka-compatible broker in the foreground."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import typer

from shared.broker import DEFAULT_PORT, BrokerError, EmbeddedBroker


def register(app: typer.Typer) -> None:
    app.command("broker")(broker)


def broker(
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="port to listen on (127.0.0.1)"),
) -> None:
    """Run the embedded broker (Tansu, memory storage) on 127.0.0.1 until Ctrl-C."""
    embedded = EmbeddedBroker(port=port)
    try:
        embedded.start()
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    def _stop(signum: int, _: FrameType | None) -> None:
        embedded.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    typer.echo(f"embedded broker listening on {embedded.bootstrap_servers} (memory storage; Ctrl-C stops it)")
    sys.exit(embedded.wait())
