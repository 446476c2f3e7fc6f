"""``streamtoken broker``: the local broker in the foreground (Apache Kafka by default, or Tansu)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from cli.common import EXIT_REFUSED
from cli.dev import (
    NO_ENFORCEMENT,
    BrokerKind,
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
    out: Annotated[Path, typer.Option("--out", help="directory to write the broker's configuration into")],
    host: Annotated[
        str, typer.Option("--host", help="the broker's host name (TLS certificate, listeners)")
    ] = "kafka",
    port: Annotated[int, typer.Option("--port", help="the SASL_SSL client listener")] = 9092,
    controller_port: Annotated[int, typer.Option("--controller-port", help="the controller listener")] = 9093,
) -> None:
    """Render Apache Kafka's server.properties (the template the local stack and tests use), development TLS
    and the format arguments into OUT (what docker-compose.yml's kafka container runs)."""
    from shared.kafka_broker import render_compose_config

    path = render_compose_config(out, host, port, controller_port)
    typer.echo(f"rendered {path} (and TLS, cluster-id, scram-args, admin.properties in {out})")


def grant(
    topic: Annotated[str, typer.Option("--topic", help="the control topic")] = "streaming-tokens",
    notifier_group: Annotated[
        str, typer.Option("--notifier-group", help="the notifier's consumer group")
    ] = "notifier",
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
    port: Annotated[int, typer.Option("--port", "-p", help="port to listen on (127.0.0.1)")] = DEFAULT_PORT,
    broker_kind: Annotated[
        BrokerKind | None,
        typer.Option(
            "--broker",
            help="kafka (Apache Kafka: TLS, SCRAM, ACLs) or embedded (Tansu: enforces nothing); default "
            "kafka where Java 17+ is installed",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Apache Kafka keeps its data in DATA_DIR/kafka")] = Path(
        ".streamtoken"
    ),
) -> None:
    """Run the broker on 127.0.0.1 until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    kind = broker_kind.value if broker_kind is not None else default_broker_kind()
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
