"""``streamtoken broker``: the local broker in the foreground (Apache Kafka by default, or Tansu)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import typer

from cli.common import EXIT_REFUSED
from cli.dev import (
    NO_ENFORCEMENT,
    Stack,
    default_broker_kind,
    service_environments,
    start_broker,
    supervise,
)
from shared.broker import DEFAULT_PORT, BrokerError
from shared.kafka_broker import ApacheKafkaBroker


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The local broker (Apache Kafka by default, or Tansu), and its configuration for compose.",
        no_args_is_help=False,
    )
    group.callback(invoke_without_command=True)(broker)
    group.command("render")(render)
    group.command("grant")(grant)
    app.add_typer(group, name="broker")


def render(
    out: Path = typer.Option(..., "--out", help="directory to write the broker's configuration into"),
    host: str = typer.Option("kafka", "--host", help="the broker's host name (TLS certificate, listeners)"),
    port: int = typer.Option(9092, "--port", help="the SASL_SSL client listener"),
    controller_port: int = typer.Option(9093, "--controller-port", help="the controller listener"),
) -> None:
    """Render Apache Kafka's server.properties (the template the local stack and tests use), development TLS
    and the format arguments into OUT (what docker-compose.yml's kafka container runs)."""
    from shared.kafka_broker import render_compose_config

    path = render_compose_config(out, host, port, controller_port)
    typer.echo(f"rendered {path} (and TLS, cluster-id, scram-args, admin.properties in {out})")


def grant(
    topic: str = typer.Option("streaming-tokens", "--topic", help="the control topic"),
    notifier_group: str = typer.Option("notifier", "--notifier-group", help="the notifier's consumer group"),
) -> None:
    """Give the issuer, resolver and notifier principals their least-privilege ACLs, connecting with the
    STREAMTOKEN_KAFKA_* settings of a super user (idempotent)."""
    from shared.broker_access import service_grants
    from shared.kafka import KafkaSettings
    from shared.kafka_broker import create_grants

    grants = service_grants(topic, notifier_group)
    try:
        create_grants(KafkaSettings(), grants)
    except Exception as exc:
        typer.echo(
            f"error: the broker refused the grants ({str(exc)[:200]}); connect as a super user", err=True
        )
        raise typer.Exit(EXIT_REFUSED) from None
    typer.echo(f"granted {len(grants)} ACLs to the issuer, resolver and notifier principals on {topic}")


def broker(
    ctx: typer.Context,
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
    if ctx.invoked_subcommand is not None:
        return
    kind = broker_kind or default_broker_kind()
    try:
        running = start_broker(kind, port, data_dir.resolve(), None, lambda m: typer.echo(m, err=True))
        service_environments(running)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    stopping = False

    def _stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

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
    try:
        supervise(Stack(running), set(), lambda: stopping, None)  # restarts the broker if it dies
    finally:
        running.stop()
    typer.echo("broker stopped", err=True)
