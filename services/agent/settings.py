"""``streamtoken run`` / ``python -m services.agent`` configuration: :class:`AgentSettings`.

Every field is an environment variable (``STREAMTOKEN_AGENT_<FIELD>``, or the shared name noted in its
description, e.g. ``STREAMTOKEN_PAT``) and a ``streamtoken run`` option of the same name. The checks that
make a configuration usable — one token source, variable names, clear text off the machine, the adoption
options — are the model's validators, so the command and ``python -m services.agent`` refuse the same
things with the same sentence.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from datetime import time
from pathlib import Path
from typing import Self

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.agent.adapters.http import cleartext_host
from services.agent.adapters.listener import WILDCARD_HOSTS, check_advertise_url
from services.agent.domain import RELOAD, RESTART, Action, AdoptMode, AdoptWindow, Policy, RestartPolicy
from shared.ids import InvalidIdentifier, validate_environment_id
from shared.settings import RuntimeSettings

VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CLEARTEXT = (
    "streamtoken run: {verdict}: {option} {url} sends {what} in clear text to {host} (not loopback); "
    "use https://{advice}"
)

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*(?:Z|UTC)?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_window(text: str) -> AdoptWindow:
    """``HH:MM-HH:MM`` (UTC; ``Z`` or ``UTC`` may follow) as an :class:`AdoptWindow`, or ``ValueError``."""
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a window HH:MM-HH:MM (UTC), e.g. 02:00-04:00")
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    try:
        return AdoptWindow(time(h1, m1), time(h2, m2))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1d`` or ``1h30m``; ``ValueError`` if not one."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 2h or 1h30m") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return seconds


def signal_number(name: str) -> int | None:
    """``SIGHUP``, ``HUP``, ``1`` → the number; ``none`` or empty → ``None``; ``ValueError`` otherwise."""
    if name.lower() in {"", "none"}:
        return None
    upper = name.upper()
    if upper.isdigit():
        return int(upper)
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise ValueError(
            f"--reload-signal {name!r} is not a signal name (e.g. SIGHUP, SIGUSR1, none)"
        ) from None


def _env(field: str, *shared: str) -> AliasChoices:
    """The variables a field is read from: the shared names first, then ``STREAMTOKEN_AGENT_<FIELD>``."""
    return AliasChoices(field, *shared, f"STREAMTOKEN_AGENT_{field.upper()}")


class AgentSettings(BaseSettings):
    """What the agent runs, where the token comes from, how the child is told, and how it is found."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    command: list[str] = Field(default_factory=list, description="the command to run and its arguments")

    # Where the token comes from: exactly one of environment (the issuer, with a PAT), token_env, token_file.
    issuer_url: str = Field(
        "http://127.0.0.1:8001",
        validation_alias=_env("issuer_url", "STREAMTOKEN_ISSUER_URL"),
        description="STREAMTOKEN_ISSUER_URL: the issuer's base URL",
    )
    pat: SecretStr | None = Field(
        None,
        validation_alias=_env("pat", "STREAMTOKEN_PAT"),
        description="STREAMTOKEN_PAT: personal access token for the issuer",
    )
    pat_file: Path | None = Field(
        None,
        validation_alias=_env("pat_file", "STREAMTOKEN_PAT_FILE"),
        description="STREAMTOKEN_PAT_FILE: read the PAT from this file, once (takes precedence over pat)",
    )
    environment: str | None = Field(
        None,
        validation_alias=_env("environment", "STREAMTOKEN_ENVIRONMENT"),
        description="STREAMTOKEN_ENVIRONMENT: environment id, e.g. acme-telemetry-dev",
    )
    slot: int = Field(
        1, ge=1, le=2, validation_alias=_env("slot"), description="which token: 1 (current) or 2 (next)"
    )
    token_env: str | None = Field(
        None, validation_alias=_env("token_env"), description="take the token from this variable"
    )
    token_file: Path | None = Field(
        None, validation_alias=_env("token_file"), description="take the token from this file (read again)"
    )

    # What the child gets and how it is told.
    portal_url: str = Field(
        "http://127.0.0.1:8002",
        validation_alias=_env("portal_url", "STREAMTOKEN_RESOLVER_URL"),
        description="STREAMTOKEN_RESOLVER_URL: the resolver, given to the child as Quix__Portal__Api",
    )
    inject_as: str | None = Field(
        None, validation_alias=_env("inject_as"), description="put the token in this variable instead"
    )
    action: Action | None = Field(
        None, validation_alias=_env("action"), description="restart or reload [reload with inject_as]"
    )
    reload_signal: str | None = Field(
        None,
        validation_alias=_env("reload_signal"),
        description="signal sent on reload, or 'none' [SIGHUP unless token_file_out]",
    )
    token_file_out: Path | None = Field(
        None, validation_alias=_env("token_file_out"), description="write the token here (0600)"
    )
    stop_timeout: float = Field(10.0, ge=0, validation_alias=_env("stop_timeout"))
    restart: str = Field(
        "on-failure", validation_alias=_env("restart"), description="always, on-failure, never"
    )
    backoff_initial: float = Field(0.5, ge=0, validation_alias=_env("backoff_initial"))
    backoff_max: float = Field(30.0, ge=0, validation_alias=_env("backoff_max"))
    start_retries: int = Field(5, ge=0, validation_alias=_env("start_retries"))

    # The notifier and the webhook listener.
    notifier_url: str = Field(
        "http://127.0.0.1:8003",
        validation_alias=_env("notifier_url", "STREAMTOKEN_NOTIFIER_URL"),
        description="STREAMTOKEN_NOTIFIER_URL: the notifier's base URL",
    )
    subscribe: bool = Field(True, validation_alias=_env("subscribe"), description="subscribe to the notifier")
    deployment_id: str = Field(
        "",
        validation_alias=_env("deployment_id", "STREAMTOKEN_DEPLOYMENT_ID"),
        description="STREAMTOKEN_DEPLOYMENT_ID: this deployment's name [HOSTNAME-PID]",
    )
    state_dir: Path | None = Field(
        None, validation_alias=_env("state_dir"), description="where the subscription's key is kept"
    )
    listen_host: str = Field("127.0.0.1", validation_alias=_env("listen_host"))
    listen_port: int = Field(0, ge=0, le=65535, validation_alias=_env("listen_port"))
    advertise_url: str | None = Field(None, validation_alias=_env("advertise_url"))

    # Heartbeats and adopting the new Token 2.
    heartbeat_interval: float = Field(30.0, ge=0, validation_alias=_env("heartbeat_interval"))
    adopt: AdoptMode | None = Field(
        None,
        validation_alias=_env("adopt"),
        description="restart, reload or off [reload with token_file_out, restart with a window, else off]",
    )
    adopt_window: str | None = Field(
        None, validation_alias=_env("adopt_window"), description="HH:MM-HH:MM UTC"
    )
    adopt_after: str = Field("0", validation_alias=_env("adopt_after"), description="90s, 15m, 2h")

    insecure_http: bool = Field(
        False,
        validation_alias=_env("insecure_http", "STREAMTOKEN_INSECURE_HTTP"),
        description="STREAMTOKEN_INSECURE_HTTP: allow http:// to a host other than loopback",
    )
    http_timeout: float = Field(10.0, gt=0, validation_alias=_env("http_timeout"))
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    _adopt_given: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _usable(self) -> Self:
        if not self.command:
            raise ValueError("no command given: streamtoken run [options] -- CMD ...")
        if self.pat_file is not None:
            self.pat = SecretStr(_read_pat_file(self.pat_file))  # once: the path is passed nowhere
        for option, name in (("--token-env", self.token_env), ("--inject-as", self.inject_as)):
            if name is not None and not VARIABLE_NAME.match(name):
                raise ValueError(
                    f"{option} {name!r} is not a variable name (letters, digits and _, not starting with a "
                    "digit)"
                )
        chosen = [v for v in (self.environment, self.token_env, self.token_file) if v]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one token source: --environment (with --pat), --token-env or --token-file"
            )
        if self.environment:
            try:
                validate_environment_id(self.environment)
            except InvalidIdentifier as exc:
                raise ValueError(str(exc)) from None
            if self.pat is None or not self.pat.get_secret_value():
                raise ValueError("--environment needs a PAT: STREAMTOKEN_PAT, --pat-file or --pat")
        if not self.deployment_id:
            self.deployment_id = f"{socket.gethostname()}-{os.getpid()}"
        if self.subscribe:
            if self.advertise_url is None and self.listen_host.strip("[]") in WILDCARD_HOSTS:
                raise ValueError(
                    f"--listen-host {self.listen_host} listens on every interface: give --advertise-url, the "
                    "URL the notifier reaches this agent at (e.g. http://POD_IP:{port}/webhook)"
                )
            problem = check_advertise_url(self.advertise_url) if self.advertise_url is not None else None
            if problem is not None:
                raise ValueError(f"--advertise-url {problem}")
        self.listen_host = self.listen_host.strip("[]")
        if not self.insecure_http:
            for option, url, what, host in self._cleartext():
                raise ValueError(
                    CLEARTEXT.format(
                        verdict="error", option=option, url=url, what=what, host=host,
                        advice=", or --insecure-http to allow it on a network you trust",
                    ).removeprefix("streamtoken run: error: ")
                )  # fmt: skip
        if self.action is None:
            self.action = RELOAD if self.inject_as else RESTART
        if self.restart not in ("always", "on-failure", "never"):
            raise ValueError(f"--restart must be always, on-failure or never, not {self.restart!r}")
        if self.reload_signal is not None:
            signal_number(self.reload_signal)
        try:
            window = self.window()
            after = parse_duration(self.adopt_after)
        except ValueError as exc:
            raise ValueError(f"--adopt-window/--adopt-after: {exc}") from None
        self._adopt_given = self.adopt is not None
        self.adopt = self._adopt_mode(window, after > 0)
        return self

    def _adopt_mode(self, window: AdoptWindow | None, after_given: bool) -> AdoptMode:
        """``adopt``, or its default: close the zero-downtime loop without restarting outside a window."""
        slot = self.slot if self.environment else None
        if self.adopt is None:
            if slot != 2:
                return "off"
            if self.token_file_out is not None:
                return "reload"
            return "restart" if window is not None or after_given else "off"
        if self.adopt != "off" and slot != 2:
            raise ValueError(
                f"--adopt {self.adopt} moves the child onto Token 2: it needs --environment with --slot 2"
            )
        if self.adopt == "reload" and self.token_file_out is None:
            raise ValueError(
                "--adopt reload hands the child the new token through --token-file-out: give it too"
            )
        return self.adopt

    def _cleartext(self) -> list[tuple[str, str, str, str]]:
        urls = [("--portal-url", self.portal_url, "the streaming token (from the child)")]
        if self.environment:
            urls.append(("--issuer-url", self.issuer_url, "the PAT"))
        if self.subscribe:
            urls.append(("--notifier-url", self.notifier_url, "the streaming token"))
        found = []
        for option, url, what in urls:
            host = cleartext_host(url)
            if host is not None:
                found.append((option, url, what, host))
        return found

    # --- what the rest of the agent reads ----------------------------------------------------------------

    def window(self) -> AdoptWindow | None:
        return parse_window(self.adopt_window) if self.adopt_window else None

    @property
    def chosen_action(self) -> Action:
        return self.action or (RELOAD if self.inject_as else RESTART)

    @property
    def reload_signum(self) -> int | None:
        """The signal a reload sends: ``reload_signal``, else SIGHUP unless a token file tells the child."""
        if self.reload_signal is None:
            return None if self.token_file_out else int(signal.SIGHUP)
        return signal_number(self.reload_signal)

    def policy(self) -> Policy:
        restart: RestartPolicy = self.restart  # type: ignore[assignment]  # checked by the validator
        return Policy(
            backoff_initial=self.backoff_initial,
            backoff_max=max(self.backoff_max, self.backoff_initial),
            stop_timeout=self.stop_timeout,
            restart_policy=restart,
            start_retries=self.start_retries,
            heartbeat_interval=self.heartbeat_interval,
            adopt=self.adopt or "off",
            adopt_after=parse_duration(self.adopt_after),
            adopt_window=self.window(),
        )

    def cleartext_warnings(self) -> list[str]:
        """With ``insecure_http``: one line per URL that carries a credential in clear off the machine."""
        if not self.insecure_http:
            return []
        return [
            CLEARTEXT.format(
                verdict="warning", option=option, url=url, what=what, host=host,
                advice=" (allowed by --insecure-http)",
            )
            for option, url, what, host in self._cleartext()
        ]  # fmt: skip

    def log_warnings(self) -> list[str]:
        """Configurations that work but will surprise: said once, in the log, at start."""
        warnings = []
        if (
            self.chosen_action == RELOAD
            and self.environment
            and self.slot == 1
            and self.token_file_out is None
        ):
            warnings.append(
                "action reload with Token 1: after a rotation the token the child holds is refused; "
                "the zero-downtime strategy runs on Token 2 (--slot 2)"
            )
        if self.environment and self.slot == 2 and self.adopt == "off" and not self._adopt_given:
            warnings.append(
                "--slot 2 without adoption: after a rotation the child keeps the promoted token (now "
                "Token 1), which the next rotation deactivates; give --adopt-window HH:MM-HH:MM (a graceful "
                "restart inside it, UTC) or --token-file-out (a reload), or --adopt off to silence this"
            )
        return warnings


def _read_pat_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"cannot read the PAT file {path}: {reason}") from None
    pat = text.strip()
    if not pat:
        raise ValueError(f"the PAT file {path} is empty")
    return pat


def settings_error(exc: Exception) -> str:
    """One sentence for a refused configuration (a pydantic ``ValidationError`` or a ``ValueError``)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    message = str(first.get("msg", exc)).removeprefix("Value error, ")
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"{location}: {message}" if location else message
