"""``streamtoken broker``: the local broker in the foreground (Apache Kafka by default, or Tansu)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import typer

from cli.dev import NO_ENFORCEMENT, default_broker_kind, service_environments, start_broker
from shared.broker import DEFAULT_PORT, BrokerError
from shared.kafka_broker import ApacheKafkaBroker


def register(app: typer.Typer) -> None:
    app.command("broker")(broker)


def broker(
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="port to listen on (127.0.0.1)"),
    broker_kind: str = typer.Option(
        None,
        "--broker",
        help="kafka (Apache Kafka: TLS, SCRAM, ACLs) or embedded (Tansu: enforces nothing); default kafka "
        "where Java 17+ is installed",
        show_default=False,
    ),
    data_dir: Path = typer.Option(Path(".streamtoken"), help="Apache Kafka keeps its data in DATA_DIR/kafka"),
) -> None:
    """Run the broker on 127.0.0.1 until Ctrl-C."""
    kind = broker_kind or default_broker_kind()
    try:
        running = start_broker(kind, port, data_dir.resolve(), None, lambda m: typer.echo(m, err=True))
        service_environments(running)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    def _stop(signum: int, _: FrameType | None) -> None:
        running.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if isinstance(running, ApacheKafkaBroker):
        typer.echo(
            f"Apache Kafka {running.version} listening on {running.bootstrap_servers} "
            "(SASL_SSL + SCRAM, ACLs; "
            f"CA {running.ca_path}; service passwords in {running.data_dir / 'credentials.json'}; "
            "Ctrl-C stops it)"
        )
    else:
        typer.echo(
            f"embedded broker listening on {running.bootstrap_servers} (memory storage; Ctrl-C stops it)"
        )
        typer.echo(NO_ENFORCEMENT, err=True)
    sys.exit(running.wait())
