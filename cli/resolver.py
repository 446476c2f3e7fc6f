"""`streamtoken resolver` (serve) and `streamtoken topics resolve NAME` (ask a resolver for a topic id)."""

from __future__ import annotations

import json

import typer

topics = typer.Typer(help="Topic names and ids of an environment.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("resolver")(resolver)
    app.add_typer(topics, name="topics")


def resolver(
    host: str | None = typer.Option(None, "--host", help="address to listen on [STREAMTOKEN_RESOLVER_HOST]"),
    port: int | None = typer.Option(None, "--port", "-p", help="port [STREAMTOKEN_RESOLVER_PORT, 8002]"),
) -> None:
    """Run the resolver (token lookups and the Quix Portal API) in the foreground."""
    from services.resolver.__main__ import main

    main(host, port)


@topics.command("resolve")
def resolve(
    name: str = typer.Argument(..., help="short topic name, e.g. f1-data"),
    resolver_url: str = typer.Option(
        "http://127.0.0.1:8002", "--resolver-url", envvar="STREAMTOKEN_RESOLVER_URL", help="resolver base URL"
    ),
    token: str = typer.Option(
        ..., "--token", envvar="Quix__Sdk__Token", help="streaming token [env Quix__Sdk__Token]"
    ),
) -> None:
    """Print the environment's topic id for NAME, as the resolver answers it."""
    from urllib.parse import quote

    import httpx

    try:
        response = httpx.get(
            f"{resolver_url.rstrip('/')}/v1/topics/{quote(name, safe='')}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the resolver at {resolver_url}: {type(exc).__name__}", err=True)
        raise typer.Exit(2) from None
    try:
        body = response.json()
    except json.JSONDecodeError:
        body = {}
    if response.status_code != 200:
        message = body.get("message", response.reason_phrase) if isinstance(body, dict) else "error"
        typer.echo(f"error: {response.status_code} {message}", err=True)
        raise typer.Exit(1)
    typer.echo(body["topic_id"])
