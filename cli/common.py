"""What every ``streamtoken`` command shares: exit codes, error lines, JSON output.

Exit codes, the same in every command group:

- ``0`` done;
- ``1`` the server failed or could not be reached (unreachable, 5xx, an unexpected answer), or what a
  command waits for did not happen in time (``--wait``, ``--watch``);
- ``2`` usage or configuration: a bad option or argument, a missing PAT or token, bad local settings, a
  confirmation declined (or impossible: no terminal and no ``--yes``), so nothing was done;
- ``3`` refused: the server answered 4xx (unauthorized, forbidden, not found, a conflict, a failed
  precondition, invalid input), so asking again the same way will not help.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from shared.client import ApiCallError

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

EPILOG = (
    "Exit codes: 0 done; 1 server error, unreachable or timed out waiting; 2 usage or configuration "
    "error, or a confirmation declined; 3 refused by the server (4xx: auth, not found, conflict, "
    "invalid input). Listing and show commands take --json."
)


def fail(message: str, code: int = EXIT_SERVER) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def confirm_or_stop(question: str, yes: bool) -> None:
    """Ask ``question`` unless ``--yes``; a no, or no terminal to ask on, stops with exit 2, nothing done."""
    if yes:
        return
    try:
        confirmed = typer.confirm(question)
    except typer.Abort:  # end of input: nobody to answer
        confirmed = False
    if not confirmed:
        fail("not confirmed, nothing was done (pass --yes to skip the question)", EXIT_USAGE)


def exit_code(exc: ApiCallError) -> int:
    """3 for a 4xx answer, 1 for anything else (no answer, 5xx, a bad answer)."""
    return EXIT_REFUSED if exc.status is not None and 400 <= exc.status < 500 else EXIT_SERVER


def fail_call(exc: ApiCallError, hint: str = "") -> NoReturn:
    fail(f"{exc.describe()}{hint}", exit_code(exc))


def print_json(data: Any, *, sort_keys: bool = True) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=sort_keys))
