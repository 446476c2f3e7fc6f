"""`streamtoken` commands of the issuer: run it, mint PATs, manage environments and their tokens.

Management commands talk to the issuer over HTTP (``--issuer-url``, ``--pat``) and print one clear line
on errors. ``admin bootstrap-pat`` (alias ``admin pat``) and ``admin reencrypt`` run on the issuer's machine
with its settings and write to its database directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer

from cli.common import EXIT_SERVER, EXIT_USAGE, confirm_or_stop, fail, fail_call, print_json

CLI_TIMEOUT = 30.0  # seconds per attempt; idempotent calls are tried 3 times (shared.client.Policy)


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    DEPLOYMENT = "deployment"


RoleOption = Annotated[Role, typer.Option("--role", help="what the PAT may do", case_sensitive=False)]

DEFAULT_ISSUER_URL = "http://127.0.0.1:8001"

admin_app = typer.Typer(
    help="Administration: the first PAT (on the issuer's machine), re-encryption, republish, audit."
)
pats_app = typer.Typer(help="Personal access tokens: create, list, revoke (an admin PAT).")
env_app = typer.Typer(help="Environments: create, list, show, delete.")
tokens_app = typer.Typer(
    help="Streaming tokens of an environment: show, usage, rotate, progress, revoke, schedule."
)

IssuerUrl = Annotated[
    str, typer.Option("--issuer-url", envvar="STREAMTOKEN_ISSUER_URL", help="issuer base URL")
]
Pat = Annotated[
    str | None, typer.Option("--pat", envvar="STREAMTOKEN_PAT", help="personal access token (Bearer)")
]
JsonOut = Annotated[bool, typer.Option("--json", help="print the JSON answer as is")]
# A PAT's limits, the same in `pats create` and `admin bootstrap-pat`.
PatEnvironments = Annotated[
    list[str] | None,
    typer.Option(
        "--environment", help="limit to this environment id (repeat; a deployment PAT: exactly one)"
    ),
]
PatActions = Annotated[
    list[str] | None,
    typer.Option("--action", help="limit to read | reveal | rotate | admin | read-current (repeat)"),
]


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("issuer")(serve)
    app.add_typer(admin_app, name="admin")
    app.add_typer(pats_app, name="pats")
    app.add_typer(env_app, name="env")
    app.add_typer(tokens_app, name="tokens")


def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on (STREAMTOKEN_ISSUER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (STREAMTOKEN_ISSUER_PORT, default 8001)")] = None,
) -> None:
    """Run the issuer in the foreground with settings from the environment."""
    from services.issuer.__main__ import main

    raise typer.Exit(main(host, port))


# -- HTTP helpers -----------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_SERVER) -> NoReturn:
    fail(message, code)


def _env_path(environment_id: str, suffix: str = "") -> str:
    """``/v1/environments/{id}{suffix}`` for a valid id; anything else fails (exit 2) before a request."""
    from shared.client.issuer import env_path
    from shared.ids import InvalidIdentifier

    try:
        return env_path(environment_id, suffix)
    except InvalidIdentifier as exc:
        _fail(str(exc), EXIT_USAGE)


def _request(
    method: str,
    issuer_url: str,
    path: str,
    pat: str | None,
    *,
    json_body: Any = None,
    headers: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """One call through ``shared.client`` (its policy retries idempotent calls: reads, and the rotate with
    its Idempotency-Key, so a retry never does the change twice); the JSON answer as the issuer sent it
    (``--json`` prints it unchanged). Errors exit 3 (a 4xx) or 1 (no answer, 5xx)."""
    from shared.client import ApiCallError, Call, IssuerClient, Policy

    if not pat:
        _fail(
            "no personal access token: pass --pat or set STREAMTOKEN_PAT (an admin mints one: streamtoken "
            "pats create; the first: streamtoken admin bootstrap-pat)",
            EXIT_USAGE,
        )
    call = Call(
        method, path, path, json=json_body, params=params, headers=headers or {}, ok=(200, 201, 202, 204)
    )
    with IssuerClient(issuer_url, bearer=pat, policy=Policy(timeout=CLI_TIMEOUT)) as client:
        try:
            response = client.send(call)
        except ApiCallError as exc:
            hint = {401: " (check --pat)", 403: " (an admin PAT is needed)"}.get(exc.status or 0, "")
            clients = exc.body.get("clients")
            if clients:  # 409 token_1_in_use: who still uses Token 1
                _print_clients(clients, err=True)
            if exc.unreachable:
                _fail(f"cannot reach the issuer at {issuer_url}: {exc.message}; is it running?")
            fail_call(exc, hint)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _print_json(data: Any) -> None:
    print_json(data)


def _table(title: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(soft_wrap=False).print(table)


def _print_tokens(data: dict[str, Any], reveal: bool) -> None:
    typer.echo(f"environment  {data['environment_id']}  (generation {data['generation']})")
    for label, key in (("Token 1 (current)", "token_1"), ("Token 2 (next)   ", "token_2")):
        token = data.get(key)
        if token is None:  # only the other slot was asked for (or a deployment PAT)
            continue
        value = token["token"] if reveal else f"{token['token'][:8]}… (use --reveal to print)"
        typer.echo(f"{label}  {token['token_id']}  {value}")
    for grace in data.get("grace_tokens", []):
        typer.echo(f"in grace until {grace['valid_until']}  {grace['token_id']}")


def _print_clients(clients: list[dict[str, Any]], *, err: bool = False, title: str | None = None) -> None:
    """A table of a token's clients (address, user agent, deployment, source, last seen)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in ("address", "user agent", "deployment", "source", "last seen"):
        table.add_column(column, overflow="fold")
    for c in clients:
        table.add_row(
            c.get("address", ""),
            c.get("user_agent", ""),
            c.get("deployment_id") or "-",
            c.get("source", ""),
            c.get("last_seen_at", ""),
        )
    Console(stderr=err, soft_wrap=False).print(table)


