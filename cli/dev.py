"""``streamtoken dev [--demo]``: the whole local stack in the foreground.

Starts the embedded broker, then each service found as ``services.<name>.__main__`` as a child process in
its own process group, waits until each answers ``/health/ready`` (showing progress), and on Ctrl-C (or
SIGTERM) stops every group it started and every process they started, leaving nothing behind.

With ``--demo`` it then creates demo data through the issuer API (an admin PAT minted in process, as
``streamtoken admin pat`` does; org ``acme`` / project ``telemetry`` with ``dev`` and ``prod``) and runs
``examples/f1_producer.py`` - an unmodified quixstreams app - under the deployment agent, and prints the
URLs, the PAT, dev's tokens and the one command that rotates them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any

import typer

from cli.supervise import Restarts, exit_reason
from shared.broker import DEFAULT_PORT, BrokerError, EmbeddedBroker, port_is_free
from shared.broker_access import ISSUER_USER, NOTIFIER_USER, RESOLVER_USER
from shared.kafka_broker import ApacheKafkaBroker, KafkaCluster, java_available
from shared.topics import STREAMING_TOKENS

SERVICE_PORTS = {"issuer": 8001, "resolver": 8002, "notifier": 8003}
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_APP = REPO_ROOT / "examples" / "f1_producer.py"
DEMO_ORG, DEMO_PROJECT, DEMO_ENVIRONMENTS = "acme", "telemetry", ("dev", "prod")
DEMO_DEPLOYMENT = "demo-f1-producer"


SERVICE_USERS = {"issuer": ISSUER_USER, "resolver": RESOLVER_USER, "notifier": NOTIFIER_USER}
NO_ENFORCEMENT = (
    "WARNING: the embedded Tansu broker enforces nothing - no TLS, no SASL, no ACLs: any client can read and "
    "write every environment's topics and the control topic. Use --broker kafka (Java 17+) for a broker "
    "that scopes each token."
)
Broker = EmbeddedBroker | ApacheKafkaBroker | KafkaCluster


class BrokerKind(StrEnum):
    KAFKA = "kafka"  # Apache Kafka: TLS, SCRAM, ACLs
    EMBEDDED = "embedded"  # Tansu: enforces nothing


def default_broker_kind() -> str:
    """``kafka`` where Java 17+ runs, else the Tansu fallback ``embedded``."""
    return "kafka" if java_available() else "embedded"


def start_broker(
    kind: str, port: int, data_dir: Path, log: Path | None, progress: Callable[[str], None] | None = None
) -> Broker:
    """Start Apache Kafka (data kept in ``data_dir/kafka``) or the Tansu fallback; raises BrokerError."""
    if kind == "kafka":
        return ApacheKafkaBroker(data_dir / "kafka", port=port, progress=progress).start()
    return EmbeddedBroker(port=port, log_path=log).start()


def service_environments(broker: Broker, topic: str = STREAMING_TOKENS) -> dict[str, dict[str, str]]:
    """Each service's ``STREAMTOKEN_KAFKA_*`` variables: its own principal on Apache Kafka (after granting
    the services their ACLs on ``topic``), the open PLAINTEXT listener on Tansu."""
    if isinstance(broker, ApacheKafkaBroker | KafkaCluster):
        broker.grant_services(topic)
        return {name: broker.environment_for(user, topic=topic) for name, user in SERVICE_USERS.items()}
    return {
        name: {
            "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "STREAMTOKEN_KAFKA_TOPIC": topic,
        }
        for name in SERVICE_USERS
    }


class Interrupted(Exception):
    """Ctrl-C arrived while the stack was starting."""


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    stdout: Path | None = None  # None: the terminal
    stderr: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0


class Stack:
    """Children started in order, each in its own process group, all stopped together."""

    def __init__(self, broker: Broker | None, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.broker = broker
        self.children: list[Child] = []
        self.should_stop = should_stop

    def start_child(
        self, child: Child, timeout: float = 60.0, progress: Callable[[str], None] | None = None
    ) -> None:
        self._spawn(child)
        self.children.append(child)
        if child.ready_url:
            wait_ready(child, timeout, self.should_stop, progress)

    def restart_child(self, child: Child) -> None:
        """Start a child that died again, in place (its readiness is not awaited: the loop goes on)."""
        self._spawn(child)

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **child.env}
        handles: list[IO[bytes]] = []
        try:
            out = _open_log(child.stdout, handles)
            err = _open_log(child.stderr, handles) if child.stderr != child.stdout else out
            child.process = subprocess.Popen(
                child.argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            for handle in handles:
                handle.close()
        child.started_at = time.monotonic()

    def stop(self, timeout: float = 10.0) -> None:
        import psutil

        # What the children started (an agent's deployment lives in a session of its own): find it before
        # the parents go, kill what is left of it at the end.
        descendants: list[psutil.Process] = []
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                with contextlib.suppress(psutil.Error):
                    descendants += psutil.Process(child.process.pid).children(recursive=True)
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
            _signal_group(child.process.pid, signal.SIGKILL)  # stragglers left in the group
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(descendants, timeout=5)
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()

    def first_exited(self, names: set[str] | None = None) -> Child | None:
        return next(
            (
                c
                for c in self.children
                if (names is None or c.name in names) and c.process and c.process.poll() is not None
            ),
            None,
        )


def _open_log(path: Path | None, handles: list[IO[bytes]]) -> IO[bytes] | None:
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    handles.append(handle)
    return handle


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def wait_ready(
    child: Child,
    timeout: float,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[str], None] | None = None,
) -> None:
    import httpx

    assert child.process is not None
    assert child.ready_url is not None
    started = time.monotonic()
    deadline = started + timeout
    next_note = started + 5.0
    while time.monotonic() < deadline:
        if should_stop():
            raise Interrupted
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.process.returncode} while starting")
        try:
            if httpx.get(child.ready_url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if progress is not None and time.monotonic() >= next_note:
            progress(f"  ... still waiting for {child.name} ({time.monotonic() - started:.0f} s)")
            next_note += 5.0
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} was not ready at {child.ready_url} after {timeout:g} s")


def service_child(name: str, port: int, env: dict[str, str], log: Path | None) -> Child:
    """The service ``name`` as a child process on 127.0.0.1:``port``, ready once ``/health/ready`` is 200."""
    return Child(
        name,
        [sys.executable, "-m", f"services.{name}"],
        f"http://127.0.0.1:{port}/health/ready",
        env={
            **env,
            f"STREAMTOKEN_{name.upper()}_HOST": "127.0.0.1",
            f"STREAMTOKEN_{name.upper()}_PORT": str(port),
        },
        stdout=log,
        stderr=log,
    )


def available_services() -> list[str]:
    return [name for name in SERVICE_PORTS if _has_module(f"services.{name}.__main__")]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _tail(path: Path | None, lines: int = 8) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in text)


# --- demo data ---------------------------------------------------------------------------------------


class DemoError(Exception):
    """A demo step failed; the message is one sentence."""


def mint_admin_pat(
    env: dict[str, str],
    *,
    subject: str = "demo-admin",
    role: str = "admin",
    environments: list[str] | None = None,
) -> str:
    """A PAT recorded in the issuer's database, in process (``services.issuer.bootstrap.bootstrap_pat``,
    what ``streamtoken admin pat`` runs), with the issuer's settings read from ``env`` over this process's
    environment; e.g. a deployment PAT for the demo agent with ``role="deployment"``."""
    from services.issuer.bootstrap import bootstrap_pat
    from services.issuer.handlers import IssuerError
    from services.issuer.secrets import SecretConfigError
    from services.issuer.settings import IssuerSettings

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        settings = IssuerSettings()
    except ValueError as exc:
        raise DemoError(f"the issuer's settings are not valid: {str(exc).splitlines()[0]}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        _, token = bootstrap_pat(
            settings, subject, role, environments=environments, created_by="streamtoken-dev"
        )
    except (SecretConfigError, IssuerError, ValueError) as exc:
        raise DemoError(f"minting a PAT failed: {getattr(exc, 'message', exc)}") from None
    return token


def wait_token_known(resolver_url: str, token: str, timeout: float, should_stop: Callable[[], bool]) -> bool:
    """Wait until the resolver accepts ``token`` (it learns tokens from Kafka, a moment after the issuer)."""
    from shared.client import ApiCallError, Policy, ResolverClient

    deadline = time.monotonic() + timeout
    with ResolverClient(resolver_url, policy=Policy(timeout=2.0, retries=0)) as resolver:
        while time.monotonic() < deadline and not should_stop():
            try:
                resolver.whoami(token)
                return True
            except ApiCallError:
                time.sleep(0.3)
    return False


@dataclass
class DemoData:
    pat: str
    environments: list[str]
    tokens: dict[str, Any]


def create_demo_data(issuer_url: str, pat: str) -> DemoData:
    """Create (or read back) the demo environments and dev's tokens with ``shared.client``."""
    from shared.client import ApiCallError, IssuerClient, Policy

    try:
        with IssuerClient(issuer_url, bearer=pat, policy=Policy(timeout=15.0)) as issuer:
            environments = [
                issuer.ensure_environment(DEMO_ORG, DEMO_PROJECT, name).id for name in DEMO_ENVIRONMENTS
            ]
            tokens = issuer.streaming_tokens(environments[0]).model_dump(mode="json")
    except ApiCallError as exc:
        raise DemoError(exc.describe()) from None
    return DemoData(pat, environments, tokens)


