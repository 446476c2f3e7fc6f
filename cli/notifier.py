"""`streamtoken` commands of the notifier: serve it, and look at subscriptions and deliveries.

``streamtoken notifier`` runs the service. ``streamtoken subscriptions ...`` calls a running notifier with
a streaming token of the environment (``--token`` or ``Quix__Sdk__Token``), as a deployment would; each
prints a table, or with ``--json`` the notifier's JSON answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail_call, print_json

if TYPE_CHECKING:
    from shared.client import NotifierClient

subscriptions = typer.Typer(
    name="subscriptions",
    help="Subscriptions, rotations and deliveries of one environment (needs its streaming token).",
    no_args_is_help=True,
)


class Status(StrEnum):  # shared.models.notifier.DeliveryStatus, without importing it at --help time
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISABLED = "disabled"


NotifierUrl = Annotated[
    str, typer.Option("--notifier-url", envvar="STREAMTOKEN_NOTIFIER_URL", help="the notifier's base URL")
]
Token = Annotated[
    str,
    typer.Option(
        "--token", envvar="Quix__Sdk__Token", help="a streaming token of the environment", show_default=False
    ),
]
ManagementKey = Annotated[
    str,
    typer.Option(
        "--key",
        envvar="STREAMTOKEN_SUBSCRIPTION_KEY",
        help="the subscription's management key (returned once, when it was created)",
        show_default=False,
    ),
]
Cursor = Annotated[str | None, typer.Option(help="the cursor printed after the previous page")]
JsonOut = Annotated[bool, typer.Option("--json", help="print the notifier's JSON answer")]
DEFAULT_URL = "http://127.0.0.1:8003"


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("notifier")(notifier)
    app.add_typer(subscriptions)


def notifier(
    host: Annotated[
        str | None, typer.Option(help="address to bind (default STREAMTOKEN_NOTIFIER_HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default STREAMTOKEN_NOTIFIER_PORT or 8003)")] = None,
) -> None:
    """Run the notifier in the foreground (settings from STREAMTOKEN_NOTIFIER_* variables)."""
    from services.notifier.__main__ import main

    main(host, port)


@contextmanager
def _client(url: str, token: str) -> Iterator[NotifierClient]:
    from shared.client import ApiCallError, NotifierClient

    with NotifierClient(url, bearer=token) as client:
        try:
            yield client
        except ApiCallError as exc:
            fail_call(exc)


def _more(cursor: str | None) -> None:
    if cursor:
        typer.echo(f"more: --cursor {cursor}", err=True)


def _table(
    title: str, columns: list[str], rows: list[dict[str, Any]], cell: Callable[[Any], str] = str
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("-" if row.get(c) is None else cell(row.get(c)) for c in columns))
    Console(soft_wrap=False).print(table)


@subscriptions.command("list")
def list_subscriptions(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    cursor: Cursor = None,
    notifier_url: NotifierUrl = DEFAULT_URL,
    *,
    token: Token,
    as_json: JsonOut = False,
) -> None:
    """List the environment's subscriptions, a page at a time (no secrets)."""
    with _client(notifier_url, token) as client:
        page = client.subscriptions(limit, cursor)
    _more(page.next_cursor)
    rows = [s.model_dump(mode="json") for s in page.items]
    if as_json:
        print_json(rows, sort_keys=False)
        return
    columns = ["id", "deployment_id", "action", "enabled", "acked_generation", "url", "disabled_reason"]
    _table("subscriptions", columns, rows)


@subscriptions.command("delete")
def delete_subscription(
    subscription_id: Annotated[str, typer.Argument(help="the subscription to delete")],
    *,
    key: ManagementKey,
    notifier_url: NotifierUrl = DEFAULT_URL,
    token: Token,
) -> None:
    """Delete a subscription (needs its management key)."""
    with _client(notifier_url, token) as client:
        client.unsubscribe(subscription_id, key)
    typer.echo(f"deleted {subscription_id}")


@subscriptions.command("rotations")
def rotations(notifier_url: NotifierUrl = DEFAULT_URL, *, token: Token, as_json: JsonOut = False) -> None:
    """Per rotation: notified, acknowledged, pending and dead deployments."""
    with _client(notifier_url, token) as client:
        answer = client.rotations()
    if as_json:
        print_json(answer.model_dump(mode="json"), sort_keys=False)
        return
    columns = ["generation", "rotation_id", "notified", "acknowledged", "pending", "dead"]
    title = f"rotations of {answer.environment_id} ({answer.subscriptions} subscriptions)"
    _table(title, columns, [r.model_dump(mode="json") for r in answer.rotations])


@subscriptions.command("deliveries")
def deliveries(
    status: Annotated[Status | None, typer.Option(help="only deliveries in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    cursor: Cursor = None,
    notifier_url: NotifierUrl = DEFAULT_URL,
    *,
    token: Token,
    as_json: JsonOut = False,
) -> None:
    """List the environment's deliveries, newest first (e.g. --status dead)."""
    with _client(notifier_url, token) as client:
        page = client.deliveries(limit, cursor, status.value if status else None)
    _more(page.next_cursor)
    rows = [d.model_dump(mode="json") for d in page.items]
    if as_json:
        print_json(rows, sort_keys=False)
        return
    columns = ["id", "subscription_id", "generation", "event_type", "status", "attempts", "last_status_code"]
    _table("deliveries", columns, rows)


@subscriptions.command("replay")
def replay(
    delivery_id: Annotated[str, typer.Argument(help="the delivery (webhook-id) to send again")],
    notifier_url: NotifierUrl = DEFAULT_URL,
    *,
    token: Token,
    as_json: JsonOut = False,
) -> None:
    """Send a dead delivery again with a fresh set of attempts."""
    with _client(notifier_url, token) as client:
        answer = client.replay(delivery_id)
    if as_json:
        print_json(answer.model_dump(mode="json"), sort_keys=False)
        return
    typer.echo(f"replaying {answer.id}: {answer.status}, next attempt at {answer.next_attempt_at}")
