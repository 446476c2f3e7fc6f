"""The whole stack as a user runs it, for the end-to-end tests and the fleet benchmark: the three services as
processes on a broker, an admin PAT minted in process (as ``streamtoken admin pat`` does), calls through
``shared.client``, and deployments under ``streamtoken run``."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.dev import SAMPLE_APP, Broker, Child, Stack, mint_admin_pat, service_child, service_environments
from shared.broker import free_port
from shared.client import NO_RETRY, ApiCallError, IssuerClient, ResolverClient
from shared.client.core import SyncClient
from shared.kafka_broker import ApacheKafkaBroker, KafkaCluster
from tests.support import read_records, wait_until

PRODUCED = re.compile(r"f1_producer: (\d+) messages produced to (\S+)")
STOPPED = re.compile(r"f1_producer: stopped after (\d+) messages? \(flushed\)")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.1) -> Any:
    """``tests.support.wait_until`` with the description first, as the e2e steps read."""
    return wait_until(check, timeout, what, every)


@dataclass
class Deployment:
    """A deployment under the agent: its stdout (the app's output) and stderr (the agent's JSON log)."""

    child: Child
    out: Path
    log: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def agent_log(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def produced(self) -> list[int]:
        """The counts the app reported as produced and flushed, in order, across its runs."""
        return [int(m.group(1)) for m in PRODUCED.finditer(self.output())]

    def starts(self) -> int:
        return self.output().count("f1_producer: producing to")


@dataclass
class RunningStack:
    urls: dict[str, str]
    env: dict[str, str]
    stack: Stack
    admin_pat: str
    tmp: Path
    clients: dict[tuple[str, str], httpx.Client] = field(default_factory=dict)
    apis: dict[str, SyncClient] = field(default_factory=dict)

    def client(self, service: str, token: str) -> httpx.Client:
        """One pooled raw HTTP client per service and token (for tests of the HTTP itself), closed with the
        stack; the harness's own calls go through ``shared.client``."""
        key = (service, token)
        if key not in self.clients:
            self.clients[key] = httpx.Client(
                base_url=self.urls[service], headers={"Authorization": f"Bearer {token}"}, timeout=30.0
            )
        return self.clients[key]

    def service_logs(self) -> str:
        return "".join(
            (self.tmp / f"{name}.log").read_text(errors="replace")
            for name in ("issuer", "resolver", "notifier")
        )

    @property
    def issuer(self) -> httpx.Client:
        return self.client("issuer", self.admin_pat)

    @property
    def issuer_api(self) -> IssuerClient:
        """The issuer through ``shared.client`` with the admin PAT."""
        if "issuer" not in self.apis:
            self.apis["issuer"] = IssuerClient(self.urls["issuer"], bearer=self.admin_pat)
        api = self.apis["issuer"]
        assert isinstance(api, IssuerClient)
        return api

    def create_environment(self, name: str) -> str:
        return self.issuer_api.create_environment("acme", f"e2e{uuid.uuid4().hex[:6]}", name).id

    def tokens(self, environment_id: str) -> dict[str, Any]:
        return self.issuer_api.streaming_tokens(environment_id).model_dump(mode="json")

    def whoami(self, token: str) -> int:
        """The resolver's status for ``token``: 200, 401, 503 while it loads (0: no answer)."""
        if "resolver" not in self.apis:
            self.apis["resolver"] = ResolverClient(self.urls["resolver"], policy=NO_RETRY)
        api = self.apis["resolver"]
        assert isinstance(api, ResolverClient)
        try:
            api.whoami(token)
        except ApiCallError as exc:
            return exc.status or 0
        return 200

    def run(self, name: str, agent_args: list[str], app_args: list[str]) -> Deployment:
        out, log = self.tmp / f"{name}.out", self.tmp / f"{name}.log"
        argv = [
            sys.executable, "-m", "cli.main", "run",
            "--issuer-url", self.urls["issuer"],
            "--portal-url", self.urls["resolver"],
            "--notifier-url", self.urls["notifier"],
            "--deployment-id", name,
            "--stop-timeout", "10",
            *agent_args,
            "--", sys.executable, "-u", str(SAMPLE_APP), *app_args,
        ]  # fmt: skip
        child = Child(
            name, argv, None, env={**self.env, "STREAMTOKEN_PAT": self.admin_pat}, stdout=out, stderr=log
        )
        self.stack.start_child(child)
        return Deployment(child, out, log)


@contextmanager
def running_stack(broker: Broker, tmp: Path, **settings: str) -> Iterator[RunningStack]:
    """Issuer, resolver and notifier as processes on ``broker``, each as its own principal (Apache Kafka),
    with a token topic of their own."""
    ports = {name: free_port() for name in ("issuer", "resolver", "notifier")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    kafka_env = service_environments(broker, f"streaming-tokens-e2e-{uuid.uuid4().hex[:8]}")
    notifier_key = uuid.uuid4().hex  # the issuer's progress view reads the notifier's rotations with it
    env = {
        "STREAMTOKEN_ENV": "dev",
        "STREAMTOKEN_DATA_DIR": str(tmp / "data"),
        "STREAMTOKEN_KAFKA_TOPIC": kafka_env["issuer"]["STREAMTOKEN_KAFKA_TOPIC"],
        "STREAMTOKEN_NOTIFIER_RESOLVER_URL": urls["resolver"],
        "STREAMTOKEN_ISSUER_RESOLVER_URLS": urls["resolver"],
        "STREAMTOKEN_ISSUER_NOTIFIER_URL": urls["notifier"],
        "STREAMTOKEN_ISSUER_NOTIFIER_INTERNAL_KEY": notifier_key,
        "STREAMTOKEN_NOTIFIER_INTERNAL_KEY": notifier_key,
        "STREAMTOKEN_NOTIFIER_RETRY_BASE_SECONDS": "0.2",
        "STREAMTOKEN_NOTIFIER_RETRY_MAX_SECONDS": "2",
        "STREAMTOKEN_LOG_JSON": "true",
        **settings,
    }
    stack = Stack(broker=None)
    running: RunningStack | None = None
    try:
        for name in ("issuer", "resolver", "notifier"):
            child = service_child(name, ports[name], {**env, **kafka_env[name]}, tmp / f"{name}.log")
            stack.start_child(child, timeout=120)
        running = RunningStack(urls, env, stack, mint_admin_pat(env), tmp)
        yield running
    finally:
        if running is not None:
            for client in running.clients.values():
                client.close()
            for api in running.apis.values():
                api.close()
        stack.stop()


def read_topic(broker: Broker, topic: str, at_least: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every record of ``topic`` (JSON values), read from the beginning of every partition (as admin)."""
    connection = (
        broker.admin_settings().librdkafka()
        if isinstance(broker, ApacheKafkaBroker | KafkaCluster)
        else {"bootstrap.servers": broker.bootstrap_servers}
    )
    records = read_records(connection, topic, at_least, timeout, settle=2.0)
    return [json.loads(r.value) for r in records if r.value is not None]