def agent_argv(environment_id: str, urls: dict[str, str], subscribe: bool) -> list[str]:
    argv = [
        sys.executable, "-m", "cli.main", "run",
        "--environment", environment_id,
        "--issuer-url", urls["issuer"],
        "--portal-url", urls["resolver"],
        "--notifier-url", urls["notifier"],
        "--deployment-id", DEMO_DEPLOYMENT,
        "--stop-timeout", "10",
    ]  # fmt: skip
    if not subscribe:
        argv.append("--no-subscribe")
    return [*argv, "--", sys.executable, str(SAMPLE_APP), "--interval", "0.5"]


def _program() -> str:
    if shutil.which("streamtoken"):
        return "streamtoken"
    local = Path(sys.executable).parent / "streamtoken"
    if local.exists():
        try:
            return str(local.relative_to(Path.cwd()))
        except ValueError:
            return str(local)
    return "streamtoken"


# --- the command -------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    app.command("dev")(dev)


def dev(
    kafka_port: Annotated[int, typer.Option(help="port of the broker")] = DEFAULT_PORT,
    broker_kind: Annotated[
        BrokerKind | None,
        typer.Option(
            "--broker",
            help="kafka (Apache Kafka from Maven jars: TLS, SCRAM, ACLs) or embedded (Tansu: enforces "
            "nothing); default kafka where Java 17+ is installed",
            show_default=False,
        ),
    ] = None,
    issuer_port: Annotated[int, typer.Option(help="port of the issuer")] = SERVICE_PORTS["issuer"],
    resolver_port: Annotated[int, typer.Option(help="port of the resolver")] = SERVICE_PORTS["resolver"],
    notifier_port: Annotated[int, typer.Option(help="port of the notifier")] = SERVICE_PORTS["notifier"],
    data_dir: Annotated[Path, typer.Option(help="where the SQLite databases, keys and logs live")] = Path(
        ".streamtoken"
    ),
    demo: Annotated[
        bool, typer.Option("--demo/--no-demo", help="create demo environments and a sample deployment")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="show the services' logs here instead of in DATA_DIR/logs/"),
    ] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for each service to be ready")] = 60.0,
) -> None:
    """Run the broker and every service in the foreground until Ctrl-C."""
    kind = broker_kind.value if broker_kind is not None else default_broker_kind()
    os.environ["STREAMTOKEN_ENV"] = "dev"  # the local stack: the broker started here and its children
    from shared.logs import configure_logging

    # This console shows progress lines; the issuer code run here (minting the demo PATs) logs warnings only.
    configure_logging("dev", "WARNING", json=False)
    ports = {"issuer": issuer_port, "resolver": resolver_port, "notifier": notifier_port}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    stopping = False

    def _stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    services = available_services()
    missing = [name for name in SERVICE_PORTS if name not in services]
    busy = [f"{name} ({ports[name]})" for name in services if not port_is_free("127.0.0.1", ports[name])]
    if busy:
        typer.echo(f"error: port in use for {', '.join(busy)}; is another stack running?", err=True)
        raise typer.Exit(1)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"

    typer.echo("starting Apache Kafka ..." if kind == "kafka" else "starting the embedded broker ...")
    began = time.monotonic()
    try:
        broker = start_broker(
            kind, kafka_port, data_dir, None if verbose else _fresh(logs / "broker.log"), typer.echo
        )
        kafka_env = service_environments(broker)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    stack = Stack(broker, lambda: stopping)
    if isinstance(broker, ApacheKafkaBroker):
        typer.echo(
            f"  kafka     {broker.bootstrap_servers} ready in {time.monotonic() - began:.1f} s (Apache Kafka "
            f"{broker.version}, SASL_SSL + SCRAM + ACLs; CA {broker.ca_path}; data {broker.data_dir})"
        )
    else:
        typer.echo(f"  kafka     {broker.bootstrap_servers} (embedded Tansu, memory storage)")
        typer.echo(NO_ENFORCEMENT, err=True)
    notifier_key = secrets.token_urlsafe(24)
    common = {
        "STREAMTOKEN_ENV": "dev",
        "STREAMTOKEN_AGENT_STATE_DIR": str(data_dir / "agent"),
        "STREAMTOKEN_DATA_DIR": str(data_dir),
        "STREAMTOKEN_NOTIFIER_RESOLVER_URL": urls["resolver"],
        "STREAMTOKEN_ISSUER_RESOLVER_URLS": urls["resolver"],  # the propagation view polls it
        # The progress view reads the notifier with a key of this run (issue 12).
        "STREAMTOKEN_ISSUER_NOTIFIER_URL": urls["notifier"],
        "STREAMTOKEN_ISSUER_NOTIFIER_INTERNAL_KEY": notifier_key,
        "STREAMTOKEN_NOTIFIER_INTERNAL_KEY": notifier_key,
    }
    for name in missing:
        typer.echo(f"  {name:<9} missing (services/{name}/__main__.py not found); starting without it")
    up: list[str] = []
    status = 0
    try:
        for name in services:
            log_path = None if verbose else _fresh(logs / f"{name}.log")
            child = service_child(name, ports[name], {**common, **kafka_env[name]}, log_path)
            typer.echo(f"starting {name} ...")
            began = time.monotonic()
            try:
                stack.start_child(child, ready_timeout, typer.echo)
            except RuntimeError as exc:
                typer.echo(f"error: {exc}; continuing without it", err=True)
                tail = _tail(log_path)
                if tail:
                    typer.echo(tail, err=True)
                continue
            up.append(name)
            typer.echo(f"  {name:<9} {urls[name]} ready in {time.monotonic() - began:.1f} s (OpenAPI: /docs)")
        if demo:
            _start_demo(stack, up, urls, common, logs, verbose, lambda: stopping)
        typer.echo("")
        typer.echo(f"Everything is up{'' if not missing else ' (missing: ' + ', '.join(missing) + ')'}.")
        if not verbose:
            typer.echo(f"Logs: {logs}/. Ctrl-C stops it all.")
        else:
            typer.echo("Ctrl-C stops it all.")
        supervise(stack, set(up), lambda: stopping, logs if not verbose else None)
    except Interrupted:
        pass
    finally:
        typer.echo("stopping ...")
        stack.stop()
        typer.echo("stopped.")
    raise typer.Exit(status)