def _print_usage(view: dict[str, Any]) -> None:
    """Per token its last use and clients (``GET .../streaming-tokens/usage``), then the deployments."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    window = view.get("window_seconds", 0)
    summary = Table(title=f"usage (clients seen in the last {_duration(window)})")
    for column in ("token", "id", "last used", "clients"):
        summary.add_column(column)
    rows = [(f"Token {t['slot']}", t) for t in view.get("tokens", [])]
    rows += [("in grace", t) for t in view.get("grace_tokens", [])]
    for label, token in rows:
        last_used = token["last_used_at"] or "never"
        summary.add_row(label, token["token_id"], last_used, str(token["client_count"]))
    console.print(summary)
    for label, token in rows:
        if token["clients"]:
            _print_clients(token["clients"], title=f"{label} ({token['token_id']}) clients")
    deployments = view.get("deployments") or []
    if deployments:
        table = Table(title="deployments (agents' heartbeats)")
        for column in ("deployment", "token", "slot", "last seen"):
            table.add_column(column)
        for d in deployments:
            slot = f"Token {d['slot']}" if d["slot"] else "in grace"
            table.add_row(d["deployment_id"], d["token_id"], slot, d["last_seen_at"])
        console.print(table)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_duration(value: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` as seconds (at least 1)."""
    text = value.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    if not number.isdigit() or int(number) * unit < 1:
        raise typer.BadParameter(f"{value!r} is not a duration like 90s, 15m, 2h or 7d")
    return int(number) * unit


# -- admin ------------------------------------------------------------------------------------------------


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated or comma-separated options as one list (None when not given)."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@admin_app.command("bootstrap-pat")
def admin_bootstrap_pat(
    subject: Annotated[str, typer.Option("--subject", help="who the token is for (e.g. alice, ci-bot)")],
    role: RoleOption = Role.MEMBER,
    ttl_days: Annotated[
        int | None,
        typer.Option(
            "--ttl-days", help="lifetime (default STREAMTOKEN_ISSUER_PAT_TTL_DAYS, at most ..._MAX_TTL_DAYS)"
        ),
    ] = None,
    environment: PatEnvironments = None,
    action: PatActions = None,
) -> None:
    """Record a PAT in the issuer's database and print it (on the issuer's machine, with its settings: the
    first admin PAT). Later PATs: `streamtoken pats create` with an admin PAT."""
    from datetime import timedelta

    from services.issuer.bootstrap import bootstrap_pat
    from services.issuer.handlers import IssuerError
    from services.issuer.secrets import SecretConfigError
    from services.issuer.settings import IssuerSettings
    from shared.logs import configure_logging

    configure_logging(
        "cli", "WARNING", json=False
    )  # stdout carries the PAT alone: $(streamtoken admin pat ...)

    if not subject.strip():
        _fail("--subject must not be empty", EXIT_USAGE)
    if ttl_days is not None and ttl_days < 1:
        _fail("--ttl-days must be at least 1", EXIT_USAGE)
    try:
        settings = IssuerSettings()
        _, token = bootstrap_pat(
            settings,
            subject.strip(),
            role.value,
            ttl=timedelta(days=ttl_days) if ttl_days is not None else None,
            environments=_split(environment),
            actions=_split(action),
            created_by="bootstrap-pat",
        )
    except (SecretConfigError, IssuerError, ValueError) as exc:
        _fail(str(getattr(exc, "message", exc)), EXIT_USAGE)
    typer.echo(token)


