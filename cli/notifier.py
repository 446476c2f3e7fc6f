"""`streamtoken` commands of the notifier: serve it, and look at subscriptions and deliveries.

``streamtoken notifier`` runs the service. ``streamtoken subscriptions ...`` calls a running notifier with
a streaming token of the environment (``--token`` or ``Quix__Sdk__Token``), as a deployment would.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import typer

subscriptions = typer.Typer(
    name="subscriptions",
    help="Subscriptions, rotations and deliveries of one environment (needs its streaming token).",
    no_args_is_help=True,
)

NotifierUrl = typer.Option(
    "http://127.0.0.1:8003",
    "--notifier-url",
    envvar="STREAMTOKEN_NOTIFIER_URL",
    help="the notifier's base URL",
)
Token = typer.Option(
    ..., "--token", envvar="Quix__Sdk__Token", help="a streaming token of the environment", show_default=False
)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("notifier")(notifier)
    app.add_typer(subscriptions)


def notifier(
    host: str | None = typer.Option(
        None, help="address to bind (default STREAMTOKEN_NOTIFIER_HOST or 127.0.0.1)"
    ),
    port: int | None = typer.Option(None, help="port (default STREAMTOKEN_NOTIFIER_PORT or 8003)"),
) -> None:
    """Run the notifier in the foreground (settings from STREAMTOKEN_NOTIFIER_* variables)."""
    from services.notifier.__main__ import main

    main(host, port)


def _call(method: str, url: str, token: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {token}"}
    if key:
        headers["x-subscription-key"] = key
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=10, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the notifier at {url}: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        typer.echo(f"error: {response.status_code} {message}", err=True)
        raise typer.Exit(1)
    next_cursor = response.headers.get("x-next-cursor")
    if next_cursor:
        typer.echo(f"more: --cursor {next_cursor}", err=True)
    return response.json() if response.content else None


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


ManagementKey = typer.Option(
    ...,
    "--key",
    envvar="STREAMTOKEN_SUBSCRIPTION_KEY",
    help="the subscription's management key (returned once, when it was created)",
    show_default=False,
)


@subscriptions.command("list")
def list_subscriptions(
    limit: int = typer.Option(100, min=1, max=500),
    cursor: str | None = typer.Option(None, help="the cursor printed after the previous page"),
    notifier_url: str = NotifierUrl,
    token: str = Token,
) -> None:
    """List the environment's subscriptions, a page at a time (no secrets)."""
    params: dict[str, Any] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    _print(_call("GET", notifier_url, token, "/v1/subscriptions", params=params))


@subscriptions.command("delete")
def delete_subscription(
    subscription_id: str = typer.Argument(..., help="the subscription to delete"),
    key: str = ManagementKey,
    notifier_url: str = NotifierUrl,
    token: str = Token,
) -> None:
    """Delete a subscription (needs its management key)."""
    _call("DELETE", notifier_url, token, f"/v1/subscriptions/{quote(subscription_id, safe='')}", key=key)
    typer.echo(f"deleted {subscription_id}")


@subscriptions.command("rotations")
def rotations(notifier_url: str = NotifierUrl, token: str = Token) -> None:
    """Per rotation: notified, acknowledged, pending and dead deployments."""
    _print(_call("GET", notifier_url, token, "/v1/rotations"))


@subscriptions.command("deliveries")
def deliveries(
    status: str | None = typer.Option(None, help="pending | delivered | dead | disabled"),
    limit: int = typer.Option(100, min=1, max=1000),
    cursor: str | None = typer.Option(None, help="the cursor printed after the previous page"),
    notifier_url: str = NotifierUrl,
    token: str = Token,
) -> None:
    """List the environment's deliveries, newest first (e.g. --status dead)."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if cursor:
        params["cursor"] = cursor
    _print(_call("GET", notifier_url, token, "/v1/deliveries", params=params))


@subscriptions.command("replay")
def replay(
    delivery_id: str = typer.Argument(..., help="the delivery (webhook-id) to send again"),
    notifier_url: str = NotifierUrl,
    token: str = Token,
) -> None:
    """Send a dead delivery again with a fresh set of attempts."""
    _print(_call("POST", notifier_url, token, f"/v1/deliveries/{quote(delivery_id, safe='')}/replay"))
