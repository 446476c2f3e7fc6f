"""``streamtoken``: one program for the services, the local stack, management and the deployment agent.

Each part registers its own commands (``cli/<part>.py``); heavy imports happen inside the commands so
``streamtoken --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import agent, broker, dev, issuer, notifier, resolver
from cli.common import EPILOG

app = typer.Typer(
    name="streamtoken",
    help="Streaming tokens on Kafka: issuer, resolver, notifier, the local stack and the deployment agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog=EPILOG,
)


def _print_version(asked: bool) -> None:
    if asked:
        from shared import __version__

        typer.echo(f"streamtoken {__version__}")
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Streaming tokens on Kafka: issuer, resolver, notifier, the local stack and the deployment agent."""


for part in (broker, dev, issuer, resolver, notifier, agent):
    part.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