admin_app.command("pat", help="The same as `admin bootstrap-pat` (kept for scripts).")(admin_bootstrap_pat)


@admin_app.command("reencrypt")
def admin_reencrypt() -> None:
    """Encrypt every stored token and idempotent answer again with the current (first) key of
    STREAMTOKEN_ISSUER_ENCRYPTION_KEY (on the issuer's machine); then the old keys can be dropped."""
    from services.issuer.bootstrap import reencrypt
    from services.issuer.crypto import DecryptionError
    from services.issuer.secrets import SecretConfigError
    from services.issuer.settings import IssuerSettings
    from shared.logs import configure_logging

    configure_logging("cli", "WARNING", json=False)

    try:
        tokens, answers = reencrypt(IssuerSettings())
    except (SecretConfigError, DecryptionError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    typer.echo(f"re-encrypted {tokens} tokens and {answers} idempotent answers with the current key")


# -- PATs -------------------------------------------------------------------------------------------------


@pats_app.command("create")
def pats_create(
    subject: Annotated[str, typer.Option("--subject", help="who the token is for")],
    role: RoleOption = Role.MEMBER,
    ttl_days: Annotated[
        int | None, typer.Option("--ttl-days", help="lifetime (default: the issuer's)")
    ] = None,
    environment: PatEnvironments = None,
    action: PatActions = None,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Mint a PAT (admin); it is printed this once, the issuer keeps only its record."""
    body: dict[str, Any] = {"subject": subject, "role": role.value}
    if ttl_days is not None:
        body["ttl_days"] = ttl_days
    if (envs := _split(environment)) is not None:
        body["environments"] = envs
    if (actions := _split(action)) is not None:
        body["actions"] = actions
    data = _request("POST", issuer_url, "/v1/pats", pat, json_body=body)
    if as_json:
        _print_json(data)
        return
    typer.echo(
        f"created PAT {data['id']} for {data['subject']} ({data['role']}), expires {data['expires_at']}",
        err=True,
    )
    typer.echo(data["token"])


@pats_app.command("list")
def pats_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="PATs per page")] = 100,
    all_pages: Annotated[bool, typer.Option("--all", help="follow every page")] = False,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """List PATs, oldest first (admin): ids, subjects, roles, scopes and state; never a token."""
    found: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        data = _request("GET", issuer_url, "/v1/pats", pat, params=params)
        found.extend(data["pats"])
        after = data.get("next")
        if not all_pages or not after:
            break
    if as_json:
        _print_json({"pats": found, "next": after})
        return
    rows = []
    for p in found:
        state = "revoked" if p["revoked_at"] else f"expires {p['expires_at']}"
        scope = ",".join(p["environments"]) if p["environments"] else "all environments"
        actions = ",".join(p["actions"]) if p["actions"] else "all actions"
        rows.append((p["id"], p["subject"], p["role"], scope, actions, state))
    _table("PATs", ("id", "subject", "role", "environments", "actions", "state"), rows)
    if after and not all_pages:
        typer.echo(f"more: --all, or the API's ?after={after}", err=True)


@pats_app.command("revoke")
def pats_revoke(pat_id: str, issuer_url: IssuerUrl = DEFAULT_ISSUER_URL, pat: Pat = None) -> None:
    """Revoke a PAT by id (admin): refused at once by this issuer, within seconds by its replicas."""
    if not pat_id.isalnum() or len(pat_id) > 64:
        _fail("a PAT id is the hex id `streamtoken pats list` shows", EXIT_USAGE)
    data = _request("DELETE", issuer_url, f"/v1/pats/{pat_id}", pat)
    typer.echo(f"revoked PAT {data['id']} ({data['subject']})")


@admin_app.command("republish")
def admin_republish(issuer_url: IssuerUrl = DEFAULT_ISSUER_URL, pat: Pat = None) -> None:
    """Publish the current state of every environment to Kafka again (e.g. after a broker lost its data)."""
    result = _request("POST", issuer_url, "/v1/admin/republish", pat)
    typer.echo(
        f"queued {result['environments']} environments and {result['tombstones']} tombstones for publishing"
    )


@admin_app.command("audit")
def admin_audit(
    environment: Annotated[str | None, typer.Option("--environment", help="only this environment id")] = None,
    limit: Annotated[int, typer.Option(help="newest entries to show")] = 50,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Show the audit log, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if environment:
        params["environment_id"] = environment
    data = _request("GET", issuer_url, "/v1/admin/audit", pat, params=params)
    if as_json:
        _print_json(data)
        return
    rows = [(e["at"], e["actor"], e["action"], e["environment_id"] or "-") for e in data["entries"]]
    _table("audit log (newest first)", ("at", "actor", "action", "environment"), rows)


# -- environments -----------------------------------------------------------------------------------------


@env_app.command("create")
def env_create(
    org: Annotated[str, typer.Option(help="organisation slug")],
    project: Annotated[str, typer.Option(help="project slug")],
    name: Annotated[str, typer.Option(help="environment slug (e.g. prod)")],
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Create an environment with its Token 1 and Token 2 (admin)."""
    data = _request(
        "POST", issuer_url, "/v1/environments", pat, json_body={"org": org, "project": project, "name": name}
    )
    if as_json:
        _print_json(data)
    else:
        typer.echo(
            f"created {data['id']} (generation {data['generation']}); "
            f"show its tokens: streamtoken tokens show {data['id']}"
        )


@env_app.command("list")
def env_list(issuer_url: IssuerUrl = DEFAULT_ISSUER_URL, pat: Pat = None, as_json: JsonOut = False) -> None:
    """List environments."""
    data = _request("GET", issuer_url, "/v1/environments", pat)
    if as_json:
        _print_json(data)
        return
    if not data["environments"]:
        typer.echo("no environments yet; create one: streamtoken env create --org O --project P --name N")
        return
    rows = [(e["id"], str(e["generation"]), e["updated_at"]) for e in data["environments"]]
    _table("environments", ("id", "generation", "updated"), rows)


@env_app.command("show")
def env_show(
    environment_id: str, issuer_url: IssuerUrl = DEFAULT_ISSUER_URL, pat: Pat = None, as_json: JsonOut = False
) -> None:
    """Show one environment (token ids, not tokens) as JSON (``--json`` is accepted for uniformity)."""
    _print_json(_request("GET", issuer_url, _env_path(environment_id), pat))


@env_app.command("delete")
def env_delete(
    environment_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
) -> None:
    """Delete an environment: both tokens stop working (admin)."""
    confirm_or_stop(f"Delete {environment_id}? Both its tokens stop working.", yes)
    _request("DELETE", issuer_url, _env_path(environment_id), pat)
    typer.echo(f"deleted {environment_id}")


# -- tokens -----------------------------------------------------------------------------------------------


@tokens_app.command("show")
def tokens_show(
    environment_id: str,
    reveal: Annotated[bool, typer.Option("--reveal", help="print the tokens in full")] = False,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Show Token 1 and Token 2 of an environment, with who used each lately (every display is
    audit-logged; ``--json`` adds the usage view as ``usage_view``)."""
    data = _request("GET", issuer_url, _env_path(environment_id, "/streaming-tokens"), pat)
    view = _request("GET", issuer_url, _env_path(environment_id, "/streaming-tokens/usage"), pat)
    if as_json:
        _print_json({**data, "usage_view": view})
        return
    _print_tokens(data, reveal)
    _print_usage(view)


@tokens_app.command("usage")
def tokens_usage(
    environment_id: str, issuer_url: IssuerUrl = DEFAULT_ISSUER_URL, pat: Pat = None, as_json: JsonOut = False
) -> None:
    """Who uses which token: last use, clients and deployments per token (no token is shown or
    audit-logged) — check it before a rotation."""
    view = _request("GET", issuer_url, _env_path(environment_id, "/streaming-tokens/usage"), pat)
    if as_json:
        _print_json(view)
    else:
        _print_usage(view)


def _progress_line(p: dict[str, Any]) -> str:
    deployments = p.get("deployments")
    if deployments is None:
        told = f"deployments: unknown ({p.get('deployments_reason', 'no answer')})"
    else:
        told = (
            f"deployments: {deployments['notified']}/{deployments['subscribed']} notified, "
            f"{deployments['acknowledged']} acknowledged, {deployments['dead']} dead"
        )
    broker = "applied" if p["broker"]["applied"] else "pending"
    resolvers = f"{p['resolvers']['applied']}/{p['resolvers']['total']}"
    return (
        f"generation {p['generation']} ({p.get('rotation_id') or p.get('change')}): {p['state']} | "
        f"broker {broker} | resolvers {resolvers} | {told}"
    )


@tokens_app.command("progress")
def tokens_progress(
    environment_id: str,
    watch: Annotated[bool, typer.Option("--watch", help="poll until acknowledged (or --timeout)")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.0, help="seconds --watch waits (exit 1)")
    ] = 300.0,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """The latest rotation's progress: broker, resolvers, deployments notified and acknowledged."""
    path = _env_path(environment_id, "/streaming-tokens/progress")
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        progress = _request("GET", issuer_url, path, pat)
        if as_json and not watch:
            _print_json(progress)
            return
        line = _progress_line(progress)
        if line != last:
            typer.echo(line)
            last = line
        if not watch or progress["state"] == "acknowledged":
            if as_json:
                _print_json(progress)
            return
        if time.monotonic() >= deadline:
            _fail(f"not acknowledged within {timeout:g} s: {line}")
        time.sleep(1.0)


@tokens_app.command("rotate")
def tokens_rotate(
    environment_id: str,
    grace_period_seconds: Annotated[
        int, typer.Option("--grace-period-seconds", help="keep the old Token 1 valid this long")
    ] = 0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key", help="default: a fresh random key, the same for every retry of this run"
        ),
    ] = None,
    expected_generation: Annotated[
        int | None,
        typer.Option(
            "--expected-generation",
            min=1,
            help="rotate only from this generation (default: the one read just before)",
        ),
    ] = None,
    if_unused: Annotated[
        str | None,
        typer.Option(
            "--if-unused",
            help="rotate only if Token 1 was unused this long (15m, 2h, 7d); else exit 3 listing its clients",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="with --if-unused: rotate even if Token 1 is in use")
    ] = False,
    reveal: Annotated[bool, typer.Option("--reveal", help="print the tokens in full")] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="wait until the broker and every resolver accept the new tokens and refuse the old one",
        ),
    ] = False,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", min=0.0, help="seconds --wait waits before it fails (exit 1)")
    ] = 60.0,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Rotate: Token 1 is deactivated, Token 2 becomes Token 1, a new Token 2 is issued (admin).

    The current generation is read first and sent as If-Match, and one Idempotency-Key serves every retry of
    this run: a retried or repeated call never rotates twice."""
    body: dict[str, Any] = {"grace_period_seconds": grace_period_seconds}
    if if_unused is not None:
        body["if_unused_seconds"] = parse_duration(if_unused)
        body["force"] = force
    elif force:
        _fail("--force goes with --if-unused", EXIT_USAGE)
    if expected_generation is None:
        current = _request("GET", issuer_url, _env_path(environment_id), pat)
        expected_generation = int(current["generation"])
    data = _request(
        "POST",
        issuer_url,
        _env_path(environment_id, "/streaming-tokens/rotate"),
        pat,
        json_body=body,
        headers={
            "Idempotency-Key": idempotency_key or uuid.uuid4().hex,
            "If-Match": f'"{expected_generation}"',
        },
    )
    if wait:
        data["propagation"] = _wait_for_propagation(
            environment_id, data["generation"], wait_timeout, issuer_url, pat
        )
    if as_json:
        _print_json(data)
        return
    typer.echo("rotated:")
    _print_tokens(data, reveal)


def _broker_line(state: dict[str, Any], generation: int) -> tuple[bool, str]:
    broker, applied = state["broker"], state["broker_generation"]
    if broker == "off":
        return True, "broker: off (this broker does not enforce streaming tokens)"
    if broker == "applied" or (applied is not None and applied >= generation):
        return True, f"broker: applied (generation {applied})"
    return False, f"broker: pending (broker at generation {applied}, waiting for {generation})"


def _resolvers_line(state: dict[str, Any], generation: int) -> tuple[bool, str]:
    resolvers = state.get("resolvers", "unknown")
    if resolvers == "unknown":
        return True, "resolvers: unknown (the issuer has no STREAMTOKEN_ISSUER_RESOLVER_URLS)"
    detail = state.get("resolver_detail") or []
    done = sum(1 for r in detail if r.get("applied"))
    if resolvers == "applied":
        return True, f"resolvers: applied ({done} of {len(detail)} at generation {generation} or newer)"
    waiting = []
    for r in detail:
        if r.get("applied"):
            continue
        if r.get("error"):
            waiting.append(f"{r['url']}: {r['error']}")
        elif not r.get("ready"):
            waiting.append(f"{r['url']}: not ready (at {r.get('generation')})")
        else:
            waiting.append(f"{r['url']}: at generation {r.get('generation')}")
    return False, f"resolvers: pending ({done} of {len(detail)} applied; " + "; ".join(waiting) + ")"


def _wait_for_propagation(
    environment_id: str, generation: int, timeout_s: float, issuer_url: str, pat: str | None
) -> dict[str, Any]:
    """Poll ``.../streaming-tokens/propagation`` until the broker matches ``generation`` (or is off) and
    every resolver replica serves it (or none is configured); progress on stderr; exit 1 on timeout."""
    path = _env_path(environment_id, "/streaming-tokens/propagation")
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    printed: set[str] = set()
    while True:
        state = _request("GET", issuer_url, path, pat)
        lines = [_broker_line(state, generation), _resolvers_line(state, generation)]
        for _, line in lines:
            if line not in printed:
                typer.echo(line, err=True)
                printed.add(line)
        if all(done for done, _ in lines):
            return dict(state)
        if time.monotonic() >= deadline:
            missing = " and ".join(
                part
                for part, (done, _) in zip(("the broker", "the resolvers"), lines, strict=True)
                if not done
            )
            _fail(
                f"rotated, but {missing} did not apply generation {generation} of {environment_id} "
                f"within {timeout_s:g} s ({'; '.join(line for done, line in lines if not done)}); the "
                "issuer keeps retrying the broker (see broker_access in its /health/ready) and the "
                "resolvers follow the topic"
            )
        time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 2, 1.0)


@tokens_app.command("schedule")
def tokens_schedule(
    environment_id: str,
    every_days: Annotated[
        float | None, typer.Option("--every-days", min=0.001, help="rotate every N days")
    ] = None,
    unused_window: Annotated[
        str, typer.Option("--unused-window", help="only once Token 1 was unused this long")
    ] = "15m",
    deadline_days: Annotated[
        float | None,
        typer.Option("--deadline-days", min=0.0, help="rotate anyway this many days after it was due"),
    ] = None,
    warn_before: Annotated[
        str, typer.Option("--warn-before", help="warn subscribed deployments this long before")
    ] = "1d",
    grace_period_seconds: Annotated[int, typer.Option("--grace-period-seconds", min=0)] = 0,
    off: Annotated[bool, typer.Option("--off", help="remove the schedule")] = False,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Show, set (``--every-days``) or remove (``--off``) the environment's scheduled rotation (admin to
    change): every N days, once Token 1 is unused for the window, forced after the deadline."""
    path = _env_path(environment_id, "/rotation-schedule")
    if off:
        _request("DELETE", issuer_url, path, pat)
        typer.echo(f"no scheduled rotation for {environment_id} any more")
        return
    if every_days is None:
        data = _request("GET", issuer_url, path, pat)
    else:
        data = _request(
            "PUT",
            issuer_url,
            path,
            pat,
            json_body={
                "every_days": every_days,
                "unused_window_seconds": parse_duration(unused_window),
                "deadline_days": deadline_days,
                "warn_before_seconds": 0 if warn_before.strip() in ("0", "") else parse_duration(warn_before),
                "grace_period_seconds": grace_period_seconds,
            },
        )
    if as_json:
        _print_json(data)
        return
    forced = f", forced at {data['forced_at']}" if data.get("forced_at") else ", never forced"
    typer.echo(
        f"{environment_id}: every {data['every_days']:g} days once Token 1 is unused for "
        f"{_duration(data['unused_window_seconds'])}; next due {data['due_at']} (warning at "
        f"{data['warn_at']}{forced}); last: {data.get('last_outcome') or '-'}"
    )


@tokens_app.command("revoke")
def tokens_revoke(
    environment_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    reveal: Annotated[bool, typer.Option("--reveal", help="print the tokens in full")] = False,
    issuer_url: IssuerUrl = DEFAULT_ISSUER_URL,
    pat: Pat = None,
    as_json: JsonOut = False,
) -> None:
    """Emergency: replace both tokens at once; every client using either stops working (admin)."""
    confirm_or_stop(f"Revoke both tokens of {environment_id}? Every client using them stops.", yes)
    data = _request("POST", issuer_url, _env_path(environment_id, "/streaming-tokens/revoke"), pat)
    if as_json:
        _print_json(data)
        return
    typer.echo("revoked; new tokens:")
    _print_tokens(data, reveal)