def supervise(
    stack: Stack,
    services: set[str],
    should_stop: Callable[[], bool],
    logs: Path | None,
    restarts: Restarts | None = None,
    poll_s: float = 0.2,
) -> None:
    """Until ``should_stop``: restart the broker and any service that died, with back-off, saying which and
    why; note (once) when the demo deployment ends."""
    restarts = restarts or Restarts()
    broker_started = time.monotonic()
    while not should_stop():
        now = time.monotonic()
        broker = stack.broker
        if broker is not None and broker.poll() is not None and "broker" not in restarts.due:
            delay = restarts.exited("broker", now, now - broker_started)
            typer.echo(
                f"error: the broker exited ({exit_reason(broker.poll())}); restarting it in {delay:.1f} s"
                + (" (Apache Kafka keeps its data)" if isinstance(broker, ApacheKafkaBroker) else
                   " (Tansu keeps nothing: the issuer republishes every environment)"),
                err=True,
            )  # fmt: skip
        if broker is not None and restarts.is_due("broker", now):
            restarts.started("broker")
            broker.stop()
            try:
                broker.start()
                broker_started = time.monotonic()
                typer.echo(f"  kafka     {broker.bootstrap_servers} restarted", err=True)
            except BrokerError as exc:
                delay = restarts.exited("broker", time.monotonic(), 0.0)
                typer.echo(
                    f"error: the broker did not start again ({exc}); next try in {delay:.1f} s", err=True
                )
        for child in stack.children:
            if child.process is None or child.process.poll() is None or child.name in restarts.due:
                continue
            if child.name == DEMO_DEPLOYMENT:
                note = f" (see {logs}/agent.log)" if logs else ""
                typer.echo(
                    f"note: the demo deployment exited ({exit_reason(child.process.returncode)}){note}",
                    err=True,
                )
                child.process = None
                continue
            if child.name not in services:
                continue
            delay = restarts.exited(child.name, now, now - child.started_at)
            typer.echo(
                f"error: {child.name} exited ({exit_reason(child.process.returncode)}); restarting it in "
                f"{delay:.1f} s (attempt {restarts.attempts[child.name]})",
                err=True,
            )
            tail = _tail(child.stderr)
            if tail:
                typer.echo(tail, err=True)
        for child in stack.children:
            if restarts.is_due(child.name, now):
                restarts.started(child.name)
                stack.restart_child(child)
                typer.echo(f"  {child.name:<9} restarted (pid {child.process.pid if child.process else '?'})")
        time.sleep(poll_s)


