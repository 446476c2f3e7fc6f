"""``streamtoken run [options] -- CMD ...``: run a deployment under the agent."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from services.agent.adapters.tokens import TokenSource
    from services.agent.domain import AdoptMode

RUN_HELP = """Run CMD with a streaming token, and restart or reload it when the token is rotated.

The token comes from the issuer (--environment with --pat), a variable (--token-env) or a file
(--token-file). The child gets Quix__Sdk__Token (or --inject-as VAR) and Quix__Portal__Api. The agent
subscribes to the notifier with its own webhook listener (--listen-host, default 127.0.0.1; registered as
--advertise-url) and, on a verified webhook, restarts the child with the new Token 1 (action restart) or
tells it without restarting (action reload: --reload-signal / --token-file-out). It reports the child's
token to the resolver (heartbeats) and, with --slot 2, can move the child onto the new Token 2 (--adopt).
"""


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        help=RUN_HELP,
        context_settings={"allow_interspersed_args": False},
        no_args_is_help=True,
    )(run)


VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PAT_ON_COMMAND_LINE = (
    "streamtoken run: warning: --pat on the command line is visible to every user of this machine "
    "(ps, /proc/<pid>/cmdline); set STREAMTOKEN_PAT or use --pat-file PATH instead"
)


CLEARTEXT = (
    "streamtoken run: {verdict}: {option} {url} sends {what} in clear text to {host} (not loopback); "
    "use https://{advice}"
)
NOT_PROTECTED = (
    "streamtoken run: warning: could not make the agent non-dumpable (prctl PR_SET_DUMPABLE): "
    "its child may read the PAT from /proc/<agent>/environ"
)


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


def _check_cleartext(urls: list[tuple[str, str, str]], insecure_http: bool) -> None:
    """Refuse (or, with ``--insecure-http``, warn about) credentials sent over ``http://`` off the machine."""
    from services.agent.adapters.http import cleartext_host

    for option, url, what in urls:
        host = cleartext_host(url)
        if host is None:
            continue
        if not insecure_http:
            message = CLEARTEXT.format(
                verdict="error", option=option, url=url, what=what, host=host,
                advice=", or --insecure-http to allow it on a network you trust",
            )  # fmt: skip
            typer.echo(message, err=True)
            raise typer.Exit(2)
        typer.echo(
            CLEARTEXT.format(
                verdict="warning", option=option, url=url, what=what, host=host,
                advice=" (allowed by --insecure-http)",
            ),
            err=True,
        )  # fmt: skip


def _fail(message: str, status: int = 2) -> typer.Exit:
    typer.echo(f"streamtoken run: error: {message}", err=True)
    return typer.Exit(status)


def _check_variable(option: str, name: str | None) -> None:
    if name is not None and not VARIABLE_NAME.match(name):
        raise _fail(
            f"{option} {name!r} is not a variable name (letters, digits and _, not starting with a digit)"
        )


def _read_pat_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise _fail(f"cannot read the PAT file {path}: {reason}") from None
    pat = text.strip()
    if not pat:
        raise _fail(f"the PAT file {path} is empty")
    return pat


def _signal_number(name: str) -> int | None:
    if name.lower() in {"", "none"}:
        return None
    upper = name.upper()
    if upper.isdigit():
        return int(upper)
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise _fail(f"--reload-signal {name!r} is not a signal name (e.g. SIGHUP, SIGUSR1, none)") from None


def _adopt_mode(
    adopt: str | None, slot: int | None, token_file_out: Path | None, window: object, after_given: bool
) -> AdoptMode:
    """``--adopt``, or its default: close the zero-downtime loop without restarting outside a window."""
    if adopt is not None and adopt not in ("restart", "reload", "off"):
        raise _fail(f"--adopt must be restart, reload or off, not {adopt!r}")
    if adopt is None:
        if slot != 2:
            return "off"
        if token_file_out is not None:
            return "reload"
        return "restart" if window is not None or after_given else "off"
    if adopt != "off" and slot != 2:
        raise _fail(f"--adopt {adopt} moves the child onto Token 2: it needs --environment with --slot 2")
    if adopt == "reload" and token_file_out is None:
        raise _fail("--adopt reload hands the child the new token through --token-file-out: give it too")
    return adopt  # type: ignore[return-value]


