"""Wiring: ``build_agent(settings, *, overrides...)`` puts the real adapters (or a test's) together.

Nothing connects at build time: the returned :class:`~services.agent.runtime.AgentRuntime` opens its
listener and starts the child in ``run()``. :func:`run_agent` is what ``streamtoken run`` and
``python -m services.agent`` share once the settings are made: the PAT kept from the child, logging, the
start-up warnings, the run, and the exit status with its one-line error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime

import httpx

from services.agent.adapters.issuer import IssuerClient
from services.agent.adapters.keys import SubscriptionKeys, default_directory
from services.agent.adapters.notifier import NotifierClient
from services.agent.adapters.resolver import ResolverClient
from services.agent.adapters.secrecy import forget_variables, hide_arguments, make_undumpable
from services.agent.adapters.tokens import (
    FileTokenSource,
    IssuerTokenSource,
    TokenSource,
    VariableTokenSource,
)
from services.agent.runtime import AgentRuntime, ListenError
from services.agent.settings import AgentSettings
from shared.logs import configure_logging, get_logger

NOT_PROTECTED = (
    "{prog}: warning: could not make the agent non-dumpable (prctl PR_SET_DUMPABLE): "
    "its child may read the PAT from /proc/<agent>/environ"
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_source(
    settings: AgentSettings, *, issuer: IssuerClient | None = None, environ: Mapping[str, str] | None = None
) -> TokenSource:
    """The token source the settings name: the issuer (``issuer``: its client), a variable, a file."""
    if settings.environment:
        pat = settings.pat.get_secret_value() if settings.pat is not None else ""
        return IssuerTokenSource(
            settings.issuer_url,
            pat,
            settings.environment,
            settings.slot,
            timeout=settings.http_timeout,
            issuer=issuer,
        )
    if settings.token_env:
        return VariableTokenSource(settings.token_env, dict(os.environ if environ is None else environ))
    assert settings.token_file is not None  # the settings' validator guarantees one source
    return FileTokenSource(settings.token_file)


def build_agent(
    settings: AgentSettings,
    *,
    source: TokenSource | None = None,
    issuer: IssuerClient | None = None,
    notifier: NotifierClient | None = None,
    resolver: ResolverClient | None = None,
    http: httpx.AsyncClient | None = None,
    keys: SubscriptionKeys | None = None,
    clock: Callable[[], datetime] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentRuntime:
    """The agent for ``settings``; each keyword replaces the adapter it names (tests pass their own).

    ``http`` is shared by the notifier and resolver clients built here (and closed by the agent when it
    was built here too); ``environ`` is what the child inherits from (default: this process's).
    """
    owns_http = http is None
    client = http or httpx.AsyncClient(timeout=settings.http_timeout)
    if notifier is None and settings.subscribe:
        stored = keys or SubscriptionKeys(settings.state_dir or default_directory())
        notifier = NotifierClient(settings.notifier_url, client, stored)
    return AgentRuntime(
        settings,
        source or build_source(settings, issuer=issuer, environ=environ),
        http=client,
        resolver=resolver or ResolverClient(settings.portal_url, client),
        notifier=notifier if settings.subscribe else None,
        environ=os.environ if environ is None else environ,
        clock=clock or _utc_now,
        owns_http=owns_http,
    )


def protect_pat(environ: MutableMapping[str, str], secrets: Sequence[str], *, prog: str) -> None:
    """Keep the PAT out of the child's reach (see ``services.agent.adapters.secrecy``): the values in
    ``secrets`` overwritten in this process's command line, the PAT variables forgotten, the process made
    non-dumpable. Arguments first, while this process may still write its own ``/proc/self/mem``."""
    hide_arguments(secrets)
    forget_variables(environ)
    if not make_undumpable() and sys.platform.startswith("linux"):
        print(NOT_PROTECTED.format(prog=prog), file=sys.stderr)


def run_agent(settings: AgentSettings, *, prog: str = "streamtoken run") -> tuple[int, str | None]:
    """Run the agent to its end: ``(exit status, one-line error or None)``."""
    for line in settings.cleartext_warnings():
        print(line.replace("streamtoken run", prog, 1), file=sys.stderr)
    runtime_settings = settings.runtime
    configure_logging("agent", runtime_settings.log_level, runtime_settings.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    log = get_logger("streamtoken.agent")
    for warning in settings.log_warnings():
        log.warning(warning)
    agent = build_agent(settings)
    try:
        status = asyncio.run(agent.run())
    except ListenError as exc:
        return 1, str(exc)
    return status, agent.error