def _fresh(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _start_demo(
    stack: Stack,
    up: list[str],
    urls: dict[str, str],
    common: dict[str, str],
    logs: Path,
    verbose: bool,
    should_stop: Callable[[], bool],
) -> None:
    typer.echo("")
    if "issuer" not in up:
        typer.echo("demo: skipped - it needs the issuer, which is not running", err=True)
        return
    typer.echo("demo: minting an admin PAT (subject demo-admin, in process like streamtoken admin pat) ...")
    try:
        pat = mint_admin_pat(common)
        typer.echo(
            f"demo: creating {DEMO_ORG}/{DEMO_PROJECT} with environments {', '.join(DEMO_ENVIRONMENTS)} ..."
        )
        data = create_demo_data(urls["issuer"], pat)
    except DemoError as exc:
        typer.echo(f"demo: failed - {exc}", err=True)
        return
    dev_id = data.environments[0]
    token_1, token_2 = data.tokens["token_1"], data.tokens["token_2"]
    deployment = "not started"
    if "resolver" not in up:
        typer.echo("demo: no sample deployment - it needs the resolver, which is not running", err=True)
    elif not SAMPLE_APP.exists():
        typer.echo(f"demo: no sample deployment - {SAMPLE_APP} not found", err=True)
    else:
        typer.echo("demo: waiting for the resolver to learn dev's tokens ...")
        if not wait_token_known(urls["resolver"], token_1["token"], 30.0, should_stop):
            typer.echo("demo: the resolver does not accept dev's token yet; starting the deployment anyway")
        try:  # the agent gets a deployment PAT: Token 1 of dev only, never prod's, never a rotation
            agent_pat = mint_admin_pat(
                common, subject=DEMO_DEPLOYMENT, role="deployment", environments=[dev_id]
            )
        except DemoError as exc:
            typer.echo(f"demo: no sample deployment - {exc}", err=True)
            return
        subscribe = "notifier" in up
        if not subscribe:
            typer.echo("demo: the notifier is not running: the deployment will not be told about rotations")
        log_path = None if verbose else _fresh(logs / "agent.log")
        typer.echo(f"demo: starting {SAMPLE_APP.relative_to(REPO_ROOT)} under the agent ...")
        stack.start_child(
            Child(
                DEMO_DEPLOYMENT,
                agent_argv(dev_id, urls, subscribe),
                None,
                env={**common, "STREAMTOKEN_PAT": agent_pat, "STREAMTOKEN_LOG_JSON": "true"},
                stdout=None,
                stderr=log_path,
            )
        )
        deployment = f"{DEMO_DEPLOYMENT}: examples/f1_producer.py under 'streamtoken run'"
        deployment += f", producing to {dev_id}-f1-data"
    program = _program()
    rule = "-" * 78
    typer.echo("")
    typer.echo(rule)
    typer.echo("streamtoken demo (local only: tokens are shown because this is a throw-away stack)")
    for name in ("issuer", "resolver", "notifier"):
        typer.echo(f"  {name:<12} {urls[name] if name in up else 'not running'}")
    if "issuer" in up:
        typer.echo(f"  page         {urls['issuer']}/ui/  (log in with the admin PAT)")
    typer.echo(f"  environments {', '.join(data.environments)}")
    typer.echo(f"  admin PAT    {data.pat}")
    typer.echo(f"  dev Token 1  {token_1['token']}  ({token_1.get('token_id')})")
    typer.echo(f"  dev Token 2  {token_2['token']}  ({token_2.get('token_id')})")
    typer.echo(f"  deployment   {deployment}")
    if isinstance(stack.broker, EmbeddedBroker):
        typer.echo(f"  broker       {NO_ENFORCEMENT}")
    typer.echo("")
    typer.echo(
        "Rotate dev's tokens and watch the deployment restart with the new Token 1 (in another terminal):"
    )
    typer.echo(f"  export STREAMTOKEN_PAT={data.pat}")
    issuer_option = (
        ""
        if urls["issuer"] == f"http://127.0.0.1:{SERVICE_PORTS['issuer']}"
        else f" --issuer-url {urls['issuer']}"
    )
    typer.echo(f"  {program} tokens rotate {dev_id}{issuer_option}")
    typer.echo(rule)
