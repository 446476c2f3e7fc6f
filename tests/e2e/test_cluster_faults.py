"""A 3-broker Apache Kafka cluster losing a node during 200 rotations (issue 10).

The real stack (issuer, resolver, notifier as processes, each as its own principal) runs on
``shared.kafka_broker.KafkaCluster``: three KRaft nodes on loopback, each broker + controller, a static
quorum of three, topics at replication factor 3 with ``min.insync.replicas=2``, the relay at ``acks=all``.
A few environments each have:

- a webhook subscription to a loopback receiver, renewed after every rotation with the environment's newest
  Token 2 (as a deployment agent does: a subscription ends with the token that made it);
- a client producing continuously to its ``{env}-f1-data`` topic (created through the Portal API, so at the
  resolver's replication factor) with an idempotent confluent-kafka producer configured only from its
  token's Portal credentials; after each rotation it moves to the new Token 2 (the zero-downtime strategy)
  and drains the old producer before that token is rotated out.

Then 200 rotations in three phases; in each one node is killed with SIGKILL mid-way and restarted a few
rotations later: an ordinary broker, the controller quorum's leader, the leader of the control topic's
partitions. A rotate call that fails during the outage (5xx, timeout) is sent again with the same
``Idempotency-Key``, bounded in count and time. The assertions are on what the services did, never retried:
the resolver applied every rotation (its generation endpoint, and the control topic read as admin holds
every generation once, in offset order), every subscription got each rotation's generation exactly once
after dedupe by ``webhook-id`` (raw duplicates are counted and printed), and every client had records
acknowledged after each restart.

Nothing here depends on the machine's speed: every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.broker import BrokerError
from shared.kafka_broker import KafkaCluster
from tests.e2e.harness import RunningStack, running_stack
from tests.support import read_records

# Bounded: 200 rotations and three kills take ~5-9 min on this project's shared 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ENVIRONMENTS = 3
ROTATIONS = 200
PHASES = ("broker", "controller", "control-leader")
# Within a phase: the node is killed after this share of its rotations, restarted this many rotations later.
KILL_AT = 1 / 3
OUTAGE_ROTATIONS = 8
ROTATE_ATTEMPTS = 30
STEP_TIMEOUT = 90.0  # bound of any one wait (a rotate call's retries, the resolver catching up, ...)
PRODUCE_EVERY = 0.1  # s between a client's records (~10/s)


# --- webhook receiver ------------------------------------------------------------------------------------


class WebhookReceiver:
    """A threaded loopback HTTP server that counts webhooks: raw, by ``webhook-id`` and by
    (subscription, generation) after dedupe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.raw = 0
        self.raw_duplicates = 0
        self.by_id: dict[str, tuple[str, int]] = {}
        self.pairs: Counter[tuple[str, int]] = Counter()
        self.first_seen: dict[tuple[str, int], float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(min(length, 1 << 16))
                receiver.record(self.headers.get("webhook-id", ""), body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, webhook_id: str, body: bytes) -> None:
        try:
            data = json.loads(body)
            key = (str(data["subscription_id"]), int(data["generation"]))
        except (ValueError, KeyError, TypeError):
            key = ("?", -1)
        with self.lock:
            self.raw += 1
            if webhook_id in self.by_id:
                self.raw_duplicates += 1
                return
            self.by_id[webhook_id] = key
            self.pairs[key] += 1
            self.first_seen.setdefault(key, time.monotonic())

    def generations(self, subscription_id: str) -> Counter[int]:
        """Generation → distinct webhook-ids received for it by ``subscription_id``."""
        with self.lock:
            return Counter({g: n for (s, g), n in self.pairs.items() if s == subscription_id})


# --- a tenant's producer ---------------------------------------------------------------------------------


def portal_config(resolver_url: str, token: str, environment_id: str) -> dict[str, Any]:
    """The token's Portal answer (``/workspaces/{ws}/broker/librdkafka``) as a confluent-kafka
    configuration (``ssl.ca.cert`` is base64 PEM, as quixstreams decodes it)."""
    with httpx.Client(base_url=resolver_url, timeout=15.0) as client:
        response = client.get(
            f"/workspaces/{environment_id}/broker/librdkafka",
            headers={"Authorization": f"Bearer {token}", "X-Version": "2.0"},
        )
    response.raise_for_status()
    portal = dict(response.json())
    config = {k: v for k, v in portal.items() if k != "ssl.ca.cert"}
    config["ssl.ca.pem"] = base64.b64decode(portal["ssl.ca.cert"]).decode("ascii")
    return {**config, "socket.timeout.ms": 10000, "log_level": 0}


class Phase:
    """The label records and rotations are counted under (read by the producers' delivery callbacks)."""

    def __init__(self, name: str = "setup") -> None:
        self.name = name


class TenantClient(threading.Thread):
    """Produces a record every ``PRODUCE_EVERY`` s with an idempotent producer from its token's Portal
    credentials; ``use(token)`` moves it to another token's credentials (the old producer is drained, not
    dropped: ``switched`` is the token once nothing is in flight on the previous one)."""

    def __init__(
        self,
        resolver_url: str,
        environment_id: str,
        topic: str,
        token: str,
        phase: Phase,
        max_seconds: float,
    ) -> None:
        super().__init__(name=f"client-{environment_id}", daemon=True)
        self.resolver_url = resolver_url
        self.environment_id = environment_id
        self.topic = topic
        self.phase = phase
        self.max_seconds = max_seconds
        self.lock = threading.Lock()
        self.wanted = token
        self.current = ""
        self.switched = ""
        self.stopping = threading.Event()
        self.produced = 0
        self.acked: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_names: Counter[str] = Counter()
        self.setup_errors: list[str] = []
        self.acks: list[tuple[float, float]] = []  # (produced at, acknowledged at), monotonic

    def use(self, token: str) -> None:
        with self.lock:
            self.wanted = token

    def stop(self) -> None:
        self.stopping.set()

    def _on_delivery(self, produced_at: float) -> Callable[[Any, Any], None]:
        def report(error: Any, _message: Any) -> None:
            phase = self.phase.name
            with self.lock:
                if error is None:
                    self.acked[phase] += 1
                    self.acks.append((produced_at, time.monotonic()))
                else:
                    self.errors[phase] += 1
                    self.error_names[str(error.name())] += 1

        return report

    def _producer(self, token: str) -> Any:
        from confluent_kafka import Producer

        config = portal_config(self.resolver_url, token, self.environment_id)
        return Producer({**config, "enable.idempotence": True, "message.timeout.ms": 120_000, "linger.ms": 5})

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        producer: Any = None
        draining: list[Any] = []
        sequence = 0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            with self.lock:
                wanted = self.wanted
            if wanted != self.current:
                try:
                    fresh = self._producer(wanted)
                except Exception as exc:  # the resolver or the broker not there yet: try again
                    self.setup_errors.append(type(exc).__name__)
                    time.sleep(0.5)
                    continue
                if producer is not None:
                    draining.append(producer)
                producer, self.current = fresh, wanted
            for old in list(draining):
                old.poll(0)
                if len(old) == 0:
                    draining.remove(old)
            if not draining:
                self.switched = self.current
            try:
                producer.produce(
                    self.topic,
                    key=self.environment_id.encode(),
                    value=f"{sequence}".encode(),
                    on_delivery=self._on_delivery(time.monotonic()),
                )
                sequence += 1
                self.produced += 1
            except BufferError:
                pass
            producer.poll(0)
            time.sleep(PRODUCE_EVERY)  # poll(timeout) returns at the first event: the rate would follow acks
        for p in [*draining, producer]:
            if p is not None:
                p.flush(30)

    def first_ack_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the acknowledgement of the first record produced after it."""
        with self.lock:
            after = [acked for produced, acked in self.acks if produced >= moment]
        return min(after) - moment if after else None


# --- environments and rotations --------------------------------------------------------------------------


@dataclass
class Rotation:
    environment_id: str
    key: str
    phase: str
    started: float
    generation: int = 0
    ok_at: float = 0.0
    applied_at: float = 0.0
    statuses: list[str] = field(default_factory=list)


@dataclass
class Tenant:
    environment_id: str
    topic: str
    deployment_id: str
    subscription_id: str
    management_key: str
    generation: int  # the newest generation a rotate call answered
    first_generation: int  # the subscription's own generation (it is told of rotations after it)
    token_2: str
    client: TenantClient


def drained(tenant: Tenant) -> bool:
    """The client produces with the newest Token 2 and nothing is in flight on an older token."""
    return tenant.client.switched == tenant.token_2


def wait_until(check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """The first truthy value of ``check()``, or None after ``timeout`` s (the caller decides)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(every)


def resolver_generation(stack: RunningStack, environment_id: str) -> int | None:
    try:
        response = httpx.get(
            f"{stack.urls['resolver']}/v1/environments/{environment_id}/generation", timeout=10
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    generation = response.json().get("generation")
    return int(generation) if generation is not None else None


def subscribe(
    stack: RunningStack, tenant_token: str, deployment_id: str, url: str, key: str | None = None
) -> httpx.Response | None:
    """Register (or, with its management key, renew) a deployment's subscription; None on a transport
    error."""
    headers = {"Authorization": f"Bearer {tenant_token}"}
    if key is not None:
        headers["X-Subscription-Key"] = key
    try:
        return httpx.post(
            f"{stack.urls['notifier']}/v1/subscriptions",
            json={"deployment_id": deployment_id, "url": url, "action": "reload"},
            headers=headers,
            timeout=15,
        )
    except httpx.HTTPError:
        return None


def create_tenant(
    stack: RunningStack, receiver_url: str, phase: Phase, index: int, max_seconds: float
) -> Tenant:
    environment_id = stack.create_environment(f"faults{index}")
    tokens = stack.tokens(environment_id)
    token_1, token_2 = tokens["token_1"]["token"], tokens["token_2"]["token"]
    assert wait_until(lambda: stack.whoami(token_1) == 200 and stack.whoami(token_2) == 200, STEP_TIMEOUT)
    created = stack.client("resolver", token_1).post(
        f"/{environment_id}/topics",
        headers={"X-Version": "2.0"},
        json={"name": "f1-data", "configuration": {"partitions": 1}},
    )
    assert created.status_code in {200, 201}, created.text
    topic = str(created.json()["id"])
    subscribed = subscribe(stack, token_2, f"deploy-{index}", receiver_url)
    assert subscribed is not None
    assert subscribed.status_code == 201, subscribed.text
    body = subscribed.json()
    client = TenantClient(stack.urls["resolver"], environment_id, topic, token_2, phase, max_seconds)
    client.start()
    return Tenant(
        environment_id,
        topic,
        f"deploy-{index}",
        str(body["id"]),
        str(body["management_key"]),
        int(tokens["generation"]),
        int(tokens["generation"]),
        token_2,
        client,
    )


def rotate(stack: RunningStack, tenant: Tenant, phase: str) -> Rotation:
    """One logical rotation: the call sent (again, with the same Idempotency-Key) until it answers 200,
    bounded in count and time. Raises AssertionError when it never does."""
    rotation = Rotation(tenant.environment_id, uuid.uuid4().hex, phase, time.monotonic())
    deadline = rotation.started + STEP_TIMEOUT
    for attempt in range(ROTATE_ATTEMPTS):
        try:
            response = stack.issuer.post(
                f"/v1/environments/{tenant.environment_id}/streaming-tokens/rotate",
                headers={"Idempotency-Key": rotation.key},
                timeout=20,
            )
        except httpx.HTTPError as exc:
            rotation.statuses.append(type(exc).__name__)
        else:
            rotation.statuses.append(str(response.status_code))
            if response.status_code == 200:
                body = response.json()
                rotation.generation = int(body["generation"])
                rotation.ok_at = time.monotonic()
                tenant.token_2 = body["token_2"]["token"]
                return rotation
            assert response.status_code >= 500 or response.status_code == 429, (
                f"rotate answered {response.status_code}: {response.text}"
            )
        if time.monotonic() > deadline:
            break
        time.sleep(min(0.2 * 2**attempt, 2.0))
    raise AssertionError(f"rotation of {tenant.environment_id} never succeeded: {rotation.statuses}")


def follow(
    stack: RunningStack,
    tenant: Tenant,
    rotation: Rotation,
    receiver_url: str,
    cluster: KafkaCluster | None = None,
) -> None:
    """What a deployment does after a rotation: once the resolver answers the new generation, renew the
    subscription with the new Token 2 and move the client to it."""
    applied = wait_until(
        lambda: (resolver_generation(stack, tenant.environment_id) or 0) >= rotation.generation,
        STEP_TIMEOUT,
        every=0.02,
    )
    assert applied, (
        f"the resolver never applied generation {rotation.generation} of {tenant.environment_id}; "
        f"the cluster: {cluster_state(cluster)}"
    )
    rotation.applied_at = time.monotonic()
    renewed = wait_until(
        lambda: (
            (r := subscribe(stack, tenant.token_2, tenant.deployment_id, receiver_url, tenant.management_key))
            is not None
            and r.status_code == 200
        ),
        STEP_TIMEOUT,
        every=0.2,
    )
    assert renewed, f"the subscription of {tenant.environment_id} could not be renewed"
    tenant.client.use(tenant.token_2)


# --- the cluster ------------------------------------------------------------------------------------------


def isr_gaps(cluster: KafkaCluster, topics: list[str]) -> list[str]:
    """The partitions of ``topics`` whose in-sync replicas are not all the nodes (empty: all in sync)."""
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient(cluster.admin_settings().librdkafka()).list_topics(timeout=10)
    except Exception as exc:
        return [f"metadata: {exc}"]
    gaps = []
    for topic in topics:
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            gaps.append(f"{topic}: {described and described.error}")
            continue
        for p in described.partitions.values():
            if len(p.isrs) < len(cluster.nodes):
                gaps.append(f"{topic}[{p.id}] leader {p.leader} isr {p.isrs}")
    return gaps


def cluster_state(cluster: KafkaCluster | None) -> str:
    """Each node's process and whether our principals authenticate there now (for failure messages)."""
    from confluent_kafka.admin import AdminClient

    from shared.broker_access import ISSUER_USER

    if cluster is None:
        return "-"
    states = []
    for node_id, node in cluster.nodes.items():
        answers = []
        for user in ("streamtoken-admin", ISSUER_USER):
            config = cluster.settings_for(user, bootstrap_servers=node.bootstrap_servers).librdkafka()
            admin = AdminClient({**config, "log_level": 0})
            try:
                admin.describe_cluster(request_timeout=5).result(6)
                answers.append(f"{user} ok")
            except Exception as exc:
                answers.append(f"{user} {str(exc)[:90]}")
        states.append(f"node {node_id} pid {node.pid} exit {node.poll()}: {'; '.join(answers)}")
    return f"controller {cluster.controller()} | " + " | ".join(states)


def pick_victim(cluster: KafkaCluster, kind: str, control_topic: str) -> tuple[int, str]:
    """The node to kill for a phase, and what it was at that moment."""
    controller = cluster.controller()
    leaders = Counter(cluster.leaders(control_topic).values())
    nodes = sorted(cluster.nodes)
    if kind == "controller":
        assert controller is not None, "no controller quorum leader found in the nodes' logs"
        node = controller
    elif kind == "control-leader":
        node = max(nodes, key=lambda n: (leaders[n], n != controller))
    else:
        others = [n for n in nodes if n != controller] or nodes
        node = min(others, key=lambda n: leaders[n])
    role = f"node {node}: controller={'yes' if node == controller else 'no'}, leads {leaders[node]} of "
    role += f"{sum(leaders.values())} control partitions"
    return node, role


def restart_in_background(cluster: KafkaCluster, report: PhaseReport) -> threading.Thread:
    """Start the killed node again from this thread and wait for it in another, so rotations go on.

    The JVM must be spawned by a thread that lives on: the broker's ``preexec_fn`` (``die_with_parent``,
    PR_SET_PDEATHSIG) sends it SIGTERM when the *thread* that forked it ends, so ``cluster.restart`` from a
    short-lived worker thread stops the node again as soon as it is ready."""
    node = cluster.nodes[report.victim]
    node.stop()
    node.launch()

    def wait() -> None:
        node.wait_ready(180)
        report.back_at = time.monotonic()

    thread = threading.Thread(target=wait, name=f"restart-{report.victim}", daemon=True)
    thread.start()
    return thread


@dataclass
class PhaseReport:
    name: str
    victim: int = 0
    role: str = ""
    rotations: int = 0
    retried: int = 0
    failed_calls: Counter[str] = field(default_factory=Counter)
    killed_at: float = 0.0
    restart_called_at: float = 0.0
    back_at: float = 0.0
    isr_at: float = 0.0
    first_ok_after_kill: float | None = None
    first_applied_after_kill: float | None = None
    produce_recovery: dict[str, float | None] = field(default_factory=dict)
    acked_after_restart: dict[str, bool] = field(default_factory=dict)

    def line(self, tenants: list[Tenant]) -> str:
        def f(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f} s"

        acked = sum(t.client.acked[self.name] for t in tenants)
        errors = sum(t.client.errors[self.name] for t in tenants)
        produce = max((v for v in self.produce_recovery.values() if v is not None), default=None)
        return (
            f"phase {self.name}: kills 1 ({self.role}), rotations {self.rotations} "
            f"(calls retried {self.retried}: {dict(self.failed_calls) or '-'}), "
            f"down {self.back_at - self.killed_at:.1f} s "
            f"(restart took {self.back_at - self.restart_called_at:.1f} s), "
            f"recover: rotate ok {f(self.first_ok_after_kill)}, "
            f"resolver applied {f(self.first_applied_after_kill)}, "
            f"producers acked {f(produce)} after the kill, full ISR {self.isr_at - self.back_at:.1f} s after "
            f"restart; records acked {acked}, errors {errors}"
        )


# --- fixtures ---------------------------------------------------------------------------------------------


@contextmanager
def tuned_cluster(data_dir: Path) -> Iterator[KafkaCluster]:
    """A started 3-node ``KafkaCluster`` (its quorum tuning, ``shared.kafka_broker.CLUSTER_PROPERTIES``, and
    the full JIT; also for ``benchmarks/chaos.py``); raises BrokerError when Apache Kafka cannot run here."""
    nodes = KafkaCluster(data_dir, size=3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    try:
        with tuned_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
            yield nodes
    except BrokerError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"Apache Kafka is required in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cluster_stack(cluster: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(cluster, tmp_path_factory.mktemp("cluster-stack")) as stack:
        yield stack


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


# --- the test ---------------------------------------------------------------------------------------------


def test_200_rotations_survive_killing_a_broker_the_controller_and_the_control_leader(
    cluster: KafkaCluster, cluster_stack: RunningStack, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    stack = cluster_stack
    control_topic = stack.env["STREAMTOKEN_KAFKA_TOPIC"]
    phase = Phase()
    tenants = [create_tenant(stack, receiver.url, phase, i, 600.0) for i in range(ENVIRONMENTS)]
    try:
        _run_phases(stack, cluster, receiver, tenants, phase, control_topic)
    finally:
        for tenant in tenants:
            tenant.client.stop()
        for tenant in tenants:
            tenant.client.join(60)


def _run_phases(
    stack: RunningStack,
    cluster: KafkaCluster,
    receiver: WebhookReceiver,
    tenants: list[Tenant],
    phase: Phase,
    control_topic: str,
) -> None:
    # Every topic the test relies on is replicated on all three nodes.
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(cluster.admin_settings().librdkafka()).list_topics(timeout=10)
    for topic in [control_topic, *(t.topic for t in tenants)]:
        replicas = {len(p.replicas) for p in metadata.topics[topic].partitions.values()}
        assert replicas == {3}, f"{topic} has replication {replicas}, not 3"
    assert wait_until(lambda: all(t.client.acked["setup"] for t in tenants), STEP_TIMEOUT), [
        (t.client.setup_errors, t.client.error_names) for t in tenants
    ]

    rotations: list[Rotation] = []
    reports: list[PhaseReport] = []
    per_phase = [
        ROTATIONS // len(PHASES) + (1 if i < ROTATIONS % len(PHASES) else 0) for i in range(len(PHASES))
    ]
    counter = 0
    for kind, count in zip(PHASES, per_phase, strict=True):
        phase.name = kind
        report = PhaseReport(kind)
        reports.append(report)
        kill_at = int(count * KILL_AT)
        restart_at = kill_at + OUTAGE_ROTATIONS
        restarter: threading.Thread | None = None
        for i in range(count):
            if i == kill_at:
                report.victim, report.role = pick_victim(cluster, kind, control_topic)
                report.killed_at = time.monotonic()
                cluster.kill(report.victim)
            if i == restart_at:
                report.restart_called_at = time.monotonic()
                restarter = restart_in_background(cluster, report)
            tenant = tenants[counter % len(tenants)]
            counter += 1
            # The client no longer produces with the token this rotation deactivates.
            wait_until(functools.partial(drained, tenant), STEP_TIMEOUT, every=0.02)
            rotation = rotate(stack, tenant, kind)
            assert rotation.generation == tenant.generation + 1, (
                f"{tenant.environment_id}: rotate answered generation {rotation.generation} after "
                f"{tenant.generation} ({rotation.statuses})"
            )
            tenant.generation = rotation.generation
            follow(stack, tenant, rotation, receiver.url, cluster)
            rotations.append(rotation)
            report.rotations += 1
            if len(rotation.statuses) > 1:
                report.retried += 1
                report.failed_calls.update(rotation.statuses[:-1])
            if i >= kill_at and report.first_ok_after_kill is None and rotation.started >= report.killed_at:
                report.first_ok_after_kill = rotation.ok_at - report.killed_at
                report.first_applied_after_kill = rotation.applied_at - report.killed_at
        assert restarter is not None
        restarter.join(240)
        assert report.back_at, f"node {report.victim} did not come back"
        print(f"phase {kind}: {report.rotations} rotations, {report.role} killed and back")
        # Recovered: the node back in every ISR, and every client acknowledged after the restart.
        topics = [control_topic, *(t.topic for t in tenants)]
        in_sync = wait_until(lambda: not isr_gaps(cluster, topics), 180, every=0.5)  # noqa: B023
        assert in_sync, (
            f"not all in sync 180 s after node {report.victim} came back: {isr_gaps(cluster, topics)}"
        )
        report.isr_at = time.monotonic()
        for tenant in tenants:
            acked = wait_until(functools.partial(tenant.client.first_ack_after, report.back_at), STEP_TIMEOUT)
            report.acked_after_restart[tenant.environment_id] = acked is not None
            report.produce_recovery[tenant.environment_id] = tenant.client.first_ack_after(report.killed_at)
        print(report.line(tenants))

    phase.name = "after"
    _check(stack, cluster, receiver, tenants, rotations, reports, control_topic)


def _check(
    stack: RunningStack,
    cluster: KafkaCluster,
    receiver: WebhookReceiver,
    tenants: list[Tenant],
    rotations: list[Rotation],
    reports: list[PhaseReport],
    control_topic: str,
) -> None:
    assert len(rotations) == ROTATIONS
    # No rotation lost: each environment's rotate answers went up by one, to its final generation...
    for tenant in tenants:
        mine = [r.generation for r in rotations if r.environment_id == tenant.environment_id]
        assert mine == list(range(tenant.first_generation + 1, tenant.generation + 1)), tenant.environment_id
        # ... which the resolver answers.
        assert resolver_generation(stack, tenant.environment_id) == tenant.generation

    # The control topic, read as admin: each environment's generations strictly increase in offset order,
    # none missing (nothing is compacted away in this time: the active segment is never cleaned).
    expected = len(tenants) + ROTATIONS
    records = read_records(
        cluster.admin_settings().librdkafka(), control_topic, expected, timeout=120, settle=2.0
    )
    by_environment: dict[str, list[int]] = {}
    for record in records:
        if record.value is None or record.key is None:
            continue
        by_environment.setdefault(record.key, []).append(int(json.loads(record.value)["generation"]))
    topic_findings: list[str] = []
    resent = 0
    for tenant in tenants:
        seen = by_environment.get(tenant.environment_id, [])
        # The relay is at-least-once: a record the broker wrote but whose acknowledgement timed out
        # (_MSG_TIMED_OUT while a node was down) is sent again right after itself. Such a repeat of the
        # previous record is counted, not a finding (the resolver and the notifier ignore a generation that is
        # not newer); anything else out of order, or missing, is.
        distinct = [g for i, g in enumerate(seen) if i == 0 or g != seen[i - 1]]
        resent += len(seen) - len(distinct)
        full = list(range(tenant.first_generation, tenant.generation + 1))
        if distinct != full:
            repeats = sorted(g for g, n in Counter(seen).items() if n > 1)
            missing = sorted(set(full) - set(seen))
            disorder = [a for a, b in itertools.pairwise(seen) if b <= a]
            topic_findings.append(
                f"{tenant.environment_id}: {len(seen)} records for generations {full[0]}..{full[-1]}; "
                f"repeated {repeats}, missing {missing}, not increasing after {disorder}"
            )

    # Every subscription told of each rotation's generation exactly once after dedupe by webhook-id.
    def delivered() -> bool:
        return all(
            set(receiver.generations(t.subscription_id))
            >= set(range(t.first_generation + 1, t.generation + 1))
            for t in tenants
        )

    wait_until(delivered, STEP_TIMEOUT, every=0.2)
    notify_findings: list[str] = []
    for tenant in tenants:
        got = receiver.generations(tenant.subscription_id)
        want = set(range(tenant.first_generation + 1, tenant.generation + 1))
        missing = sorted(want - set(got))
        twice = sorted(g for g, n in got.items() if n > 1)
        extra = sorted(set(got) - want)
        if missing or twice or extra:
            notify_findings.append(
                f"{tenant.environment_id}: missing {missing}, distinct webhook-ids twice {twice}, "
                f"unexpected {extra}"
            )

    acked = sum(sum(t.client.acked.values()) for t in tenants)
    errors = Counter[str]()
    for tenant in tenants:
        errors.update(tenant.client.error_names)
    staleness = sorted(r.applied_at - r.ok_at for r in rotations)
    print(
        f"totals: rotations {len(rotations)} (calls retried {sum(r.retried for r in reports)}), "
        f"webhooks raw {receiver.raw}, distinct {len(receiver.by_id)}, raw duplicates (same webhook-id) "
        f"{receiver.raw_duplicates}; control records sent again by the relay {resent}; "
        f"records acked {acked}, delivery errors {dict(errors) or 0}; "
        f"resolver staleness after the 200 p50 {staleness[len(staleness) // 2] * 1000:.0f} ms, "
        f"max {staleness[-1] * 1000:.0f} ms"
    )
    for finding in topic_findings + notify_findings:
        print(f"FINDING: {finding}")
    assert not topic_findings, topic_findings
    assert not notify_findings, notify_findings
    for report in reports:
        assert all(report.acked_after_restart.values()), (report.name, report.acked_after_restart)
