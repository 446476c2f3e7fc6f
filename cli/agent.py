"""``streamtoken run [options] -- CMD ...``: run a deployment under the agent.

A thin command: the options become :class:`services.agent.settings.AgentSettings` (which checks them),
and :func:`services.agent.bootstrap.run_agent` runs the agent. ``python -m services.agent CMD ...`` is the
same agent configured by the environment alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

RUN_HELP = """Run CMD with a streaming token, and restart or reload it when the token is rotated.

The token comes from the issuer (--environment with --pat), a variable (--token-env) or a file
(--token-file). The child gets Quix__Sdk__Token (or --inject-as VAR) and Quix__Portal__Api. The agent
subscribes to the notifier with its own webhook listener (--listen-host, default 127.0.0.1; registered as
--advertise-url) and, on a verified webhook, restarts the child with the new Token 1 (action restart) or
tells it without restarting (action reload: --reload-signal / --token-file-out). It reports the child's
token to the resolver (heartbeats) and, with --slot 2, can move the child onto the new Token 2 (--adopt).
"""

PAT_ON_COMMAND_LINE = (
    "streamtoken run: warning: --pat on the command line is visible to every user of this machine "
    "(ps, /proc/<pid>/cmdline); set STREAMTOKEN_PAT or use --pat-file PATH instead"
)


class ActionChoice(StrEnum):
    restart = "restart"
    reload = "reload"


class RestartChoice(StrEnum):
    always = "always"
    on_failure = "on-failure"
    never = "never"


class AdoptChoice(StrEnum):
    restart = "restart"
    reload = "reload"
    off = "off"


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        help=RUN_HELP,
        context_settings={"allow_interspersed_args": False},
        no_args_is_help=True,
    )(run)


def _option_values(argv: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """The values given to ``names`` in ``argv`` as typed (``--opt V`` or ``--opt=V``), before ``--``."""
    values = []
    for i, argument in enumerate(argv):
        if argument == "--":
            break
        if argument in names and i + 1 < len(argv):
            values.append(argv[i + 1])
        for name in names:
            if argument.startswith(f"{name}="):
                values.append(argument[len(name) + 1 :])
    return values


def _fail(message: str, status: int = 2) -> typer.Exit:
    typer.echo(f"streamtoken run: error: {message}", err=True)
    return typer.Exit(status)


def run(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(metavar="-- CMD [ARGS]...", help="the command to run")],
    issuer_url: Annotated[
        str, typer.Option("--issuer-url", envvar="STREAMTOKEN_ISSUER_URL", help="the issuer's base URL")
    ] = "http://127.0.0.1:8001",
    pat: Annotated[
        str | None,
        typer.Option(
            "--pat",
            envvar="STREAMTOKEN_PAT",
            help="personal access token for the issuer; prefer STREAMTOKEN_PAT or --pat-file "
            "(an argument is visible to every user in the process list)",
            show_default=False,
        ),
    ] = None,
    pat_file: Annotated[
        Path | None,
        typer.Option(
            "--pat-file",
            envvar="STREAMTOKEN_PAT_FILE",
            metavar="PATH",
            help="read the PAT from this file (takes precedence over STREAMTOKEN_PAT)",
            show_default=False,
        ),
    ] = None,
    environment: Annotated[
        str | None,
        typer.Option(
            "--environment", envvar="STREAMTOKEN_ENVIRONMENT", help="environment id, e.g. acme-telemetry-dev"
        ),
    ] = None,
    slot: Annotated[
        int, typer.Option("--slot", min=1, max=2, help="which token to use: 1 (current) or 2 (next)")
    ] = 1,
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env", metavar="VAR", help="take the token from this variable instead of the issuer"
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", metavar="PATH", help="take the token from this file (read again on restart)"
        ),
    ] = None,
    portal_url: Annotated[
        str,
        typer.Option(
            "--portal-url",
            envvar="STREAMTOKEN_RESOLVER_URL",
            help="the resolver's URL, given to the child as Quix__Portal__Api (and where heartbeats go)",
        ),
    ] = "http://127.0.0.1:8002",
    inject_as: Annotated[
        str | None,
        typer.Option(
            "--inject-as",
            metavar="VAR",
            help="put the token in VAR instead of Quix__Sdk__Token (zero-downtime strategy; "
            "implies --action reload)",
        ),
    ] = None,
    notifier_url: Annotated[
        str, typer.Option("--notifier-url", envvar="STREAMTOKEN_NOTIFIER_URL", help="the notifier's URL")
    ] = "http://127.0.0.1:8003",
    subscribe: Annotated[
        bool,
        typer.Option(
            "--subscribe/--no-subscribe", help="subscribe to the notifier (off: just run with the token)"
        ),
    ] = True,
    deployment_id: Annotated[
        str | None,
        typer.Option(
            "--deployment-id",
            envvar="STREAMTOKEN_DEPLOYMENT_ID",
            help="name of this deployment at the notifier and in heartbeats [default: HOSTNAME-PID]",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            envvar="STREAMTOKEN_AGENT_STATE_DIR",
            help="where the subscription's management key is kept (0600), so a restarted agent can register "
            "the same --deployment-id again [default: ~/.local/state/streamtoken/agent]",
            show_default=False,
        ),
    ] = None,
    action: Annotated[
        ActionChoice | None,
        typer.Option(
            "--action",
            help="what a rotation means for this deployment [default: reload with --inject-as, else restart]",
            show_default=False,
        ),
    ] = None,
    reload_signal: Annotated[
        str | None,
        typer.Option(
            "--reload-signal",
            metavar="SIGNAL",
            help="signal sent to the child on reload, or 'none' [default: SIGHUP unless --token-file-out]",
            show_default=False,
        ),
    ] = None,
    token_file_out: Annotated[
        Path | None,
        typer.Option(
            "--token-file-out",
            metavar="PATH",
            help="write the token to PATH (0600) before starting the child; rewrite it atomically on reload",
        ),
    ] = None,
    listen_host: Annotated[
        str,
        typer.Option(
            "--listen-host",
            envvar="STREAMTOKEN_AGENT_LISTEN_HOST",
            metavar="ADDRESS",
            help="address the webhook listener binds to (0.0.0.0 or :: for every interface: then give "
            "--advertise-url)",
        ),
    ] = "127.0.0.1",
    listen_port: Annotated[
        int,
        typer.Option("--listen-port", min=0, max=65535, help="port of the webhook listener (0: a free one)"),
    ] = 0,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            "--advertise-url",
            envvar="STREAMTOKEN_AGENT_ADVERTISE_URL",
            metavar="URL",
            help="the webhook URL registered with the notifier: where the notifier reaches this agent "
            "({port} is the listen port; path /webhook when it has none) "
            "[default: http://LISTEN_HOST:PORT/webhook]",
            show_default=False,
        ),
    ] = None,
    stop_timeout: Annotated[
        float,
        typer.Option(
            "--stop-timeout", min=0.0, help="seconds between SIGTERM and SIGKILL when stopping the child"
        ),
    ] = 10.0,
    restart: Annotated[
        RestartChoice, typer.Option("--restart", help="restart the child when it exits")
    ] = RestartChoice.on_failure,
    backoff_initial: Annotated[
        float,
        typer.Option(
            "--backoff-initial", min=0.0, help="first delay before restarting a crashed child (doubles)"
        ),
    ] = 0.5,
    backoff_max: Annotated[
        float, typer.Option("--backoff-max", min=0.0, help="the longest such delay")
    ] = 30.0,
    start_retries: Annotated[
        int,
        typer.Option(
            "--start-retries", min=0, help="retries when the token cannot be obtained at start (back-off)"
        ),
    ] = 5,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            min=0.0,
            metavar="SECONDS",
            help="report the child's token to the resolver this often (and after each token change); 0: off",
        ),
    ] = 30.0,
    adopt: Annotated[
        AdoptChoice | None,
        typer.Option(
            "--adopt",
            help="with --slot 2: move the child onto the new Token 2 after a rotation "
            "[default: reload with --token-file-out, restart with --adopt-window, else off]",
            show_default=False,
        ),
    ] = None,
    adopt_window: Annotated[
        str | None,
        typer.Option(
            "--adopt-window",
            metavar="HH:MM-HH:MM",
            help="adopt (restart) only inside this daily window, in UTC (22:00-02:00 wraps midnight)",
            show_default=False,
        ),
    ] = None,
    adopt_after: Annotated[
        str,
        typer.Option(
            "--adopt-after",
            metavar="DURATION",
            help="adopt no sooner than this after the new Token 2 is known (90s, 15m, 2h)",
        ),
    ] = "0",
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            envvar="STREAMTOKEN_INSECURE_HTTP",
            help="allow http:// to a host other than loopback (the PAT and the token then cross it in clear)",
        ),
    ] = False,
) -> None:
    """Run CMD under the deployment agent."""
    import os

    from pydantic import ValidationError
    from typer._click.core import ParameterSource

    from services.agent.bootstrap import protect_pat, run_agent
    from services.agent.settings import AgentSettings, settings_error

    pat_from_argument = pat is not None and ctx.get_parameter_source("pat") is ParameterSource.COMMANDLINE
    if pat_from_argument:
        typer.echo(PAT_ON_COMMAND_LINE, err=True)
        if pat_file is not None:
            raise _fail("give --pat or --pat-file, not both")
    # Only what was given (an option or its variable) is passed on: the settings apply their own
    # defaults and STREAMTOKEN_AGENT_* variables to the rest, exactly as for ``python -m services.agent``.
    given: dict[str, Any] = {
        name: value.value if isinstance(value, StrEnum) else value
        for name, value in ctx.params.items()
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    }
    try:
        settings = AgentSettings(**given)
    except (ValidationError, ValueError) as exc:
        raise _fail(settings_error(exc)) from None
    finally:
        # Whatever happens next, the PAT and where it came from leave the reach of the child.
        protect_pat(os.environ, _option_values(sys.argv, ("--pat", "--pat-file")), prog="streamtoken run")
    status, error = run_agent(settings)
    if error:
        raise _fail(error, status)
    raise typer.Exit(status)