def run(
    ctx: typer.Context,
    command: list[str] = typer.Argument(..., metavar="-- CMD [ARGS]...", help="the command to run"),
    issuer_url: str = typer.Option(
        "http://127.0.0.1:8001", "--issuer-url", envvar="STREAMTOKEN_ISSUER_URL", help="the issuer's base URL"
    ),
    pat: str | None = typer.Option(
        None,
        "--pat",
        envvar="STREAMTOKEN_PAT",
        help="personal access token for the issuer; prefer STREAMTOKEN_PAT or --pat-file "
        "(an argument is visible to every user in the process list)",
        show_default=False,
    ),
    pat_file: Path | None = typer.Option(
        None,
        "--pat-file",
        envvar="STREAMTOKEN_PAT_FILE",
        metavar="PATH",
        help="read the PAT from this file (takes precedence over STREAMTOKEN_PAT)",
        show_default=False,
    ),
    environment: str | None = typer.Option(
        None,
        "--environment",
        envvar="STREAMTOKEN_ENVIRONMENT",
        help="environment id, e.g. acme-telemetry-dev",
    ),
    slot: int = typer.Option(1, "--slot", min=1, max=2, help="which token to use: 1 (current) or 2 (next)"),
    token_env: str | None = typer.Option(
        None, "--token-env", metavar="VAR", help="take the token from this variable instead of the issuer"
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", metavar="PATH", help="take the token from this file (read again on restart)"
    ),
    portal_url: str = typer.Option(
        "http://127.0.0.1:8002",
        "--portal-url",
        envvar="STREAMTOKEN_RESOLVER_URL",
        help="the resolver's URL, given to the child as Quix__Portal__Api",
    ),
    inject_as: str | None = typer.Option(
        None,
        "--inject-as",
        metavar="VAR",
        help="put the token in VAR instead of Quix__Sdk__Token (zero-downtime strategy; "
        "implies --action reload)",
    ),
    notifier_url: str = typer.Option(
        "http://127.0.0.1:8003",
        "--notifier-url",
        envvar="STREAMTOKEN_NOTIFIER_URL",
        help="the notifier's URL",
    ),
    subscribe: bool = typer.Option(
        True, "--subscribe/--no-subscribe", help="subscribe to the notifier (off: just run with the token)"
    ),
    deployment_id: str | None = typer.Option(
        None,
        "--deployment-id",
        envvar="STREAMTOKEN_DEPLOYMENT_ID",
        help="name of this deployment at the notifier [default: HOSTNAME-PID]",
        show_default=False,
    ),
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        envvar="STREAMTOKEN_AGENT_STATE_DIR",
        readable=False,  # checked when the key is written (0700, created on first use)
        help="where the subscription's management key is kept (0600), so a restarted agent can register "
        "the same --deployment-id again [default: ~/.local/state/streamtoken/agent]",
        show_default=False,
    ),
    action: str | None = typer.Option(
        None,
        "--action",
        help="what a rotation means for this deployment: restart or reload "
        "[default: reload with --inject-as, else restart]",
        show_default=False,
    ),
    reload_signal: str | None = typer.Option(
        None,
        "--reload-signal",
        metavar="SIGNAL",
        help="signal sent to the child on reload, or 'none' "
        "[default: SIGHUP unless --token-file-out is given]",
        show_default=False,
    ),
    token_file_out: Path | None = typer.Option(
        None,
        "--token-file-out",
        metavar="PATH",
        help="write the token to PATH (0600) before starting the child and rewrite it atomically on reload",
    ),
    listen_host: str = typer.Option(
        "127.0.0.1",
        "--listen-host",
        envvar="STREAMTOKEN_AGENT_LISTEN_HOST",
        metavar="ADDRESS",
        help="address the webhook listener binds to (0.0.0.0 or :: for every interface: then give "
        "--advertise-url)",
    ),
    listen_port: int = typer.Option(
        0, "--listen-port", min=0, max=65535, help="port of the webhook listener (0: a free one)"
    ),
    advertise_url: str | None = typer.Option(
        None,
        "--advertise-url",
        envvar="STREAMTOKEN_AGENT_ADVERTISE_URL",
        metavar="URL",
        help="the webhook URL registered with the notifier: where the notifier reaches this agent "
        "({port} is the listen port; path /webhook when it has none) "
        "[default: http://LISTEN_HOST:PORT/webhook]",
        show_default=False,
    ),
    stop_timeout: float = typer.Option(
        10.0, "--stop-timeout", min=0.0, help="seconds between SIGTERM and SIGKILL when stopping the child"
    ),
    restart: str = typer.Option(
        "on-failure", "--restart", help="restart the child when it exits: always, on-failure or never"
    ),
    backoff_initial: float = typer.Option(
        0.5, "--backoff-initial", min=0.0, help="first delay before restarting a crashed child (doubles)"
    ),
    backoff_max: float = typer.Option(30.0, "--backoff-max", min=0.0, help="the longest such delay"),
    start_retries: int = typer.Option(
        5, "--start-retries", min=0, help="retries when the token cannot be obtained at start (back-off)"
    ),
    heartbeat_interval: float = typer.Option(
        30.0,
        "--heartbeat-interval",
        min=0.0,
        metavar="SECONDS",
        help="report the child's token to the resolver this often (and after every token change); 0: never",
    ),
    adopt: str | None = typer.Option(
        None,
        "--adopt",
        help="with --slot 2: move the child onto the new Token 2 after a rotation: restart, reload or off "
        "[default: reload with --token-file-out, restart with --adopt-window, else off]",
        show_default=False,
    ),
    adopt_window: str | None = typer.Option(
        None,
        "--adopt-window",
        metavar="HH:MM-HH:MM",
        help="adopt (restart) only inside this daily window, in UTC (22:00-02:00 wraps midnight)",
        show_default=False,
    ),
    adopt_after: str = typer.Option(
        "0",
        "--adopt-after",
        metavar="DURATION",
        help="adopt no sooner than this after the new Token 2 is known (90s, 15m, 2h)",
    ),
    insecure_http: bool = typer.Option(
        False,
        "--insecure-http",
        envvar="STREAMTOKEN_INSECURE_HTTP",
        help="allow http:// to a host other than loopback (the PAT and the token cross the network in clear)",
    ),
) -> None:
    """Run CMD under the deployment agent."""
    import asyncio
    import logging
    import os
    import socket

    from typer._click.core import ParameterSource

    from services.agent.adapters.keys import SubscriptionKeys, default_directory
    from services.agent.adapters.listener import WILDCARD_HOSTS, check_advertise_url
    from services.agent.adapters.secrecy import forget_variables, hide_arguments, make_undumpable
    from services.agent.adapters.tokens import FileTokenSource, IssuerTokenSource, VariableTokenSource
    from services.agent.domain import RELOAD, RESTART, Policy
    from services.agent.runtime import AgentConfig, AgentRuntime, ListenError
    from services.agent.settings import parse_duration, parse_window
    from shared.ids import InvalidIdentifier, validate_environment_id
    from shared.logs import configure_logging
    from shared.settings import RuntimeSettings

    if not command:
        raise _fail("no command given: streamtoken run [options] -- CMD ...")
    pat_from_argument = pat is not None and ctx.get_parameter_source("pat") is ParameterSource.COMMANDLINE
    if pat_from_argument:
        typer.echo(PAT_ON_COMMAND_LINE, err=True)
    if pat_file is not None:
        if pat_from_argument:
            raise _fail("give --pat or --pat-file, not both")
        pat = _read_pat_file(pat_file)  # once: the path is not kept, nor passed on
    # The child runs as the same user: keep the PAT (and where it came from) out of its reach. Arguments
    # first, while this process may still write its own /proc/self/mem (see services.agent.adapters.secrecy).
    hide_arguments(_option_values(sys.argv, ("--pat", "--pat-file")))
    forget_variables(os.environ)
    if not make_undumpable() and sys.platform.startswith("linux"):
        typer.echo(NOT_PROTECTED, err=True)
    _check_variable("--token-env", token_env)
    _check_variable("--inject-as", inject_as)
    chosen = [
        name
        for name, value in (
            ("--environment", environment),
            ("--token-env", token_env),
            ("--token-file", token_file),
        )
        if value
    ]
    if len(chosen) != 1:
        raise _fail("give exactly one token source: --environment (with --pat), --token-env or --token-file")
    source: TokenSource
    if environment:
        try:
            validate_environment_id(environment)
        except InvalidIdentifier as exc:
            raise _fail(str(exc)) from None
        if not pat:
            raise _fail("--environment needs a PAT: STREAMTOKEN_PAT, --pat-file or --pat")
        source = IssuerTokenSource(issuer_url, pat, environment, slot)
    elif token_env:
        source = VariableTokenSource(token_env)
    else:
        assert token_file is not None
        source = FileTokenSource(token_file)
    cleartext = [("--portal-url", portal_url, "the streaming token (from the child)")]
    if environment:
        cleartext.append(("--issuer-url", issuer_url, "the PAT"))
    if subscribe:
        cleartext.append(("--notifier-url", notifier_url, "the streaming token"))
    _check_cleartext(cleartext, insecure_http)
    if subscribe:
        if advertise_url is None and listen_host.strip("[]") in WILDCARD_HOSTS:
            raise _fail(
                f"--listen-host {listen_host} listens on every interface: give --advertise-url, the URL the "
                "notifier reaches this agent at (e.g. http://POD_IP:{port}/webhook)"
            )
        problem = check_advertise_url(advertise_url) if advertise_url is not None else None
        if problem is not None:
            raise _fail(f"--advertise-url {problem}")
    chosen_action = action or (RELOAD if inject_as else RESTART)
    if chosen_action not in (RESTART, RELOAD):
        raise _fail(f"--action must be restart or reload, not {chosen_action!r}")
    if restart not in ("always", "on-failure", "never"):
        raise _fail(f"--restart must be always, on-failure or never, not {restart!r}")
    try:
        window = parse_window(adopt_window) if adopt_window else None
        after = parse_duration(adopt_after)
    except ValueError as exc:
        raise _fail(f"--adopt-window/--adopt-after: {exc}") from None
    issuer_slot = slot if environment else None
    chosen_adopt = _adopt_mode(adopt, issuer_slot, token_file_out, window, after > 0)
    if reload_signal is None:
        signum = None if token_file_out else int(signal.SIGHUP)
    else:
        signum = _signal_number(reload_signal)

    settings = RuntimeSettings()
    configure_logging("agent", settings.log_level, settings.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    if chosen_action == RELOAD and environment and slot == 1 and token_file_out is None:
        logging.getLogger("streamtoken.agent").warning(
            "action reload with Token 1: after a rotation the token the child holds is refused; "
            "the zero-downtime strategy runs on Token 2 (--slot 2)"
        )
    if environment and slot == 2 and adopt is None and chosen_adopt == "off":
        logging.getLogger("streamtoken.agent").warning(
            "--slot 2 without adoption: after a rotation the child keeps the promoted token (now Token 1), "
            "which the next rotation deactivates; give --adopt-window HH:MM-HH:MM (a graceful restart inside "
            "it, UTC) or --token-file-out (a reload), or --adopt off to silence this"
        )
    config = AgentConfig(
        command=list(command),
        portal_url=portal_url,
        notifier_url=notifier_url if subscribe else None,
        deployment_id=deployment_id or f"{socket.gethostname()}-{os.getpid()}",
        subscription_keys=SubscriptionKeys(state_dir or default_directory()),
        action=chosen_action,
        inject_as=inject_as,
        token_source_variable=token_env,
        reload_signal=signum,
        token_file_out=token_file_out,
        listen_host=listen_host.strip("[]"),
        listen_port=listen_port,
        advertise_url=advertise_url,
        policy=Policy(
            backoff_initial=backoff_initial,
            backoff_max=max(backoff_max, backoff_initial),
            stop_timeout=stop_timeout,
            restart_policy=restart,  # type: ignore[arg-type]
            start_retries=start_retries,
            heartbeat_interval=heartbeat_interval,
            adopt=chosen_adopt,
            adopt_after=after,
            adopt_window=window,
        ),
    )
    runtime = AgentRuntime(config, source)
    try:
        status = asyncio.run(runtime.run())
    except ListenError as exc:
        raise _fail(str(exc), 1) from None
    if runtime.error:
        raise _fail(runtime.error, status)
    raise typer.Exit(status)
