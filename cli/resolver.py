"""`streamtoken resolver` (serve) and `streamtoken topics resolve NAME` (ask a resolver for a topic id)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import fail, fail_call, print_json

topics = typer.Typer(help="Topic names and ids of an environment.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("resolver")(resolver)
    app.add_typer(topics, name="topics")


def resolver(
    host: Annotated[
        str | None, typer.Option("--host", help="address to listen on [STREAMTOKEN_RESOLVER_HOST]")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="port [STREAMTOKEN_RESOLVER_PORT, 8002]")
    ] = None,
) -> None:
    """Run the resolver (token lookups and the Quix Portal API) in the foreground."""
    from services.resolver.__main__ import main

    main(host, port)


@topics.command("resolve")
def resolve(
    name: Annotated[str, typer.Argument(help="short topic name, e.g. f1-data")],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="Quix__Sdk__Token",
            help="streaming token [env Quix__Sdk__Token]",
            show_default=False,
        ),
    ],
    resolver_url: Annotated[
        str, typer.Option("--resolver-url", envvar="STREAMTOKEN_RESOLVER_URL", help="resolver base URL")
    ] = "http://127.0.0.1:8002",
    as_json: Annotated[bool, typer.Option("--json", help="print the resolver's JSON answer")] = False,
) -> None:
    """Print the environment's topic id for NAME, as the resolver answers it."""
    from shared.client import ApiCallError, ResolverClient

    if not name:
        fail("NAME must not be empty", 2)
    with ResolverClient(resolver_url, bearer=token) as client:
        try:
            answer = client.topic(name)
        except ApiCallError as exc:
            fail_call(exc)
    if as_json:
        print_json(answer.model_dump(mode="json"))
    else:
        typer.echo(answer.topic_id)
